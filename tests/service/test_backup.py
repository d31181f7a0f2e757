"""Backup and restore (``service.backup``): the manifest, a round trip on each database and blob
store, and every refusal (a target that is not empty, a backup that is not whole or not what it
says), with nothing written when one is refused."""

from __future__ import annotations

import hashlib
import io
import json
import sqlite3
import tarfile
import tracemalloc
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlmodel import select

from service.artifacts import share as sharing
from service.artifacts.terms import ShareTerms
from service.audit.models import AuditRollback
from service.backup.archive import BackupError, member_path
from service.backup.restore import restore_backup
from service.backup.take import take_backup
from service.console._session_store import start_session
from service.db import open_database
from service.models import Artifact, AuditEntry, Outbox
from service.settings import Settings
from service.tokens import Principal, Role
from tests.conftest import PG_ADMIN_URL
from tests.nodes import run_cli
from tests.service.nodekit import Kit, make_node, pin

PUBLISHER = Principal(token_id="tok_test", name="tester", role=Role.PUBLISHER)


@pytest.fixture(params=["folder-sqlite", "folder-postgres", "s3-sqlite"])
def kit(request: pytest.FixtureRequest, tmp_path: Path) -> Kit:
    store, backend = request.param.split("-")
    options: dict[str, Any] = {}
    if backend == "postgres":
        options["db_url"] = request.getfixturevalue("pg_url")
    if store == "s3":
        server = request.getfixturevalue("seaweedfs")
        prefix = request.getfixturevalue("s3_prefix")
        options.update(
            {k.removeprefix("ENTENTE_").lower(): v for k, v in server.env(prefix).items()}
        )
    uk = make_node(tmp_path, "uk-aisi", **options)
    us = make_node(tmp_path, "us-aisi")
    pin(uk, us)
    return uk


@pytest.fixture
def sqlite_kit(tmp_path: Path) -> Kit:
    uk = make_node(tmp_path, "uk-aisi")
    pin(uk, make_node(tmp_path, "us-aisi"))
    return uk


def share(kit: Kit, content: bytes) -> str:
    terms = ShareTerms(
        title="finding", tlp="TLP:GREEN", topics=("evaluation",), purposes=("evaluation",),
        partners=("us-aisi",),
    )  # fmt: skip
    decisions = sharing.decide_share(kit.node, terms, principal=PUBLISHER)
    row = sharing.share_artifact(
        kit.node, kit.node.blobs, terms, io.BytesIO(content), principal=PUBLISHER,
        decisions=decisions,
    )  # fmt: skip
    return row.id


def target_settings(kit: Kit, home: Path, database_url: str | None = None) -> Settings:
    """Settings for restoring ``kit``'s backup: the same kind of database and blob store."""
    s = kit.node.settings
    return Settings(
        home=home,
        database_url=database_url,
        insecure_no_passphrase=True,
        blob_url=s.blob_url,
        s3_endpoint_url=s.s3_endpoint_url,
        s3_region=s.s3_region,
        s3_access_key_id=s.s3_access_key_id,
        s3_secret_access_key=s.s3_secret_access_key,
        s3_addressing_style=s.s3_addressing_style,
    )


@pytest.fixture
def fresh_pg() -> Iterator[Any]:
    """Makes empty PostgreSQL databases (each dropped afterwards)."""
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    made: list[str] = []

    def make() -> str:
        name = f"entente_r_{uuid.uuid4().hex[:12]}"
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
        made.append(name)
        return PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"

    yield make
    with admin.connect() as conn:
        for name in made:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def rows(url: str, model: Any) -> list[Any]:
    db = open_database(url)
    try:
        with db.session() as session:
            return list(session.exec(select(model)))
    finally:
        db.dispose()


