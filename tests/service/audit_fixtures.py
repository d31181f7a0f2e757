"""Helpers for the audit log and witness tests: in-process nodes on a given database."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import sqlalchemy as sa

from service.audit.entries import log_signer
from service.audit.log import record
from service.audit.sequencer import SequenceResult, sequence
from service.db import open_database
from service.home import create_home
from service.node import Node, open_blob_store
from service.partners import add_partner
from service.policy_store import PolicyStore
from service.settings import Settings
from service.tokens import Role, create_token

T0 = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)


@dataclass
class Clock:
    now: datetime = T0

    def __call__(self) -> datetime:
        return self.now

    def tick(self, seconds: float = 1.0) -> datetime:
        self.now += timedelta(seconds=seconds)
        return self.now


def make_node(root: Path, node_id: str, db_url: str, clock: Clock | None = None) -> Node:
    """A node with an unencrypted home under ``root`` and its database at ``db_url``."""
    settings = Settings.load(
        home=root / node_id,
        database_url=db_url,
        insecure_no_passphrase=True,
        workers_enabled=False,
        scrypt_work_factor=10,
    )
    home = create_home(
        settings,
        path=root / node_id,
        node_id=node_id,
        name=node_id.upper(),
        url=f"https://{node_id}.example",
        now=T0 - timedelta(days=1),
    )
    keys = home.unlock(settings)
    db = open_database(db_url, migrate=True)
    # No policy files and no version published: the empty set (every request denied), unaudited.
    policies = PolicyStore(home.policies_dir, db=db)
    return Node(
        settings=settings,
        home=home,
        keys=keys,
        db=db,
        blobs=open_blob_store(settings, db),
        policies=policies,
        clock=clock or Clock(),
    )


def pin(node: Node, partner: Node) -> None:
    """Pin ``partner`` at ``node`` (as `entente partner add` would)."""
    with node.db.session() as session:
        add_partner(
            session,
            descriptor_bytes=partner.descriptor().to_bytes(),
            fingerprint=partner.keys.signing.fingerprint,
            own_node_id=node.node_id,
            now=node.now(),
            actor="admin:test",
        )


def add_events(node: Node, count: int, *, kind: str = "read", partner: str | None = None) -> None:
    with node.db.session() as session:
        for i in range(count):
            record(
                session,
                kind=kind,
                actor=f"reader:alice{i % 3}",
                partner=partner,
                artifact_id=f"art-{i:04d}",
                digest=f"{i:064x}",
                decision="allow",
                rule="permit-read",
                clause="MOU 4.2",
                detail={"i": i, "note": 'é "quoted"\n'},
                now=node.now(),
            )


def seq_all(node: Node, *, batch_max: int = 10_000) -> SequenceResult:
    """Sequence every pending entry (several rounds if ``batch_max`` is small)."""
    signer = log_signer(node)
    while True:
        with node.db.session() as session:
            result = sequence(session, signer=signer, now=node.now(), batch_max=batch_max)
        if result.sequenced < batch_max:
            return result


def token(node: Node, role: Role, name: str = "t") -> str:
    with node.db.session() as session:
        _row, secret = create_token(session, role=role, name=name, now=node.now(), actor="test")
    return secret


@contextmanager
def second_database(db_url: str, tmp_path: Path) -> Iterator[str]:
    """Another empty database on the same backend as ``db_url`` (for a second node)."""
    if db_url.startswith("sqlite"):
        yield f"sqlite:///{tmp_path / 'second.db'}"
        return
    admin_url = db_url.rsplit("/", 1)[0] + "/postgres"
    name = f"entente_t2_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield db_url.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
