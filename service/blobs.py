"""Content-addressed storage for ciphertext.

Blobs are named by the SHA-256 of their bytes and written atomically: into a temporary file in the
store, flushed and fsynced, then renamed into ``<root>/<aa>/<bb>/<sha256>``. A write that fails or
is abandoned leaves no file behind under a content address (the temporary file is removed). Only
ciphertext is ever stored here; the store never sees plaintext or keys.

:class:`BlobStore` is the interface; :class:`FileBlobStore` implements it on a folder, which several
replicas may share. An S3-compatible store can implement the same interface.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, Protocol

from service.errors import NotFoundError

__all__ = ["BlobStore", "BlobWriter", "FileBlobStore"]

_DIGEST_RE = re.compile(r"^[0-9a-f]{64}$")
READ_CHUNK = 1 << 20  # bytes


class BlobWriter(Protocol):
    """A blob being written: ``write`` bytes, then ``commit`` (or ``abort``)."""

    def write(self, data: bytes | bytearray | memoryview, /) -> int: ...
    def commit(self) -> str: ...
    def abort(self) -> None: ...
    @property
    def size(self) -> int: ...


class BlobStore(Protocol):
    def writer(self) -> BlobWriter: ...
    def open(self, digest: str) -> BinaryIO: ...
    def exists(self, digest: str) -> bool: ...
    def delete(self, digest: str) -> None: ...
    def size(self, digest: str) -> int: ...
    def iter_digests(self) -> Iterator[str]: ...


class _FileBlobWriter:
    def __init__(self, store: FileBlobStore) -> None:
        self._store = store
        self._tmp = store.root / "tmp" / f"{secrets.token_hex(16)}.part"
        self._fh: BinaryIO | None = open(self._tmp, "xb")  # noqa: SIM115 - closed in commit/abort
        self._hash = hashlib.sha256()
        self._size = 0

    @property
    def size(self) -> int:
        return self._size

    def write(self, data: bytes | bytearray | memoryview, /) -> int:
        if self._fh is None:
            raise ValueError("blob writer is closed")
        self._hash.update(data)
        self._size += len(data)
        return self._fh.write(data)

    def commit(self) -> str:
        if self._fh is None:
            raise ValueError("blob writer is closed")
        try:
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self._fh.close()
            self._fh = None
            digest = self._hash.hexdigest()
            final = self._store.path_for(digest)
            self._store.ensure_dir(final.parent)
            try:
                os.replace(self._tmp, final)
            except FileNotFoundError:  # the folder was removed behind our back: make it again
                final.parent.mkdir(parents=True, exist_ok=True)
                os.replace(self._tmp, final)
            return digest
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> _FileBlobWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.abort()


class FileBlobStore:
    """Blobs in a folder: ``<root>/<aa>/<bb>/<sha256>``; temporary files under ``<root>/tmp``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "tmp").mkdir(parents=True, exist_ok=True, mode=0o700)
        self._made: set[Path] = set()

    def ensure_dir(self, folder: Path) -> None:
        """Create a fan-out folder once per process (there are at most 65,536 of them)."""
        if folder not in self._made:
            folder.mkdir(parents=True, exist_ok=True)
            self._made.add(folder)

    def path_for(self, digest: str) -> Path:
        if not _DIGEST_RE.match(digest):
            raise NotFoundError("no such blob")
        return self.root / digest[:2] / digest[2:4] / digest

    def writer(self) -> _FileBlobWriter:
        return _FileBlobWriter(self)

    def open(self, digest: str) -> BinaryIO:
        try:
            return open(self.path_for(digest), "rb")
        except FileNotFoundError:
            raise NotFoundError("the ciphertext for this artifact is missing") from None

    def exists(self, digest: str) -> bool:
        return self.path_for(digest).is_file()

    def size(self, digest: str) -> int:
        return self.path_for(digest).stat().st_size

    def delete(self, digest: str) -> None:
        self.path_for(digest).unlink(missing_ok=True)

    def iter_digests(self) -> Iterator[str]:
        for path in self.root.glob("??/??/*"):
            if _DIGEST_RE.match(path.name):
                yield path.name

    def clean_temporary(self, older_than_seconds: float = 3600.0) -> int:
        """Remove abandoned temporary files (from a crash mid-write)."""
        import time

        removed = 0
        cutoff = time.time() - older_than_seconds
        for path in (self.root / "tmp").glob("*.part"):
            try:
                if path.stat().st_mtime < cutoff:
                    path.unlink()
                    removed += 1
            except FileNotFoundError:
                continue
        return removed