@pytest.mark.parametrize("form", ["folder", "tar"])
def test_a_backup_restores_rows_blobs_and_home(
    kit: Kit, tmp_path: Path, form: str, request: pytest.FixtureRequest
) -> None:
    ids = [share(kit, f"finding {i}".encode() * 500) for i in range(3)]
    with kit.node.db.session() as session:  # one delivery acknowledged, the others queued
        first = session.exec(select(Outbox).where(Outbox.artifact_id == ids[0])).one()
        first.state, first.receipt = "delivered", '{"receipt": "signed"}'
        second = session.exec(select(Outbox).where(Outbox.artifact_id == ids[1])).one()
        second.lease_owner = "w-snapshot"  # claimed by a worker of the node backed up
        second.lease_until = datetime.now(UTC) + timedelta(hours=1)
    target = tmp_path / ("backup.tar" if form == "tar" else "backup")
    summary = take_backup(kit.node.settings, target)
    assert summary.blobs == 3 and summary.missing == 0
    assert (summary.store == "s3") == (kit.node.settings.blob_url is not None)
    if form == "tar":
        with tarfile.open(target) as tar:
            assert "manifest.json" in tar.getnames()

    url = None if kit.node.db.is_sqlite else request.getfixturevalue("fresh_pg")()
    settings = target_settings(kit, tmp_path / "restored", url)
    restored = restore_backup(target, settings, ask_witnesses=False)
    assert restored.node_id == "uk-aisi" and restored.blobs == 3
    new_url = settings.resolved_database_url()

    artifacts = {a.id: a for a in rows(new_url, Artifact)}
    assert set(artifacts) == set(ids)
    states = {o.artifact_id: o.state for o in rows(new_url, Outbox) if o.kind == "deliver"}
    assert states == {ids[0]: "delivered", ids[1]: "pending", ids[2]: "pending"}
    assert [o.lease_owner for o in rows(new_url, Outbox) if o.lease_owner] == []  # released
    for artifact in artifacts.values():  # the same ciphertext, where the new home finds it
        assert artifact.blob is not None
        with kit.node.blobs.open(artifact.blob) as old:
            original = old.read()
        if settings.blob_url is None:
            placed = settings.resolved_blob_dir() / artifact.blob[:2] / artifact.blob[2:4]
            assert (placed / artifact.blob).read_bytes() == original
    home = tmp_path / "restored"
    for name in ("node.json", "descriptor.dsse.json", "keys/signing.key"):
        assert (home / name).read_bytes() == (kit.node.home.path / name).read_bytes()
    assert (home / "keys" / "signing.key").stat().st_mode & 0o077 == 0
    kinds = [e.kind for e in rows(new_url, AuditEntry)]
    assert "node.restored" in kinds and "node.backup" not in kinds  # taken after the snapshot
    original_kinds = [e.kind for e in rows(kit.node.settings.resolved_database_url(), AuditEntry)]
    assert original_kinds.count("node.backup") == 1
    pending = rows(new_url, AuditRollback)
    assert [(r.witness, r.state) for r in pending] == [("us-aisi", "unconfirmed")]


