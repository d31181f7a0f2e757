"""Replicas on one PostgreSQL database: what changes an artifact and this node's onward copy of
it in one transaction takes their row locks in key order ``(id, origin)``, as a retention round
writes the rows it has worked out. In another order, each transaction holds a row the other
waits for and PostgreSQL ends one ("deadlock detected"; seen with a partner's clock far ahead,
so that one replica found due what another was still working out).

Each test holds the copy's row in another transaction (a round on another replica, which sorts
first: "a..." < "b..."), starts the change, waits until it waits for a lock, then takes the
artifact's row in that transaction too: in key order, the change waited before taking either."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlmodel import col, select

from service.artifacts import retention
from service.artifacts.retention_rules import Deletion
from service.federation import notices
from service.models import Artifact, AuditEntry
from tests.service.nodekit import Kit, make_node
from tests.support import start_until_blocked

pytestmark = pytest.mark.postgres

RECEIVED = ("b" * 32, "us-aisi")  # an artifact us-aisi shared with this node (uk-aisi)
COPY = ("a" * 32, "uk-aisi")  # this node's onward share of it


def _row(key: tuple[str, str], direction: str, now: datetime, **upstream: str) -> Artifact:
    """An artifact row holding a (here absent) blob; only the columns changed matter."""
    ident, origin = key
    return Artifact(
        id=ident, direction=direction, origin=origin, sender=origin, title="t", tlp="TLP:GREEN",
        created_at=now, recorded_at=now, size=1, sha256="5" * 64, blob=ident * 2,
        ciphertext_size=1, header_sha256=ident * 2, manifest="{}", **upstream,
    )  # fmt: skip


@pytest.fixture
def kit(tmp_path: Path, pg_url: str) -> Kit:
    kit = make_node(tmp_path, "uk-aisi", db_url=pg_url)
    now = kit.node.now()
    with kit.node.db.session() as session:
        session.add(_row(RECEIVED, "received", now))
        session.add(_row(COPY, "sent", now, upstream_id=RECEIVED[0], upstream_from=RECEIVED[1]))
    return kit


def _beside_a_round(kit: Kit, pg_url: str, change: Callable[[], object]) -> None:
    """Run ``change`` while another transaction writes the copy's row, then the artifact's, in
    key order (as a round does); both must commit."""
    table = Artifact.__table__  # type: ignore[attr-defined]

    def worked_out(key: tuple[str, str]) -> sa.Update:
        match = (table.c.id == key[0]) & (table.c.origin == key[1])
        return sa.update(table).where(match).values(retention_version=7)

    failed: list[BaseException] = []

    def run() -> None:
        try:
            change()
        except BaseException as exc:
            failed.append(exc)

    changer = threading.Thread(target=run)
    with kit.node.db.engine.begin() as round_:
        round_.execute(worked_out(COPY))
        start_until_blocked(changer, pg_url)
        round_.execute(worked_out(RECEIVED))
    changer.join(30)
    assert not changer.is_alive()
    assert failed == []


def _rows(kit: Kit) -> list[Artifact]:
    with kit.node.db.session() as session:
        return list(session.exec(select(Artifact).order_by(col(Artifact.id))).all())


def _kinds(kit: Kit) -> list[tuple[str, str | None]]:
    with kit.node.db.session() as session:
        entries = session.exec(select(AuditEntry).order_by(col(AuditEntry.id))).all()
        return [(e.kind, e.artifact_id) for e in entries]


def test_a_retention_deletion(kit: Kit, pg_url: str) -> None:
    now = kit.node.now()
    due = retention.Due(*RECEIVED, "received", Deletion("revoked", now))
    _beside_a_round(kit, pg_url, lambda: retention.delete_copy(kit.node, due, now=now))
    assert [(r.id[0], r.blob, r.retention_version) for r in _rows(kit)] == [
        ("a", None, 7),
        ("b", None, 7),
    ]
    deleted = [k for k in _kinds(kit) if k[0] == "artifact.deleted"]
    assert sorted(deleted) == [("artifact.deleted", COPY[0]), ("artifact.deleted", RECEIVED[0])]


def test_a_revocation_from_the_origin(kit: Kit, pg_url: str) -> None:
    notice = {
        "type": "revocation", "notice_id": 1, "artifact_id": RECEIVED[0], "sha256": "5" * 64,
        "reason": "withdrawn",
    }  # fmt: skip
    _beside_a_round(kit, pg_url, lambda: notices.accept(kit.node, sender="us-aisi", data=notice))
    rows = _rows(kit)
    assert [(r.id[0], r.blob, r.retention_version) for r in rows] == [
        ("a", None, 7),
        ("b", None, 7),
    ]
    assert all(r.revoked_at is not None for r in rows)
    assert ("revocation.received", RECEIVED[0]) in _kinds(kit)
