"""The backup's container and its manifest: a folder or a tar file, every member's SHA-256.

A backup is a set of members: ``manifest.json`` (written last), the database snapshot
(``database.sqlite`` or ``database.pgdump``), the home's files (``home/node.json``,
``home/descriptor.dsse.json``, ``home/keys/...``, ``home/policies/...``), ``blobs.jsonl`` (one
JSON line per blob the snapshot refers to) and, for a blob store on a folder, the blobs
themselves (``blobs/<aa>/<bb>/<sha256>``). The manifest names each member with its SHA-256 and
size (the blobs through ``blobs.jsonl``, whose own digest it carries, so it stays small however
many blobs there are).

:class:`FolderWriter` and :class:`TarWriter` write members, hashing them as they stream (memory
flat), into a staging name that becomes the backup's name only once the manifest is written: a
backup interrupted at any point is not mistaken for one. :func:`open_archive` reads either.

Names inside a backup are checked before any path is made of them (:func:`member_path`): a
backup is outside data to the node that restores it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import stat
import tarfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from crypto import strict_json
from crypto.errors import CryptoError
from service.errors import UsageError

__all__ = [
    "FORMAT",
    "MANIFEST",
    "ArchiveReader",
    "ArchiveWriter",
    "BackupError",
    "FolderWriter",
    "Member",
    "TarWriter",
    "blob_member",
    "member_path",
    "open_archive",
    "open_writer",
    "read_manifest",
]

FORMAT = "entente.backup/v1"
MANIFEST = "manifest.json"
CHUNK = 1 << 20  # bytes read at a time
MANIFEST_MAX = 1 << 20  # bytes: a manifest lists files, never blobs
_DIGEST_RE = re.compile(r"^[0-9a-f]{64}$")
# home/node.json, home/descriptor.dsse.json, home/keys/..., home/policies/..., the snapshot,
# blobs.jsonl, blobs/aa/bb/<sha256>: plain names, no "..", no absolute path
_MEMBER_RE = re.compile(
    r"^(manifest\.json|blobs\.jsonl|database\.(sqlite|pgdump)"
    r"|home/(node\.json|descriptor\.dsse\.json|(keys|policies)(/[A-Za-z0-9_][A-Za-z0-9._-]{0,200}){1,3})"
    r"|blobs/[0-9a-f]{2}/[0-9a-f]{2}/[0-9a-f]{64})$"
)


class BackupError(UsageError):
    """A backup cannot be written, or a backup to restore is not whole or not what it says."""


@dataclass(frozen=True)
class Member:
    name: str
    sha256: str
    size: int

    def as_json(self) -> dict[str, Any]:
        return {"path": self.name, "sha256": self.sha256, "size": self.size}


def member_path(name: str) -> str:
    """``name`` if it may be a member of a backup, else :class:`BackupError`."""
    if not _MEMBER_RE.match(name) or any(part in ("", ".", "..") for part in name.split("/")):
        raise BackupError(f"the backup names an unexpected file {name[:120]!r}")
    return name


def blob_member(digest: str) -> str:
    if not _DIGEST_RE.match(digest):
        raise BackupError(f"the backup names a blob that is not a SHA-256 {digest[:80]!r}")
    return f"blobs/{digest[:2]}/{digest[2:4]}/{digest}"


def _copy(source: BinaryIO, sink: Any, size: int | None = None) -> tuple[str, int]:
    """Copy ``source`` into ``sink.write`` (``size`` bytes exactly, when given): (sha256, size)."""
    digest = hashlib.sha256()
    done = 0
    while size is None or done < size:
        chunk = source.read(CHUNK if size is None else min(CHUNK, size - done))
        if not chunk:
            break
        digest.update(chunk)
        sink.write(chunk)
        done += len(chunk)
    if size is not None and done != size:
        raise BackupError(f"a file ended after {done} of its {size} bytes while it was copied")
    return digest.hexdigest(), done


class ArchiveWriter(Protocol):
    def add(self, name: str, source: BinaryIO, size: int) -> Member: ...
    def add_bytes(self, name: str, data: bytes) -> Member: ...
    def finish(self) -> Path: ...
    def abandon(self) -> None: ...


class FolderWriter:
    """A backup as a folder: members are files under it (0600, folders 0700)."""

    def __init__(self, target: Path) -> None:
        self.target = target
        self.staging = target.with_name(f".{target.name}.partial-{os.getpid()}")
        self.staging.mkdir(mode=0o700)

    def add(self, name: str, source: BinaryIO, size: int) -> Member:
        path = self.staging / member_path(name)
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as sink:
            digest, done = _copy(source, sink, size)
        return Member(name, digest, done)

    def add_bytes(self, name: str, data: bytes) -> Member:
        import io

        return self.add(name, io.BytesIO(data), len(data))

    def finish(self) -> Path:
        os.rename(self.staging, self.target)
        return self.target

    def abandon(self) -> None:
        shutil.rmtree(self.staging, ignore_errors=True)


class _Hashing:
    """A reader that hashes what passes through it (tarfile reads the member's bytes from it)."""

    def __init__(self, source: BinaryIO) -> None:
        self.source = source
        self.digest = hashlib.sha256()
        self.done = 0

    def read(self, n: int = -1) -> bytes:
        chunk = self.source.read(n)
        self.digest.update(chunk)
        self.done += len(chunk)
        return chunk


class TarWriter:
    """A backup as one uncompressed POSIX tar file (the blobs are ciphertext: nothing to gain
    from compression), written under a staging name and renamed at the end."""

    def __init__(self, target: Path) -> None:
        self.target = target
        self.staging = target.with_name(f".{target.name}.partial-{os.getpid()}")
        fd = os.open(self.staging, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        self._file = os.fdopen(fd, "wb")
        self._tar = tarfile.open(fileobj=self._file, mode="w", format=tarfile.PAX_FORMAT)  # noqa: SIM115

    def add(self, name: str, source: BinaryIO, size: int) -> Member:
        info = tarfile.TarInfo(member_path(name))
        info.size = size
        info.mode = 0o600
        info.mtime = int(time.time())
        hashing = _Hashing(source)
        try:
            self._tar.addfile(info, hashing)
        except OSError as exc:  # tarfile: "unexpected end of data"
            raise BackupError(f"{name} changed while it was copied: {exc}") from None
        return Member(name, hashing.digest.hexdigest(), hashing.done)

    def add_bytes(self, name: str, data: bytes) -> Member:
        import io

        return self.add(name, io.BytesIO(data), len(data))

    def finish(self) -> Path:
        self._tar.close()
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.rename(self.staging, self.target)
        return self.target

    def abandon(self) -> None:
        self._tar.close()
        self._file.close()
        self.staging.unlink(missing_ok=True)


def open_writer(target: Path) -> FolderWriter | TarWriter:
    """A writer for a new backup at ``target``: a tar file when it ends in ``.tar``, else a
    folder. An existing ``target`` is refused."""
    if target.exists() or target.is_symlink():
        raise BackupError(f"{target} exists; a backup is written to a new name")
    if not target.parent.is_dir():
        raise BackupError(f"the folder {target.parent} does not exist")
    return TarWriter(target) if target.name.endswith(".tar") else FolderWriter(target)


class ArchiveReader(Protocol):
    def open(self, name: str) -> Any: ...  # a context manager giving a binary reader
    def close(self) -> None: ...


class _FolderReader:
    def __init__(self, root: Path) -> None:
        self.root = root

    @contextmanager
    def open(self, name: str) -> Iterator[BinaryIO]:
        path = self.root / member_path(name)
        try:  # the member itself, never what a link there points to (/dev/zero, another file)
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except FileNotFoundError:
            raise BackupError(f"the backup has no {name}") from None
        except OSError:
            raise BackupError(f"{name} in the backup is not a regular file") from None
        handle = os.fdopen(fd, "rb")
        with handle:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise BackupError(f"{name} in the backup is not a regular file")
            yield handle

    def close(self) -> None:
        return None


class _TarReader:
    def __init__(self, path: Path) -> None:
        try:
            self._tar = tarfile.open(path, mode="r:")  # noqa: SIM115 - closed by close()
        except (OSError, tarfile.TarError) as exc:
            raise BackupError(f"{path} is not a backup tar file: {exc}") from None

    @contextmanager
    def open(self, name: str) -> Iterator[BinaryIO]:
        try:
            info = self._tar.getmember(member_path(name))
        except KeyError:
            raise BackupError(f"the backup has no {name}") from None
        handle = self._tar.extractfile(info) if info.isfile() else None
        if handle is None:
            raise BackupError(f"{name} in the backup is not a regular file")
        with handle:
            yield handle  # type: ignore[misc]

    def close(self) -> None:
        self._tar.close()


def open_archive(path: Path) -> ArchiveReader:
    if path.is_dir():
        return _FolderReader(path)
    if path.is_file():
        return _TarReader(path)
    raise BackupError(f"{path} is neither a backup folder nor a backup tar file")


def read_manifest(archive: ArchiveReader) -> dict[str, Any]:
    """The manifest, parsed strictly; its shape is checked by the restore."""
    with archive.open(MANIFEST) as handle:
        raw = handle.read(MANIFEST_MAX + 1)
    if len(raw) > MANIFEST_MAX:
        raise BackupError("the backup's manifest is too large")
    try:
        manifest = strict_json.loads(raw)
    except (CryptoError, ValueError) as exc:
        raise BackupError(f"the backup's manifest is not valid JSON: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BackupError(f"not an Entente backup (the manifest's format is not {FORMAT})")
    return manifest


def hash_member(archive: ArchiveReader, name: str) -> tuple[str, int]:
    """The SHA-256 and size of one member, read through."""

    class _Null:
        def write(self, _data: bytes) -> None:
            return None

    with archive.open(name) as handle:
        return _copy(handle, _Null())


def copy_member(archive: ArchiveReader, name: str, sink: Any) -> tuple[str, int]:
    with archive.open(name) as handle:
        return _copy(handle, sink)


def manifest_bytes(manifest: dict[str, Any]) -> bytes:
    return (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()