def test_the_manifest_names_every_file_with_its_digest(sqlite_kit: Kit, tmp_path: Path) -> None:
    import hashlib

    digest = share(sqlite_kit, b"x" * 10_000)
    take_backup(sqlite_kit.node.settings, tmp_path / "b")
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert manifest["format"] == "entente.backup/v1"
    assert manifest["node_id"] == "uk-aisi"
    assert manifest["database"]["method"] == "sqlite-backup-api"
    assert (
        manifest["database"]["revision"]
        == open_database(sqlite_kit.node.settings.resolved_database_url()).head_revision()
    )
    named = {m["path"] for m in manifest["home"]}
    assert {"home/node.json", "home/descriptor.dsse.json", "home/keys/signing.key"} <= named
    assert any(n.startswith("home/policies/") for n in named)
    for item in [*manifest["home"], manifest["database"], manifest["blobs"]]:
        data = (tmp_path / "b" / item["path"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == item["sha256"] and len(data) == item["size"]
    lines = [json.loads(x) for x in (tmp_path / "b" / "blobs.jsonl").read_text().splitlines()]
    with sqlite_kit.node.db.session() as session:
        blob = session.exec(select(Artifact.blob).where(Artifact.id == digest)).one()
    assert [line["digest"] for line in lines] == [blob]
    assert manifest["blobs"]["count"] == 1


def test_restore_refuses_a_home_or_database_that_is_not_empty(
    sqlite_kit: Kit, tmp_path: Path
) -> None:
    take_backup(sqlite_kit.node.settings, tmp_path / "b")
    home = tmp_path / "busy"
    home.mkdir()
    (home / "something").write_text("here")
    with pytest.raises(BackupError, match="not an empty folder"):
        restore_backup(tmp_path / "b", Settings(home=home), ask_witnesses=False)
    existing = tmp_path / "other.db"
    existing.write_bytes(b"")
    with pytest.raises(BackupError, match="it exists"):
        restore_backup(
            tmp_path / "b",
            Settings(home=tmp_path / "new", database_url=f"sqlite:///{existing}"),
            ask_witnesses=False,
        )
    assert not (tmp_path / "new").exists()
    with pytest.raises(BackupError, match="exists"):  # a backup never overwrites
        take_backup(sqlite_kit.node.settings, tmp_path / "b")


@pytest.mark.postgres
def test_restore_refuses_a_postgres_database_with_tables(
    tmp_path: Path, pg_url: str, fresh_pg: Any
) -> None:
    uk = make_node(tmp_path, "uk-aisi", db_url=pg_url)
    take_backup(uk.node.settings, tmp_path / "b")
    busy = fresh_pg()
    open_database(busy, migrate=True).dispose()  # an Entente database already
    target = tmp_path / "n"
    with pytest.raises(BackupError, match="not empty"):
        restore_backup(tmp_path / "b", Settings(home=target, database_url=busy))
    with pytest.raises(BackupError, match="holds a postgresql database"):
        restore_backup(tmp_path / "b", Settings(home=target), ask_witnesses=False)
    assert not target.exists()


@pytest.mark.parametrize(
    "damage",
    ["blob", "key file", "blob list", "database", "manifest digest"],
)
def test_a_damaged_backup_is_refused_before_anything_is_written(
    sqlite_kit: Kit, tmp_path: Path, damage: str
) -> None:
    share(sqlite_kit, b"finding" * 1000)
    backup = tmp_path / "b"
    take_backup(sqlite_kit.node.settings, backup)
    manifest = json.loads((backup / "manifest.json").read_text())
    if damage == "blob":
        victim = next((backup / "blobs").rglob("*"))
        while victim.is_dir():
            victim = next(victim.iterdir())
        victim.write_bytes(victim.read_bytes()[:-1] + b"!")
    elif damage == "key file":
        (backup / "home" / "keys" / "signing.key").write_bytes(b"not the key")
    elif damage == "blob list":
        (backup / "blobs.jsonl").write_text("")
    elif damage == "database":
        with open(backup / "database.sqlite", "r+b") as f:
            f.seek(5000)
            f.write(b"\xff\xff")
    else:
        manifest["home"][0]["sha256"] = "0" * 64
        (backup / "manifest.json").write_text(json.dumps(manifest))
    target = tmp_path / "restored"
    with pytest.raises(BackupError, match=r"does not match|as many blobs"):
        restore_backup(backup, Settings(home=target), ask_witnesses=False)
    assert not target.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".restored")] == []


