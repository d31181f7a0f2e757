"""``entente backup``: a consistent snapshot of a node that may be running.

In this order, so that every blob a row of the snapshot refers to still exists when it is
copied (blobs are placed before the rows that refer to them commit, and only deleted after the
rows stop referring to them):

1. The database, at one instant. SQLite: the online backup API (``sqlite3.Connection.backup``,
   one step, under one read transaction: writers carry on in WAL mode), never a file copy.
   PostgreSQL: ``pg_dump --snapshot`` of a snapshot exported by a ``REPEATABLE READ`` transaction
   that stays open while the blobs are listed from the same snapshot, so the dump and the list
   agree exactly. ``pg_dump`` must be on PATH (the PostgreSQL client), at least the server's
   major version: it is the tool that knows every object a database holds, which a logical
   export of our own tables would have to re-implement (sequences, indexes, partial indexes).
2. The home: ``node.json``, the descriptor, the key files as they are (still encrypted under
   the passphrase: the backup needs no passphrase and holds no secret in the clear, except on a
   home made with ``--insecure-no-passphrase``) and the policy files.
3. The blobs the snapshot refers to (``artifacts.blob``, ``approvals.blob``, and the
   encrypted segments of resumable uploads, ``upload_segments.digest``), one at a time:
   for a folder store each is copied and its SHA-256 checked against its name while it
   streams; for an S3-compatible store only the object keys and sizes are listed (the objects
   stay in the bucket, which has its own durability and versioning). A blob deleted between
   the snapshot and its copy (retention or a revocation that ran meanwhile) is listed as
   ``missing``: the restored node's retention deletes its row's claim again.

Then ``manifest.json``, and a ``node.backup`` audit entry in the live database naming the
manifest's SHA-256. Memory stays flat: rows are read in pages, files and blobs stream.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sqlite3
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import make_url

from service.audit.log import record
from service.backup.archive import (
    FORMAT,
    MANIFEST,
    ArchiveWriter,
    BackupError,
    Member,
    blob_member,
    manifest_bytes,
    open_writer,
)
from service.backup.pg import libpq_args, require_tool
from service.blobs import BlobStore
from service.db import open_database
from service.errors import NotFoundError
from service.home import Home, open_home
from service.node import open_blob_store
from service.settings import Settings

__all__ = ["BackupSummary", "Progress", "take_backup"]

Progress = Callable[[str, int, int | None], None]  # (what, done, total or None)

_BLOB_REFS = (
    "SELECT DISTINCT blob FROM (SELECT blob FROM artifacts WHERE blob IS NOT NULL "
    "UNION SELECT blob FROM approvals WHERE blob IS NOT NULL "
    "UNION SELECT digest FROM upload_segments) AS refs ORDER BY blob"
)
_PAGE = 1000  # rows fetched at a time


@dataclass(frozen=True)
class BackupSummary:
    path: Path
    manifest_sha256: str
    database: str  # sqlite-backup-api | pg_dump
    log_size: int
    blobs: int
    blob_bytes: int
    missing: int
    store: str  # filesystem | s3


def _quiet(_what: str, _done: int, _total: int | None) -> None:
    return None


def home_members(home: Home) -> Iterator[tuple[str, Path]]:
    """(member name, file) of every file of the home a backup holds."""
    yield "home/node.json", home.path / "node.json"
    yield "home/descriptor.dsse.json", home.descriptor_path
    for folder in (home.keys_dir, home.policies_dir):
        if not folder.is_dir():
            continue
        for path in sorted(folder.rglob("*")):
            relative = path.relative_to(home.path)
            if path.is_symlink() or not path.is_file():
                continue
            if any(part.startswith(".") for part in relative.parts):
                continue  # an editor's or an interrupted write's leftover
            yield f"home/{relative.as_posix()}", path


@dataclass
class _Snapshot:
    file: Path
    member: str
    method: str
    revision: str | None
    log_size: int
    blob_refs: Iterator[str]


@contextlib.contextmanager
def _sqlite_snapshot(source: str, work: Path) -> Iterator[_Snapshot]:
    target = work / "database.sqlite"
    try:
        src = sqlite3.connect(f"file:{source}?mode=ro", uri=True, timeout=30)
    except sqlite3.Error as exc:
        raise BackupError(f"cannot open the database {source}: {exc}") from None
    try:
        dst = sqlite3.connect(target)
        try:
            src.backup(dst)  # pages=-1: one step, one consistent read transaction
        finally:
            dst.close()
    except sqlite3.Error as exc:
        raise BackupError(f"the SQLite online backup of {source} failed: {exc}") from None
    finally:
        src.close()
    os.chmod(target, 0o600)
    conn = sqlite3.connect(target)
    try:
        revision = _scalar(conn.execute("SELECT version_num FROM alembic_version").fetchone())
        head = conn.execute("SELECT size FROM audit_log_head WHERE id = 1").fetchone()

        def refs() -> Iterator[str]:
            cursor = conn.execute(_BLOB_REFS)
            while rows := cursor.fetchmany(_PAGE):
                for (digest,) in rows:
                    yield str(digest)

        yield _Snapshot(
            target, "database.sqlite", "sqlite-backup-api", revision, int(head[0]) if head else 0,
            refs(),
        )  # fmt: skip
    except sqlite3.Error as exc:
        raise BackupError(f"the snapshot of {source} is unreadable: {exc}") from None
    finally:
        conn.close()


def _scalar(row: Any) -> str | None:
    return None if row is None else str(row[0])


@contextlib.contextmanager
def _pg_snapshot(url: str, work: Path) -> Iterator[_Snapshot]:
    pg_dump = require_tool("pg_dump")
    target = work / "database.pgdump"
    db = open_database(url)
    try:
        connection = db.engine.connect().execution_options(isolation_level="REPEATABLE READ")
        with connection as conn, conn.begin():
            snapshot = conn.execute(sa.text("SELECT pg_export_snapshot()")).scalar_one()
            args, env = libpq_args(url)
            done = subprocess.run(  # noqa: S603 - fixed arguments, no shell
                [pg_dump, "--format=custom", "--no-owner", "--no-privileges",
                 f"--snapshot={snapshot}", f"--file={target}", *args],
                env=env, capture_output=True, text=True, check=False,
            )  # fmt: skip
            if done.returncode != 0:
                reason = (done.stderr.strip().splitlines() or ["no message"])[-1]
                raise BackupError(f"pg_dump failed: {reason[:500]}")
            os.chmod(target, 0o600)
            revision = conn.execute(
                sa.text("SELECT version_num FROM alembic_version")
            ).scalar_one_or_none()
            size = conn.execute(
                sa.text("SELECT size FROM audit_log_head WHERE id = 1")
            ).scalar_one_or_none()

            def refs() -> Iterator[str]:
                result = conn.execution_options(stream_results=True, yield_per=_PAGE)
                for (digest,) in result.execute(sa.text(_BLOB_REFS)):
                    yield str(digest)

            yield _Snapshot(target, "database.pgdump", "pg_dump", revision, int(size or 0), refs())
    finally:
        db.dispose()


def _snapshot(url: str, work: Path) -> contextlib.AbstractContextManager[_Snapshot]:
    try:
        parsed = make_url(url)
    except sa.exc.ArgumentError:
        raise BackupError("ENTENTE_DATABASE_URL is not a valid database URL") from None
    if parsed.get_backend_name() == "sqlite":
        if not parsed.database or parsed.database == ":memory:":
            raise BackupError("an in-memory SQLite database cannot be backed up")
        if not Path(parsed.database).is_file():
            raise BackupError(f"there is no database at {parsed.database}")
        return _sqlite_snapshot(parsed.database, work)
    if parsed.get_backend_name() == "postgresql":
        return _pg_snapshot(url, work)
    raise BackupError("ENTENTE_DATABASE_URL must be sqlite:///PATH or postgresql+psycopg://...")


def _copy_blobs(
    writer: ArchiveWriter,
    store: BlobStore,
    refs: Iterator[str],
    listing: Any,
    *,
    s3: bool,
    progress: Progress,
) -> tuple[int, int, int]:
    """Copy (or, on S3, list) each referenced blob; write its line to ``listing``:
    (blobs, bytes, missing)."""
    count = total = missing = 0
    for digest in refs:
        blob_member(digest)  # a digest, or the database is not what it should be
        try:
            size = store.size(digest)
        except (FileNotFoundError, NotFoundError):
            size = -1
        if size < 0:
            missing += 1
            line: dict[str, Any] = {"digest": digest, "missing": True}
        elif s3:
            line = {"digest": digest, "key": store.key_for(digest), "size": size}  # type: ignore[attr-defined]
        else:
            try:
                handle = store.open(digest)
            except NotFoundError:
                missing += 1
                line = {"digest": digest, "missing": True}
            else:
                with handle:
                    member = writer.add(blob_member(digest), handle, size)
                if member.sha256 != digest:
                    raise BackupError(
                        f"blob {digest} in the store does not match its SHA-256 (it holds "
                        f"{member.sha256}): the blob store is damaged; nothing was written"
                    )
                line = {"digest": digest, "size": size}
        if "size" in line:
            count += 1
            total += size
        listing.write((json.dumps(line, sort_keys=True) + "\n").encode())
        progress("blobs", count + missing, None)
    return count, total, missing


def take_backup(
    settings: Settings, target: Path, *, progress: Progress = _quiet, actor: str = "admin:cli"
) -> BackupSummary:
    """Write a backup of the node ``settings`` name to ``target`` (a new folder, or a new
    ``.tar`` file) and audit it (``node.backup``). Raises :class:`BackupError`."""
    home = open_home(settings.require_home())
    url = settings.resolved_database_url()
    s3 = settings.blob_location() is not None
    writer = open_writer(target)
    work = Path(tempfile.mkdtemp(prefix=".entente-backup-", dir=target.parent))
    live = open_database(url)
    try:
        files: list[Member] = []
        with _snapshot(url, work) as snap:
            progress("database", 0, None)
            with open(snap.file, "rb") as handle:
                database = writer.add(snap.member, handle, os.fstat(handle.fileno()).st_size)
            for name, path in home_members(home):
                with open(path, "rb") as handle:
                    files.append(writer.add(name, handle, os.fstat(handle.fileno()).st_size))
            store = open_blob_store(settings, live)
            listing_path = work / "blobs.jsonl"
            with open(listing_path, "wb") as listing:
                count, total, missing = _copy_blobs(
                    writer, store, snap.blob_refs, listing, s3=s3, progress=progress
                )
        with open(listing_path, "rb") as handle:
            listed = writer.add("blobs.jsonl", handle, os.fstat(handle.fileno()).st_size)
        manifest: dict[str, Any] = {
            "format": FORMAT,
            "node_id": home.node_id,
            "fingerprint": home.fingerprint,
            "created": datetime.now(UTC).isoformat(),
            "database": {
                **database.as_json(),
                "backend": "sqlite" if snap.member == "database.sqlite" else "postgresql",
                "method": snap.method,
                "revision": snap.revision,
                "log_size": snap.log_size,
            },
            "home": [m.as_json() for m in files],
            "blobs": {
                **listed.as_json(),
                "store": "s3" if s3 else "filesystem",
                "count": count,
                "bytes": total,
                "missing": missing,
                **({"url": settings.blob_url} if s3 else {}),
            },
        }
        raw = manifest_bytes(manifest)
        writer.add_bytes(MANIFEST, raw)
        path = writer.finish()
    except BaseException:
        writer.abandon()
        raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    import hashlib

    digest = hashlib.sha256(raw).hexdigest()
    try:
        with live.session() as session:
            record(
                session,
                kind="node.backup",
                actor=actor,
                detail={
                    "manifest_sha256": digest,
                    "database": snap.method,
                    "log_size": snap.log_size,
                    "blobs": count,
                    "blob_bytes": total,
                    "missing_blobs": missing,
                    "store": "s3" if s3 else "filesystem",
                },
            )
    finally:
        live.dispose()
    store_kind = "s3" if s3 else "filesystem"
    return BackupSummary(
        path, digest, snap.method, snap.log_size, count, total, missing, store_kind
    )
