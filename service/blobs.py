"""Content-addressed storage for ciphertext.

Blobs are named by the SHA-256 of their bytes and written atomically: into a temporary file in the
store, then renamed into ``<root>/<aa>/<bb>/<sha256>``. A write that fails or is abandoned leaves
no file behind under a content address (the temporary file is removed). Only ciphertext is ever
stored here; the store never sees plaintext or keys.

Durability comes in two ways. :meth:`BlobWriter.commit` makes one blob durable at once (fsync of
the file, rename, fsync of its folder). :meth:`BlobWriter.place` renames without waiting, and
:meth:`BlobStore.sync_placed` then makes every blob placed so far durable together: on Linux one
``syncfs`` for the whole file system, elsewhere an fsync of each file and folder, side by side.
The node places the blobs of a share, a batch delivery or a feed page and syncs them once per
group of database commits (``service.commits``), before the rows that refer to them commit: a
row never refers to a blob that a crash could take back, and a placed blob whose row never
committed is an orphan that the start-up sweep removes.

:class:`BlobStore` is the interface; :class:`FileBlobStore` implements it on a folder, which several
replicas may share; ``service.blobs_s3.S3BlobStore`` on an S3-compatible object store.

A store may be given a :class:`BlobJournal` (``service.blob_journal``: a database table of blobs
in flight). Before a blob appears under its content address the store records its digest there,
and when it deletes a blob it forgets it: so a crash between placing a blob and committing the
row that refers to it leaves a journal entry, and the start-up sweep checks those entries
instead of walking the whole store. The rows that make a blob referenced remove its entry in
their own transaction (``service.commits``).

A write can outlast the sweep's grace period (gigabytes over a slow link), so a writer keeps a
*claim* on its temporary file or upload alive in the journal while bytes arrive: a
:class:`Heartbeat` touches the row ``tmp:<token>`` at most once every ``heartbeat_seconds`` of
writing (a quarter of the grace), the first time only after that long (short writes never touch
the database), and forgets it when the write ends. ``clean_temporary`` spares the temporary
files and uploads whose claim is younger than the grace, whatever their age.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import re
import secrets
import sys
import threading
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO, Protocol

from service.errors import NotFoundError

__all__ = [
    "CLAIM",
    "BlobJournal",
    "BlobStore",
    "BlobWriter",
    "FileBlobStore",
    "Heartbeat",
    "NoJournal",
    "temporary_token",
]

log = logging.getLogger("entente.blobs")

CLAIM = "tmp:"  # journal rows ``tmp:<token>``: a temporary file or upload still being written
_DIGEST_RE = re.compile(r"^[0-9a-f]{64}$")
READ_CHUNK = 1 << 20  # bytes


class BlobWriter(Protocol):
    """A blob being written: ``write`` bytes, then ``commit`` or ``place`` (or ``abort``).

    ``place(journaled=True)``: the caller has already recorded ``digest`` (the SHA-256 of the
    bytes written, the blob's address once they are all written) in the store's journal, as
    the receiver does for a whole feed page or batch in one transaction (``intend`` of many
    digests); the writer then does not record it again."""

    def write(self, data: bytes | bytearray | memoryview, /) -> int: ...
    def commit(self) -> str: ...
    def place(self, *, journaled: bool = False) -> str: ...
    def abort(self) -> None: ...
    @property
    def size(self) -> int: ...
    @property
    def digest(self) -> str: ...


class BlobStore(Protocol):
    journal: BlobJournal

    def writer(self) -> BlobWriter: ...
    def sync_placed(self) -> None: ...
    def open(self, digest: str, *, offset: int = 0) -> BinaryIO: ...
    def exists(self, digest: str) -> bool: ...
    def delete(self, digest: str) -> None: ...
    def size(self, digest: str) -> int: ...
    def iter_digests(self) -> Iterator[str]: ...
    def clean_temporary(
        self,
        older_than_seconds: float = 3600.0,
        *,
        alive: Collection[str] = (),
        now: float | None = None,
    ) -> int: ...


class BlobJournal(Protocol):
    """Blobs in flight: recorded durably before a blob is placed (``intend``: one or several
    digests, together), forgotten once deleted; and the claims of long writes, touched while
    they write."""

    def intend(self, *digests: str) -> None: ...
    def touch(self, name: str, /) -> None: ...
    def forget(self, digests: Sequence[str], /) -> None: ...


class NoJournal:
    """A store without a journal (tools and tests that own the whole store): records nothing."""

    def intend(self, *digests: str) -> None:
        return None

    def touch(self, name: str, /) -> None:
        return None

    def forget(self, digests: Sequence[str], /) -> None:
        return None


class Heartbeat:
    """The claim of one write on its temporary file or upload (the journal row ``tmp:<token>``):
    :meth:`beat`, called from the bytes loop, touches it once ``every`` seconds have passed since
    the start or the last touch; :meth:`release` forgets it once the write is over. ``every`` of
    0 (no grace period) never touches."""

    def __init__(
        self, journal: BlobJournal, token: str, *, every: float, clock: Callable[[], float]
    ) -> None:
        self._journal = journal
        self.name = CLAIM + token
        self._every = every
        self._clock = clock
        self._last = clock()
        self._claimed = False

    def beat(self) -> None:
        if self._every <= 0:
            return
        now = self._clock()
        if now - self._last < self._every:
            return
        self._last = now
        try:
            self._journal.touch(self.name)
        except Exception:  # the write goes on; the next beat tries again
            log.warning("blob store: could not keep a write's claim alive", exc_info=True)
            return
        self._claimed = True

    def release(self) -> None:
        if not self._claimed:
            return
        self._claimed = False
        try:
            self._journal.forget([self.name])
        except Exception:  # an old claim is dropped by the sweep
            log.warning("blob store: could not drop a write's claim", exc_info=True)


def temporary_token(name: str) -> str:
    """The token of a temporary file or object (``<token>.part``, ``.../tmp/<token>``)."""
    return name.rsplit("/", 1)[-1].removesuffix(".part")


def _fsync_path(path: Path, *, folder: bool = False) -> None:
    """fsync a file, or a folder (so that the entries renamed or created in it are durable)."""
    try:
        fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if folder else 0))
    except FileNotFoundError:
        return  # deleted meanwhile: nothing to keep
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _load_syncfs() -> Callable[[int], int] | None:
    """Linux ``syncfs(2)``: flush one file system's dirty data and metadata in one call."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        syncfs = ctypes.CDLL(None, use_errno=True).syncfs
    except (OSError, AttributeError):
        return None
    syncfs.argtypes = [ctypes.c_int]
    syncfs.restype = ctypes.c_int
    return syncfs


_SYNCFS = _load_syncfs()


class _FileBlobWriter:
    def __init__(self, store: FileBlobStore) -> None:
        self._store = store
        token = secrets.token_hex(16)
        self._tmp = store.root / "tmp" / f"{token}.part"
        self._fh: BinaryIO | None = open(self._tmp, "xb")  # noqa: SIM115 - closed in commit/abort
        self._hash = hashlib.sha256()
        self._size = 0
        self._claim = store.heartbeat(token)

    @property
    def size(self) -> int:
        return self._size

    @property
    def digest(self) -> str:
        return self._hash.hexdigest()

    def write(self, data: bytes | bytearray | memoryview, /) -> int:
        if self._fh is None:
            raise ValueError("blob writer is closed")
        self._hash.update(data)
        self._size += len(data)
        self._claim.beat()
        return self._fh.write(data)

    def commit(self) -> str:
        """Make the blob durable now (fsync, rename, fsync of its folder); its digest."""
        try:
            if self._fh is None:
                raise ValueError("blob writer is closed")
            self._fh.flush()
            os.fsync(self._fh.fileno())
            digest, created = self._rename()
            for folder in created:
                _fsync_path(folder, folder=True)
            return digest
        except BaseException:
            self.abort()
            raise

    def place(self, *, journaled: bool = False) -> str:
        """Rename the blob into place; it is durable after the store's next ``sync_placed``."""
        try:
            if self._fh is None:
                raise ValueError("blob writer is closed")
            self._fh.flush()
            digest, created = self._rename(journaled=journaled)
            self._store.placed(self._store.path_for(digest), created)
            return digest
        except BaseException:
            self.abort()
            raise

    def _rename(self, *, journaled: bool = False) -> tuple[str, list[Path]]:
        """Close and rename the temporary file: (digest, folders whose entries changed)."""
        assert self._fh is not None  # noqa: S101 - checked by the callers
        self._fh.close()
        self._fh = None
        digest = self._hash.hexdigest()
        if not journaled:
            self._store.journal.intend(digest)  # before it can appear under its address
        final = self._store.path_for(digest)
        created = self._store.ensure_dir(final.parent)
        try:
            os.replace(self._tmp, final)
        except FileNotFoundError:  # the folder was removed behind our back: make it again
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(self._tmp, final)
        self._claim.release()
        return digest, [*created, final.parent]

    def abort(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        self._tmp.unlink(missing_ok=True)
        self._claim.release()

    def __enter__(self) -> _FileBlobWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.abort()


class FileBlobStore:
    """Blobs in a folder: ``<root>/<aa>/<bb>/<sha256>``; temporary files under ``<root>/tmp``."""

    def __init__(
        self,
        root: Path,
        *,
        fsync_threads: int = 8,
        syncfs: bool = True,
        journal: BlobJournal | None = None,
        heartbeat_seconds: float = 900.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.root = root
        self.journal: BlobJournal = journal if journal is not None else NoJournal()
        self.heartbeat_seconds = heartbeat_seconds  # seconds between touches of a write's claim
        self.clock = clock
        self._syncfs = _SYNCFS if syncfs else None  # else an fsync per blob and folder
        (root / "tmp").mkdir(parents=True, exist_ok=True, mode=0o700)
        self._made: set[Path] = set()
        self._lock = threading.Lock()
        self._files: set[Path] = set()  # placed, not yet synced
        self._folders: set[Path] = set()  # whose entries changed since the last sync
        self._fsync_threads = fsync_threads  # fsyncs side by side, where there is no syncfs
        self._pool: ThreadPoolExecutor | None = None

    def ensure_dir(self, folder: Path) -> list[Path]:
        """Create a fan-out folder ``<aa>/<bb>`` once per process (there are at most 65,536 of
        them); returns the folders whose entries that changed (to be made durable too)."""
        if folder in self._made:
            return []
        changed = []
        for level in (folder.parent, folder):
            try:
                level.mkdir()
            except FileExistsError:
                continue
            changed.append(level.parent)
        self._made.add(folder)
        return changed

    def heartbeat(self, token: str) -> Heartbeat:
        return Heartbeat(self.journal, token, every=self.heartbeat_seconds, clock=self.clock)

    def placed(self, path: Path, folders: list[Path]) -> None:
        """Note a blob renamed into place, not yet durable."""
        with self._lock:
            self._files.add(path)
            self._folders.update(folders)

    def sync_placed(self) -> None:
        """Make every blob placed so far durable (with the folders they entered)."""
        with self._lock:
            files, folders = self._files, self._folders
            self._files, self._folders = set(), set()
        if not files and not folders:
            return
        try:
            if self._syncfs is not None:
                fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
                try:
                    if self._syncfs(fd) != 0:
                        err = ctypes.get_errno()
                        raise OSError(err, f"syncfs: {os.strerror(err)}")
                finally:
                    os.close(fd)
            else:
                pool = self._fsync_pool()
                list(pool.map(_fsync_path, files))
                list(pool.map(lambda f: _fsync_path(f, folder=True), folders))
        except BaseException:
            with self._lock:  # still to be synced: the next call tries again
                self._files |= files
                self._folders |= folders
            raise

    def _fsync_pool(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(
                    max_workers=self._fsync_threads, thread_name_prefix="entente-fsync"
                )
            return self._pool

    def path_for(self, digest: str) -> Path:
        if not _DIGEST_RE.match(digest):
            raise NotFoundError("no such blob")
        return self.root / digest[:2] / digest[2:4] / digest

    def writer(self) -> _FileBlobWriter:
        return _FileBlobWriter(self)

    def open(self, digest: str, *, offset: int = 0) -> BinaryIO:
        """The blob's bytes, from ``offset`` on."""
        try:
            fh = open(self.path_for(digest), "rb")  # noqa: SIM115 - the caller closes it
        except FileNotFoundError:
            raise NotFoundError("the ciphertext for this artifact is missing") from None
        if offset:
            fh.seek(offset)
        return fh

    def exists(self, digest: str) -> bool:
        return self.path_for(digest).is_file()

    def size(self, digest: str) -> int:
        return self.path_for(digest).stat().st_size

    def delete(self, digest: str) -> None:
        path = self.path_for(digest)
        path.unlink(missing_ok=True)
        with self._lock:
            self._files.discard(path)
        self.journal.forget([digest])

    def iter_digests(self) -> Iterator[str]:
        for path in self.root.glob("??/??/*"):
            if _DIGEST_RE.match(path.name):
                yield path.name

    def clean_temporary(
        self,
        older_than_seconds: float = 3600.0,
        *,
        alive: Collection[str] = (),
        now: float | None = None,
    ) -> int:
        """Remove abandoned temporary files (from a crash mid-write): older than the given age
        and not among ``alive`` (the tokens of writes whose claim is young)."""
        removed = 0
        cutoff = (time.time() if now is None else now) - older_than_seconds
        for path in (self.root / "tmp").glob("*.part"):
            if temporary_token(path.name) in alive:
                continue
            try:
                if path.stat().st_mtime < cutoff:
                    path.unlink()
                    removed += 1
            except FileNotFoundError:
                continue
        return removed
