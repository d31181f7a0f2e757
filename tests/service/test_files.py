"""service.files: the one "temporary file, fsync, rename" of the project."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from service import files


def test_a_file_appears_whole_with_mode_0600_and_nothing_else(tmp_path: Path) -> None:
    target = tmp_path / "out.bin"
    with files.atomic_write(target) as out:
        out.write(b"hello")
        assert not target.exists()
    assert target.read_bytes() == b"hello"
    assert target.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]


def test_a_failure_leaves_the_destination_as_it_was(tmp_path: Path) -> None:
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")

    def fail() -> None:
        with files.atomic_write(target) as out:
            out.write(b"new")
            raise RuntimeError("stop")

    with pytest.raises(RuntimeError):
        fail()
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]


def test_overwrite_replaces_and_no_overwrite_refuses(tmp_path: Path) -> None:
    target = tmp_path / "out.bin"
    files.write_atomically(target, b"one", overwrite=False)
    files.write_atomically(target, b"two")
    assert target.read_bytes() == b"two"
    with pytest.raises(FileExistsError):
        files.write_atomically(target, b"three", overwrite=False)
    assert target.read_bytes() == b"two"
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]


def test_a_file_that_appears_meanwhile_is_not_clobbered(tmp_path: Path) -> None:
    target = tmp_path / "out.bin"

    def race() -> None:
        with files.atomic_write(target, overwrite=False) as out:
            out.write(b"mine")
            target.write_bytes(b"theirs")

    with pytest.raises(FileExistsError):
        race()
    assert target.read_bytes() == b"theirs"
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]


def test_without_hard_links_a_new_file_is_still_placed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_links(src: object, dst: object) -> None:
        raise OSError(errno.EPERM, "hard links are not supported")

    monkeypatch.setattr(os, "link", no_links)
    target = tmp_path / "out.bin"
    files.write_atomically(target, b"one", overwrite=False)
    assert target.read_bytes() == b"one"
    with pytest.raises(FileExistsError):
        files.write_atomically(target, b"two", overwrite=False)
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]
