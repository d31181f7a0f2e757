"""``entente seal`` keeps the CLI's promise: one line on stderr and a non-zero exit, never a
traceback, and nothing written, when the output exists already, when post-quantum and classic
recipients are mixed, or when the output cannot be written at all. ``--force`` overwrites."""

from __future__ import annotations

import io
import json
import subprocess
from pathlib import Path

import pytest

from crypto import age
from tests.nodes import run_cli


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("seal")
    result = run_cli(
        "init", "--home", str(root / "uk"), "--node-id", "uk-aisi", "--name", "UK",
        "--url", "https://uk.example",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return root / "uk"


def _one_line(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert result.returncode != 0
    err = result.stderr.strip()
    assert "Traceback" not in err, err
    assert len(err.splitlines()) == 1, err
    assert err.startswith("entente: ")
    for needle in needles:
        assert needle in err, err


def _seal(home: Path, src: Path, out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    own = json.loads((home / "node.json").read_text())["age_recipient"]
    return run_cli("seal", str(src), "--to", own, "-o", str(out), "--home", str(home), *extra)


def test_seal_onto_an_existing_output_is_refused_and_leaves_it(home: Path, tmp_path: Path) -> None:
    src = tmp_path / "finding.txt"
    src.write_bytes(b"finding\n")
    out = tmp_path / "finding.age"
    out.write_bytes(b"precious")
    result = _seal(home, src, out)
    _one_line(result, str(out), "--force")
    assert out.read_bytes() == b"precious"
    assert not Path(f"{out}.dsse.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["finding.age", "finding.txt"]


def test_seal_onto_an_existing_manifest_is_refused(home: Path, tmp_path: Path) -> None:
    src = tmp_path / "finding.txt"
    src.write_bytes(b"finding\n")
    out = tmp_path / "finding.age"
    Path(f"{out}.dsse.json").write_text("{}")
    _one_line(_seal(home, src, out), "finding.age.dsse.json", "--force")
    assert not out.exists()
    assert Path(f"{out}.dsse.json").read_text() == "{}"


def test_seal_force_overwrites(home: Path, tmp_path: Path) -> None:
    src = tmp_path / "finding.txt"
    src.write_bytes(b"finding\n")
    out = tmp_path / "finding.age"
    out.write_bytes(b"old")
    result = _seal(home, src, out, "--force")
    assert result.returncode == 0, result.stderr
    assert out.read_bytes().startswith(b"age-encryption.org/v1\n")
    assert json.loads(Path(f"{out}.dsse.json").read_text())["payloadType"]


def test_seal_into_a_missing_folder_is_one_line(home: Path, tmp_path: Path) -> None:
    src = tmp_path / "finding.txt"
    src.write_bytes(b"finding\n")
    _one_line(_seal(home, src, tmp_path / "no" / "such" / "out.age"), "no/such")


def test_seal_to_a_post_quantum_recipient_seals_post_quantum(home: Path, tmp_path: Path) -> None:
    """Issue 17: `entente seal --to age1pq1…` ended in a traceback (the node's own X25519
    recipient was always added, and age refuses the mix). A post-quantum node now seals to its
    own hybrid recipient beside the one given."""
    src = tmp_path / "finding.txt"
    src.write_bytes(b"finding\n")
    theirs = age.HybridIdentity.generate()
    out = tmp_path / "finding.age"
    result = run_cli(
        "seal", str(src), "--to", theirs.recipient.to_string(), "-o", str(out), "--home", str(home)
    )
    assert result.returncode == 0, result.stderr
    assert "sealed post-quantum" in result.stdout
    plain = io.BytesIO()
    age.decrypt(io.BytesIO(out.read_bytes()), plain, [theirs])
    assert plain.getvalue() == b"finding\n"


def test_seal_mixing_kinds_says_why(home: Path, tmp_path: Path) -> None:
    src = tmp_path / "finding.txt"
    src.write_bytes(b"finding\n")
    pq = age.HybridIdentity.generate().recipient.to_string()
    classic = age.X25519Identity.generate().recipient.to_string()
    out = tmp_path / "finding.age"
    result = run_cli(
        "seal", str(src), "--to", pq, "--to", classic, "-o", str(out), "--home", str(home)
    )
    _one_line(result, "post-quantum", "classic")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["finding.txt"]


def test_a_classic_only_node_sealing_post_quantum_says_why(tmp_path: Path) -> None:
    root = tmp_path / "n"
    root.mkdir()
    made = run_cli(
        "init", "--home", str(root / "ca"), "--node-id", "ca-aisi", "--name", "CA",
        "--url", "http://127.0.0.1:9", "--classic-only", "--insecure-no-passphrase",
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    src = tmp_path / "finding.txt"
    src.write_bytes(b"finding\n")
    pq = age.HybridIdentity.generate().recipient.to_string()
    out = tmp_path / "finding.age"
    result = run_cli("seal", str(src), "--to", pq, "-o", str(out), "--home", str(root / "ca"))
    _one_line(result, "ca-aisi has no post-quantum recipient")
    assert not out.exists()