def test_names_in_a_backup_are_checked_before_any_path_is_made(tmp_path: Path) -> None:
    for bad in ["../x", "home/../../etc/passwd", "/etc/passwd", "home/keys/../../x", "other"]:
        with pytest.raises(BackupError):
            member_path(bad)
    assert member_path("home/keys/retired/ab.signing.key") == "home/keys/retired/ab.signing.key"
    backup = tmp_path / "evil.tar"
    with tarfile.open(backup, "w") as tar:
        data = json.dumps(
            {"format": "entente.backup/v1", "node_id": "x", "home": [],
             "database": {"path": "../../x", "sha256": "0" * 64, "size": 1, "backend": "sqlite"},
             "blobs": {"path": "blobs.jsonl", "sha256": "0" * 64, "size": 0, "store": "filesystem"}}
        ).encode()  # fmt: skip
        info = tarfile.TarInfo("manifest.json")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    with pytest.raises(BackupError, match="unexpected file"):
        restore_backup(backup, Settings(home=tmp_path / "n"), ask_witnesses=False)
    assert not (tmp_path / "n").exists()


def test_a_blob_damaged_in_the_store_fails_the_backup_and_leaves_none(
    sqlite_kit: Kit, tmp_path: Path
) -> None:
    art = share(sqlite_kit, b"finding" * 1000)
    with sqlite_kit.node.db.session() as session:
        blob = session.exec(select(Artifact.blob).where(Artifact.id == art)).one()
    assert blob is not None
    path = sqlite_kit.node.settings.resolved_blob_dir() / blob[:2] / blob[2:4] / blob
    path.write_bytes(b"rotten" + path.read_bytes()[6:])
    with pytest.raises(BackupError, match="damaged"):
        take_backup(sqlite_kit.node.settings, tmp_path / "b")
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith((".b", "b"))) == []


def test_a_blob_deleted_after_the_snapshot_is_listed_missing(
    sqlite_kit: Kit, tmp_path: Path
) -> None:
    art = share(sqlite_kit, b"finding" * 1000)
    with sqlite_kit.node.db.session() as session:
        blob = session.exec(select(Artifact.blob).where(Artifact.id == art)).one()
    assert blob is not None
    sqlite_kit.node.blobs.delete(blob)  # as retention does, after its row stopped referring
    summary = take_backup(sqlite_kit.node.settings, tmp_path / "b")
    assert (summary.blobs, summary.missing) == (0, 1)
    restored = restore_backup(tmp_path / "b", Settings(home=tmp_path / "n"), ask_witnesses=False)
    assert restored.blobs == 0


def test_a_backup_edited_with_its_manifest_is_refused_against_the_printed_digest(
    sqlite_kit: Kit, tmp_path: Path
) -> None:
    """The digests a backup holds prove it whole, not that it is the one taken: a token of the
    attacker's inserted into the snapshot, with the manifest's digests recomputed, restored
    cleanly (found by review). The digest `entente backup` printed refuses it; a restore
    records which manifest it used, and whether it was checked."""
    taken = take_backup(sqlite_kit.node.settings, tmp_path / "b")
    db = tmp_path / "b" / "database.sqlite"
    with sqlite3.connect(db) as conn:
        conn.execute(
            "INSERT INTO tokens (id, name, role, token_hash, created_at) VALUES "
            "('tok_evil', 'evil', 'admin', ?, '2026-01-01 00:00:00.000000')",
            (hashlib.sha256(b"ent_deadbeef_" + b"A" * 43).hexdigest(),),
        )
    conn.close()
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    manifest["database"]["sha256"] = hashlib.sha256(db.read_bytes()).hexdigest()
    manifest["database"]["size"] = db.stat().st_size
    (tmp_path / "b" / "manifest.json").write_text(json.dumps(manifest))
    target = target_settings(sqlite_kit, tmp_path / "n")
    with pytest.raises(BackupError, match="changed since it was taken"):
        restore_backup(
            tmp_path / "b", target, ask_witnesses=False, manifest_sha256=taken.manifest_sha256
        )
    assert not (tmp_path / "n").exists()  # nothing written
    restore_backup(tmp_path / "b", target, ask_witnesses=False)  # the operator's --unverified
    [restored] = [
        e for e in rows(target.resolved_database_url(), AuditEntry) if e.kind == "node.restored"
    ]
    detail = json.loads(restored.detail)
    assert detail["manifest_checked"] is False
    assert (
        detail["manifest_sha256"]
        == hashlib.sha256((tmp_path / "b" / "manifest.json").read_bytes()).hexdigest()
    )


