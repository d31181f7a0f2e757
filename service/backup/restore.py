"""``entente restore``: a backup into a NEW home and an EMPTY database, checked before written.

1. Refuse, before reading anything else, a home that exists and is not an empty folder, a
   database that is not empty (SQLite: a file already there; PostgreSQL: any table), a blob
   folder that holds anything, or a store of another kind than the backup's.
2. Check every digest the manifest names: the snapshot, every home file, ``blobs.jsonl`` and
   every blob copied into the backup (its SHA-256 is its name). For an S3 store, every object
   the backup lists must still be in the bucket, with its size. Nothing is written until all
   of this passed.
3. Write: the home into a staging folder renamed into place last, the blobs (each checked
   again as it is placed), the database (SQLite: the snapshot file; PostgreSQL: ``pg_restore``
   in one transaction), then migrate it to this version's schema.
4. In the restored database: a ``node.restored`` audit entry, and every witness of the log
   marked ``unconfirmed`` (``service.audit.rollback``); then the witnesses are asked at once.
   The restored node signs no checkpoint until each has answered that it holds nothing newer
   than the restored log; one that holds more is recorded, and the node then never signs (it
   would fork its log): docs/backup.md says what the operator does then.

Outbox rows keep their states: deliveries a partner acknowledged before the snapshot are not
sent again, and those still queued are sent once the node runs (the leases the snapshot's
workers held on them are released: those workers do not work on the restored database).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlmodel import col

from crypto import strict_json
from crypto.errors import CryptoError
from crypto.note import NoteVerifier
from service.audit.entries import log_origin
from service.audit.log import record
from service.audit.rollback import WitnessCheck, check_witnesses, mark_unconfirmed, witness_ids
from service.audit.rotations import log_key
from service.backup.archive import (
    MANIFEST,
    ArchiveReader,
    BackupError,
    blob_member,
    copy_member,
    hash_member,
    member_path,
    open_archive,
    read_manifest,
)
from service.backup.pg import libpq_args, require_tool
from service.blobs import FileBlobStore, NoJournal
from service.console._session_store import SESSIONS
from service.db import open_database, safe_url
from service.errors import BlobStoreError, NotFoundError
from service.home import open_home
from service.models import Outbox
from service.settings import Settings

__all__ = ["RestoreSummary", "restore_backup"]

Progress = Callable[[str, int, int | None], None]
_DIGEST_RE = re.compile(r"^[0-9a-f]{64}$")
_LINE_MAX = 4096  # bytes in one line of blobs.jsonl


@dataclass(frozen=True)
class RestoreSummary:
    home: Path
    node_id: str
    log_size: int
    blobs: int
    witnesses: list[WitnessCheck]
    created: str | None = None  # when the snapshot was taken (the manifest's word for it)


def _quiet(_what: str, _done: int, _total: int | None) -> None:
    return None


def _field(obj: Any, key: str, kind: type, what: str) -> Any:
    value = obj.get(key) if isinstance(obj, dict) else None
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise BackupError(f"the backup's manifest has no valid {what}")
    return value


def _members(manifest: dict[str, Any]) -> list[tuple[str, str, int]]:
    """(name, sha256, size) of every file the manifest names, checked for form."""
    out = []
    for what, item in [
        ("database", manifest.get("database")),
        ("blob list", manifest.get("blobs")),
        *(("home file", item) for item in _field(manifest, "home", list, "home file list")),
    ]:
        name = member_path(_field(item, "path", str, f"{what} path"))
        digest = _field(item, "sha256", str, f"{what} digest")
        if not _DIGEST_RE.match(digest):
            raise BackupError(f"the backup's manifest has no valid {what} digest")
        out.append((name, digest, _field(item, "size", int, f"{what} size")))
    return out


def _blob_lines(archive: ArchiveReader) -> Iterator[dict[str, Any]]:
    """The lines of ``blobs.jsonl``, each checked for form (streamed)."""
    with archive.open("blobs.jsonl") as handle:
        while raw := handle.readline(_LINE_MAX + 1):  # never a whole line of any length
            if len(raw) > _LINE_MAX:
                raise BackupError("a line of blobs.jsonl is too long")
            try:
                line = strict_json.loads(raw)
            except (CryptoError, ValueError) as exc:
                raise BackupError(f"blobs.jsonl holds a line that is not JSON: {exc}") from None
            digest = _field(line, "digest", str, "blob digest in blobs.jsonl")
            blob_member(digest)
            if line.get("missing") is not True:
                _field(line, "size", int, "blob size in blobs.jsonl")
            yield line


# ---------------------------------------------------------------------------------------------
# 1. The target must be empty


def _database_target(settings: Settings, home: Path, backend: str) -> tuple[str, Path | None]:
    """(URL, SQLite file or None) of the database to restore into, refused unless empty."""
    url = settings.resolved_database_url()
    try:
        parsed = make_url(url)
    except sa.exc.ArgumentError:
        raise BackupError("the database URL is not valid") from None
    if parsed.get_backend_name() != backend:
        raise BackupError(
            f"the backup holds a {backend} database; restore it into {backend} "
            f"(not {parsed.get_backend_name()})"
        )
    if backend == "sqlite":
        path = Path(parsed.database or "")
        if not parsed.database or path.exists():
            raise BackupError(f"refusing to restore over the database {path}: it exists")
        return url, path
    db = open_database(url)
    try:
        with db.engine.connect() as conn:
            tables = sa.inspect(conn).get_table_names()
    finally:
        db.dispose()
    if tables:
        raise BackupError(
            f"refusing to restore into {safe_url(url)}: it is not empty ({len(tables)} tables, "
            f"e.g. {sorted(tables)[0]}); restore only into an empty database"
        )
    return url, None


def _check_target(settings: Settings, home: Path, manifest: dict[str, Any]) -> None:
    if home.is_symlink() or (home.exists() and (not home.is_dir() or any(home.iterdir()))):
        raise BackupError(f"refusing to restore into {home}: it exists and is not an empty folder")
    if not home.resolve().parent.is_dir():
        raise BackupError(f"the folder {home.resolve().parent} does not exist")
    store = _field(manifest.get("blobs"), "store", str, "blob store kind")
    if store == "s3" and settings.blob_url is None:
        raise BackupError(
            "the backup's blobs are in an S3-compatible store: set ENTENTE_BLOB_URL (and its "
            "endpoint and credentials) to that store"
        )
    if store == "filesystem":
        if settings.blob_url is not None:
            raise BackupError("the backup's blobs are files: unset ENTENTE_BLOB_URL")
        blob_dir = settings.resolved_blob_dir()
        if blob_dir.exists() and any(p.name != "tmp" for p in blob_dir.iterdir()):
            raise BackupError(f"refusing to restore into the blob folder {blob_dir}: not empty")


# ---------------------------------------------------------------------------------------------
# 2. Every digest before anything is written


def _check_backup(
    archive: ArchiveReader, manifest: dict[str, Any], settings: Settings, progress: Progress
) -> int:
    """Check every digest; the number of blobs present. Raises :class:`BackupError`."""
    for name, digest, size in _members(manifest):
        progress(f"checking {name}", 0, None)
        got, length = hash_member(archive, name)
        if (got, length) != (digest, size):
            raise BackupError(f"{name} in the backup does not match its manifest digest")
    facts = json.loads(_read_small(archive, "home/node.json"))
    if not isinstance(facts, dict) or facts.get("node_id") != manifest.get("node_id"):
        raise BackupError("the backup's node.json is for another node than its manifest")
    s3 = manifest["blobs"]["store"] == "s3"
    store = _s3_store(settings) if s3 else None
    count = 0
    for line in _blob_lines(archive):
        if line.get("missing") is True:
            continue
        digest = line["digest"]
        if store is not None:
            try:
                present = store.size(digest)
            except (NotFoundError, BlobStoreError):
                present = -1
            if present != line["size"]:
                raise BackupError(f"blob {digest} is not in the object store (or not whole)")
        else:
            got, length = hash_member(archive, blob_member(digest))
            if (got, length) != (digest, line["size"]):
                raise BackupError(f"blob {digest} in the backup does not match its SHA-256")
        count += 1
        progress("checking blobs", count, int(manifest["blobs"].get("count") or 0) or None)
    if count != manifest["blobs"].get("count"):
        raise BackupError("blobs.jsonl does not list as many blobs as the manifest says")
    return count


def _read_small(archive: ArchiveReader, name: str) -> bytes:
    with archive.open(name) as handle:
        data: bytes = handle.read(1 << 20)
        return data


def _s3_store(settings: Settings) -> Any:
    from service.blobs_s3 import S3BlobStore

    return S3BlobStore.from_settings(settings, journal=NoJournal())


# ---------------------------------------------------------------------------------------------
# 3. Writing


def _write_home(archive: ArchiveReader, manifest: dict[str, Any], staging: Path) -> None:
    for item in manifest["home"]:
        name = member_path(item["path"])
        target = staging / name.removeprefix("home/")
        target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as sink:
            got, _size = copy_member(archive, name, sink)
        if got != item["sha256"]:
            raise BackupError(f"{name} changed while it was restored")
    (staging / "policies").mkdir(exist_ok=True, mode=0o700)


def _write_blobs(archive: ArchiveReader, root: Path, progress: Progress) -> None:
    store = FileBlobStore(root, journal=NoJournal())
    done = 0
    for line in _blob_lines(archive):
        if line.get("missing") is True:
            continue
        writer = store.writer()
        try:
            copy_member(archive, blob_member(line["digest"]), writer)
        except BaseException:
            writer.abort()
            raise
        if writer.place() != line["digest"]:
            raise BackupError(f"blob {line['digest']} changed while it was restored")
        done += 1
        progress("restoring blobs", done, None)
    store.sync_placed()


def _write_database(
    archive: ArchiveReader, manifest: dict[str, Any], url: str, path: Path | None
) -> None:
    member = member_path(manifest["database"]["path"])
    if path is not None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as sink:
            got, _size = copy_member(archive, member, sink)
            sink.flush()
            os.fsync(sink.fileno())
        if got != manifest["database"]["sha256"]:
            raise BackupError("the database snapshot changed while it was restored")
        return
    pg_restore = require_tool("pg_restore")
    with tempfile.TemporaryDirectory(prefix="entente-restore-") as work:
        dump = Path(work) / "database.pgdump"
        with open(dump, "wb") as sink:
            got, _size = copy_member(archive, member, sink)
        if got != manifest["database"]["sha256"]:
            raise BackupError("the database snapshot changed while it was restored")
        args, env = libpq_args(url)
        done = subprocess.run(  # noqa: S603 - fixed arguments, no shell
            [pg_restore, "--no-owner", "--no-privileges", "--single-transaction",
             "--exit-on-error", *args, str(dump)],
            env=env, capture_output=True, text=True, check=False,
        )  # fmt: skip
    if done.returncode != 0:
        reason = (done.stderr.strip().splitlines() or ["no message"])[-1]
        raise BackupError(f"pg_restore failed (nothing was restored): {reason[:500]}")


@contextlib.contextmanager
def _staged_home(home: Path) -> Iterator[Path]:
    """A staging folder beside ``home``, renamed into place when the block succeeds."""
    parent = home.resolve().parent
    staging = Path(tempfile.mkdtemp(prefix=f".{home.name}.restore-", dir=parent))
    os.chmod(staging, 0o700)
    try:
        yield staging
        if home.exists():
            home.rmdir()  # empty: checked first
        os.rename(staging, home)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def restore_backup(
    source: Path,
    settings: Settings,
    *,
    progress: Progress = _quiet,
    actor: str = "admin:cli",
    ask_witnesses: bool = True,
    manifest_sha256: str | None = None,
) -> RestoreSummary:
    """Restore the backup at ``source`` into ``settings``' home (new or an empty folder) and
    database (empty). Raises :class:`BackupError` before writing anything when the target is
    not empty or the backup is not whole, or, given ``manifest_sha256`` (the digest
    ``entente backup`` printed and audited as ``node.backup``), when its manifest is another:
    the digests a backup holds prove it whole, only that one proves it is the backup taken
    (whoever edits a backup can recompute the digests inside it)."""
    home = settings.require_home()
    archive = open_archive(source)
    try:
        manifest = read_manifest(archive)
        digest = hash_member(archive, MANIFEST)[0]
        if manifest_sha256 is not None and digest != manifest_sha256.strip().lower():
            raise BackupError(
                f"the backup's manifest has SHA-256 {digest}, not {manifest_sha256.strip()[:64]}: "
                "it was changed since it was taken, or it is another backup"
            )
        restored = {"manifest_sha256": digest, "manifest_checked": manifest_sha256 is not None}
        _members(manifest)
        backend = _field(manifest.get("database"), "backend", str, "database backend")
        if backend not in ("sqlite", "postgresql"):
            raise BackupError(f"the backup's database backend {backend[:40]!r} is unknown")
        _check_target(settings, home, manifest)
        url, sqlite_path = _database_target(settings, home, backend)
        count = _check_backup(archive, manifest, settings, progress)

        in_home = sqlite_path is not None and sqlite_path.resolve().parent == home.resolve()
        fs_blobs = manifest["blobs"]["store"] == "filesystem"
        blob_dir = settings.resolved_blob_dir()
        blobs_in_home = blob_dir.resolve() == (home.resolve() / "blobs")
        outside = sqlite_path if sqlite_path is not None and not in_home else None
        try:
            with _staged_home(home) as staging:
                _write_home(archive, manifest, staging)
                (staging / "blobs").mkdir(exist_ok=True, mode=0o700)
                if fs_blobs:
                    target = staging / "blobs" if blobs_in_home else blob_dir
                    _write_blobs(archive, target, progress)
                if in_home and sqlite_path is not None:
                    _write_database(archive, manifest, url, staging / sqlite_path.name)
                else:
                    _write_database(archive, manifest, url, sqlite_path)
        except BaseException:
            if outside is not None:
                outside.unlink(missing_ok=True)
            raise
    finally:
        archive.close()
    return _after_restore(
        settings, manifest, url, count, actor=actor, ask=ask_witnesses, restored=restored
    )


def _after_restore(
    settings: Settings,
    manifest: dict[str, Any],
    url: str,
    count: int,
    *,
    restored: dict[str, Any],
    actor: str,
    ask: bool,
) -> RestoreSummary:
    home = open_home(settings.require_home())
    now = datetime.now(UTC)
    db = open_database(url, migrate=True)
    try:
        with db.session() as session:
            # Leases held by the snapshot's workers: none of them works on this database, so a
            # delivery they had claimed is free at once (a lease would hold it minutes).
            session.execute(
                sa.update(Outbox)
                .where(col(Outbox.state) == "pending", col(Outbox.lease_owner).is_not(None))
                .values(lease_owner=None, lease_until=None)
            )
            # Console sessions signed out after the snapshot would be live again: every one
            # ends, and each auditor signs in again (a revoked token stays the operator's to
            # revoke again: the snapshot cannot know of it; docs/backup.md).
            live = (
                sa.select(sa.func.count())
                .select_from(SESSIONS)
                .where(SESSIONS.c.ended_at.is_(None))
            )
            ended = int(session.execute(live).scalar_one())
            session.execute(
                sa.update(SESSIONS).where(SESSIONS.c.ended_at.is_(None)).values(ended_at=now)
            )
            witnesses = witness_ids(session, home.node_id, settings.witness_count)
            mark_unconfirmed(session, witnesses, now=now)
            record(
                session,
                kind="node.restored",
                actor=actor,
                detail={
                    **restored,
                    "created": manifest.get("created"),
                    "log_size": manifest["database"].get("log_size"),
                    "blobs": count,
                    "witnesses_unconfirmed": witnesses,
                    "console_sessions_ended": ended,
                },
                now=now,
            )
        checks: list[WitnessCheck] = []
        if ask and witnesses:
            descriptor = _descriptor(home)
            verifier = NoteVerifier(log_origin(home.node_id), log_key(descriptor))
            checks = check_witnesses(
                db,
                node_id=home.node_id,
                log_key=verifier,
                witness_count=settings.witness_count,
                now=now,
                actor=actor,
            )
    finally:
        db.dispose()
    size = manifest["database"].get("log_size")
    created = manifest.get("created")
    return RestoreSummary(
        home.path, home.node_id, int(size or 0), count, checks,
        created=created if isinstance(created, str) else None,
    )  # fmt: skip


def _descriptor(home: Any) -> Any:
    from crypto.descriptor import NodeDescriptor, verify_descriptor

    envelope = home.descriptor_envelope()
    try:
        created = NodeDescriptor.from_json(json.loads(envelope.payload)).created
        return verify_descriptor(envelope, now=created)
    except (CryptoError, ValueError) as exc:
        raise BackupError(f"the restored node descriptor does not verify: {exc}") from None
