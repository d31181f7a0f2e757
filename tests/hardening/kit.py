"""Helpers for the hardening tests: a pinned trio of in-process nodes, signed federation
requests, deliveries built from a real share, and a snapshot of everything a refusal must leave
untouched (database rows and blob store)."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
import sqlalchemy as sa

from service.artifacts.rows import delivery_head
from service.federation.signing import digest_value, sign_request_headers
from service.models import Artifact
from service.node import Node
from service.tokens import Role
from tests.conftest import PG_ADMIN_URL, _pg_ok
from tests.service.nodekit import (
    UPLOAD_HEADERS,
    Kit,
    folder_store,
    make_node,
    pin,
    upload_body,
)
from tests.support import require

DELIVERY_TYPE = "application/vnd.entente.delivery"
# Tables whose rows a refused request may add to: the audit log (refusals are audited) and the
# replay cache (every correctly signed federation request spends its nonce).
GROWS_ON_REFUSAL = frozenset({"audit_entries", "seen_nonces"})


@dataclass
class Trio:
    uk: Kit
    us: Kit
    ca: Kit


def trio(root: Path, *, db_url: str | None = None, **settings: object) -> Trio:
    """uk-aisi (on ``db_url``) with us-aisi and ca-aisi (SQLite), all pinned to each other."""
    root.mkdir(parents=True, exist_ok=True)
    uk = make_node(root, "uk-aisi", db_url=db_url, **settings)
    us = make_node(root, "us-aisi", **settings)
    ca = make_node(root, "ca-aisi", **settings)
    for a in (uk, us, ca):
        for b in (uk, us, ca):
            if a is not b:
                pin(a, b)
    return Trio(uk, us, ca)


@contextmanager
def postgres_database() -> Iterator[str]:
    """A fresh PostgreSQL database for a module-scoped fixture, dropped afterwards."""
    require(_pg_ok(), f"PostgreSQL at {PG_ADMIN_URL}", "start PostgreSQL on 127.0.0.1:5432")
    name = f"entente_h_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def meta(**changes: object) -> str:
    base: dict[str, object] = {
        "title": "Red-teaming results for model X",
        "tlp": "TLP:AMBER",
        "topics": ["evaluation/red-teaming"],
        "purposes": ["evaluation"],
        "partners": ["us-aisi"],
    }
    base.update(changes)
    return json.dumps(base)


async def share(kit: Kit, content: bytes, **changes: object) -> dict[str, Any]:
    """Share through the real API: the artifact's JSON."""
    async with kit.client() as c:
        r = await c.post(
            "/v1/artifacts",
            content=upload_body(meta(**changes), content),
            headers={**UPLOAD_HEADERS, **kit.auth(Role.PUBLISHER)},
        )
    assert r.status_code == 201, r.text
    out: dict[str, Any] = r.json()
    return out


def share_sync(kit: Kit, content: bytes, **changes: object) -> dict[str, Any]:
    """:func:`share` for synchronous fixtures."""
    import anyio

    async def go() -> dict[str, Any]:
        return await share(kit, content, **changes)

    return anyio.run(go)


def signed(
    sender: Node, receiver: Node, method: str, path: str, body: bytes = b"", **headers: str
) -> dict[str, str]:
    """Headers of a correctly signed federation request from ``sender`` to ``receiver``."""
    return {
        **headers,
        **sign_request_headers(
            sender,
            method=method,
            url=receiver.home.url + path,
            headers=headers,
            content_digest=digest_value(hashlib.sha256(body).digest()),
        ),
    }


def delivery(origin: Kit, artifact_id: str, to: str | None = None) -> tuple[bytes, bytes]:
    """The first line (the manifest, with the decision it commits to for the recipient) and the
    ciphertext ``origin`` would deliver to ``to`` (by default its one other recipient)."""
    with origin.node.db.session() as session:
        row = session.get(Artifact, (artifact_id, origin.node.node_id))
        assert row is not None and row.blob is not None
    with origin.node.blobs.open(row.blob) as fh:
        ciphertext = fh.read()
    others = [r for r in json.loads(row.recipients) if r != origin.node.node_id]
    partner = to or (others[0] if len(others) == 1 else None)
    if partner is None:
        raise ValueError("name the recipient of the delivery (to=)")
    return delivery_head(row, partner), ciphertext


class PartnerSignature(requests.auth.AuthBase):
    """requests auth that RFC 9421-signs the final request as ``sender`` (for schemathesis)."""

    def __init__(self, sender: Node, receiver: Node) -> None:
        self.sender = sender
        self.receiver = receiver

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        body = r.body or b""
        raw = body.encode() if isinstance(body, str) else body
        assert isinstance(raw, bytes)
        typed = {"Content-Type": r.headers["Content-Type"]} if "Content-Type" in r.headers else {}
        r.headers.update(
            signed(self.sender, self.receiver, str(r.method), str(r.path_url), raw, **typed)
        )
        return r


# --- "leaves the database and blob store exactly as before" --------------------------------------


@dataclass(frozen=True)
class Snapshot:
    rows: dict[str, list[tuple[Any, ...]]]
    audit: int
    blobs: frozenset[str]
    temporary: frozenset[str]


_REFLECTED: dict[int, sa.MetaData] = {}


def snapshot(node: Node) -> Snapshot:
    rows: dict[str, list[tuple[Any, ...]]] = {}
    engine = node.db.engine
    meta_ = _REFLECTED.get(id(engine))
    if meta_ is None:
        meta_ = _REFLECTED[id(engine)] = sa.MetaData()
        meta_.reflect(engine)
    with engine.connect() as conn:
        for name, table in sorted(meta_.tables.items()):
            if name in GROWS_ON_REFUSAL or name == "alembic_version":
                continue
            rows[name] = sorted((tuple(r) for r in conn.execute(sa.select(table))), key=repr)
        audit = conn.execute(sa.text("SELECT count(*) FROM audit_entries")).scalar_one()
    root = folder_store(node).root
    return Snapshot(
        rows,
        int(audit),
        frozenset(node.blobs.iter_digests()),
        frozenset(p.name for p in (root / "tmp").iterdir()),
    )


def audit_since(node: Node, before: Snapshot) -> list[dict[str, Any]]:
    """Audit entries recorded after ``before`` was taken, oldest first."""
    with node.db.engine.connect() as conn:
        result = conn.execute(
            sa.text(
                "SELECT kind, actor, partner, decision, rule, detail FROM audit_entries ORDER BY id"
            )
        )
        rows = [dict(r._mapping) for r in result][before.audit :]
    for r in rows:
        r["detail"] = json.loads(r["detail"])
    return rows