def test_the_cli_restores_only_a_backup_named_by_its_digest(
    sqlite_kit: Kit, tmp_path: Path
) -> None:
    taken = take_backup(sqlite_kit.node.settings, tmp_path / "b")
    home = tmp_path / "n"
    bare = run_cli("restore", str(tmp_path / "b"), "--home", str(home), "--no-ask-witnesses")
    assert bare.returncode != 0 and "--manifest-sha256" in bare.stderr
    wrong = run_cli(
        "restore", str(tmp_path / "b"), "--home", str(home), "--no-ask-witnesses",
        "--manifest-sha256", "0" * 64,
    )  # fmt: skip
    assert wrong.returncode != 0 and "changed since it was taken" in wrong.stderr
    done = run_cli(
        "restore", str(tmp_path / "b"), "--home", str(home), "--no-ask-witnesses",
        "--manifest-sha256", taken.manifest_sha256,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr


def test_a_member_that_is_a_link_is_refused(sqlite_kit: Kit, tmp_path: Path) -> None:
    """A folder backup's member that is a link (to /dev/zero, say) was followed: a restore hashed
    for ever (found by review)."""
    take_backup(sqlite_kit.node.settings, tmp_path / "b")
    listed = tmp_path / "b" / "blobs.jsonl"
    listed.unlink()
    listed.symlink_to("/dev/zero")
    with pytest.raises(BackupError, match=r"blobs\.jsonl in the backup is not a regular file"):
        restore_backup(tmp_path / "b", target_settings(sqlite_kit, tmp_path / "n"))


def test_an_endless_line_of_the_blob_list_is_refused_unread(
    sqlite_kit: Kit, tmp_path: Path
) -> None:
    """``blobs.jsonl`` was read a whole line at a time before its length was checked: one line
    of 20 GiB was all read into memory (found by review)."""
    take_backup(sqlite_kit.node.settings, tmp_path / "b")
    listed = tmp_path / "b" / "blobs.jsonl"
    listed.write_bytes(b"{" + b"a" * (64 << 20))  # 64 MiB, no end of line
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    manifest["blobs"]["sha256"] = hashlib.sha256(listed.read_bytes()).hexdigest()
    manifest["blobs"]["size"] = listed.stat().st_size
    (tmp_path / "b" / "manifest.json").write_text(json.dumps(manifest))
    tracemalloc.start()
    try:
        with pytest.raises(BackupError, match="too long"):
            restore_backup(tmp_path / "b", target_settings(sqlite_kit, tmp_path / "n"))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20  # not the 64 MiB line


def test_a_restore_ends_every_console_session(sqlite_kit: Kit, tmp_path: Path) -> None:
    """A console session signed out after the snapshot was live again once restored (found by
    review): a restore ends them all, on record, and each auditor signs in again."""
    now = datetime.now(UTC)
    with sqlite_kit.node.db.session() as session:
        start_session(
            session, session_id="s1", token_id="tok_auditor", now=now,
            expires_at=now + timedelta(hours=1),
        )  # fmt: skip
        session.commit()
    take_backup(sqlite_kit.node.settings, tmp_path / "b")
    target = target_settings(sqlite_kit, tmp_path / "n")
    restore_backup(tmp_path / "b", target, ask_witnesses=False)
    db = open_database(target.resolved_database_url())
    try:
        with db.engine.connect() as conn:
            ended = conn.execute(sa.text("SELECT ended_at FROM console_sessions")).scalars().all()
    finally:
        db.dispose()
    assert ended and all(e is not None for e in ended)
    [restored] = [
        e for e in rows(target.resolved_database_url(), AuditEntry) if e.kind == "node.restored"
    ]
    assert json.loads(restored.detail)["console_sessions_ended"] == 1
