"""M3: a co-recipient stored its own content at a third node under the origin's artifact id; the
origin's delivery then failed permanently with 409 and its revocation was refused.

Now an artifact's identity is scoped to its origin, ``(origin, id)``: a co-recipient's artifact
under the same id is another artifact, the origin's delivery and revocation reach the origin's
own, and a plain id that two origins share is resolved explicitly (``id@origin``).
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from sqlalchemy.exc import IntegrityError
from sqlmodel import select

from service.artifacts.listing import get_artifact
from service.db import _alembic_config
from service.errors import ConflictError
from service.models import Artifact
from service.tokens import Role
from tests.hardening.kit import DELIVERY_TYPE, Trio, delivery, share, signed, trio
from tests.service.test_federation_input import sealed_artifact


async def _post(nodes: Trio, sender: str, path: str, body: bytes, ctype: str):
    origin = getattr(nodes, sender).node
    headers = signed(origin, nodes.us.node, "POST", path, body, **{"Content-Type": ctype})
    async with nodes.us.client() as c:
        return await c.post(path, content=body, headers=headers)


@pytest.fixture
def nodes(tmp_path: Path) -> Trio:
    return trio(tmp_path)


async def test_a_co_recipient_cannot_squat_the_origins_artifact_id(nodes: Trio) -> None:
    # uk-aisi shares with us-aisi and ca-aisi; ca-aisi gets it first and so learns its id.
    sent = await share(
        nodes.uk, b"the UK finding", partners=["us-aisi", "ca-aisi"], tlp="TLP:GREEN"
    )
    art_id = sent["id"]
    # ca-aisi seals its own content under that id and delivers it to us-aisi first.
    _id, line, ciphertext = sealed_artifact(nodes.ca, [nodes.us], b"ca's decoy", artifact_id=art_id)
    r = await _post(nodes, "ca", "/federation/v1/inbox", line + b"\n" + ciphertext, DELIVERY_TYPE)
    assert r.status_code == 201, r.text
    # The origin's delivery still lands: it is another artifact, (uk-aisi, id).
    manifest, ciphertext = delivery(nodes.uk, art_id, to="us-aisi")
    r = await _post(
        nodes, "uk", "/federation/v1/inbox", manifest + b"\n" + ciphertext, DELIVERY_TYPE
    )
    assert r.status_code == 201, r.text
    with nodes.us.node.db.session() as session:
        held = {a.origin: a for a in session.exec(select(Artifact).where(Artifact.id == art_id))}
    assert set(held) == {"uk-aisi", "ca-aisi"}
    assert held["uk-aisi"].sha256 == hashlib.sha256(b"the UK finding").hexdigest()
    # The origin's revocation reaches its own artifact, and only it.
    notice = json.dumps(
        {"notice_id": 1, "type": "revocation", "artifact_id": art_id,
         "sha256": sent["sha256"], "reason": "withdrawn"}
    ).encode()  # fmt: skip
    r = await _post(nodes, "uk", "/federation/v1/notices", notice, "application/json")
    assert r.status_code == 200, r.text
    with nodes.us.node.db.session() as session:
        uk_copy = session.get(Artifact, (art_id, "uk-aisi"))
        ca_copy = session.get(Artifact, (art_id, "ca-aisi"))
        assert uk_copy is not None and uk_copy.revoked_at is not None and uk_copy.blob is None
        assert ca_copy is not None and ca_copy.revoked_at is None
        # A reader names which one: the plain id is ambiguous when two origins use it.
        assert get_artifact(session, f"{art_id}@ca-aisi") is not None
    async with nodes.us.client() as c:
        r = await c.get(f"/v1/artifacts/{art_id}@ca-aisi", headers=nodes.us.auth(Role.READER))
        assert r.status_code == 200 and r.json()["origin"] == "ca-aisi", r.text


async def test_a_plain_id_held_from_two_origins_is_ambiguous(nodes: Trio) -> None:
    art_id = "art_shared00000000000000000000"
    for sender in (nodes.uk, nodes.ca):
        _id, line, ciphertext = sealed_artifact(
            sender, [nodes.us], f"from {sender.node.node_id}".encode(), artifact_id=art_id
        )
        name = "uk" if sender is nodes.uk else "ca"
        r = await _post(nodes, name, "/federation/v1/inbox", line + b"\n" + ciphertext,
                        DELIVERY_TYPE)  # fmt: skip
        assert r.status_code == 201, r.text
    with nodes.us.node.db.session() as session, pytest.raises(ConflictError) as ambiguous:
        get_artifact(session, art_id)
    assert f"{art_id}@uk-aisi" in ambiguous.value.message
    assert f"{art_id}@ca-aisi" in ambiguous.value.message


def test_the_migration_scopes_existing_rows_to_their_origin(db_url: str) -> None:
    """Rows written before 0006 get the (id, origin) key, and their references their origin."""
    cfg = _alembic_config(db_url)
    engine = sa.create_engine(db_url)
    try:
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "0005")
        now = datetime.now(UTC)
        columns = dict.fromkeys(
            ("title", "tlp", "topics", "purposes", "recipients", "sha256", "header_sha256",
             "manifest", "policy_ref", "obligations"), "x",
        )  # fmt: skip
        base = {**columns, "created_at": now, "recorded_at": now, "size": 1, "ciphertext_size": 1}
        with engine.begin() as conn:
            art = sa.table(
                "artifacts",
                *(sa.column(c) for c in (*base, "id", "direction", "origin", "sender",
                                          "upstream_id", "upstream_origin")),
            )  # fmt: skip
            conn.execute(
                art.insert(),
                [
                    {**base, "id": "art_a", "direction": "received", "origin": "uk-aisi",
                     "sender": "uk-aisi", "upstream_id": None, "upstream_origin": None},
                    {**base, "id": "art_b", "direction": "sent", "origin": "us-aisi",
                     "sender": "us-aisi", "upstream_id": "art_a", "upstream_origin": "uk-aisi"},
                ],
            )  # fmt: skip
            out = sa.table(
                "outbox",
                *(sa.column(c) for c in ("partner", "kind", "artifact_id", "payload", "state",
                                          "attempts", "created_at", "next_attempt_at")),
            )  # fmt: skip
            conn.execute(
                out.insert(),
                [
                    {"partner": "ca-aisi", "kind": "deliver", "artifact_id": "art_b",
                     "payload": "{}", "state": "pending", "attempts": 0, "created_at": now,
                     "next_attempt_at": now},
                    {"partner": "uk-aisi", "kind": "notice", "artifact_id": "art_a",
                     "payload": '{"type": "access"}', "state": "pending", "attempts": 0,
                     "created_at": now, "next_attempt_at": now},
                    {"partner": "uk-aisi", "kind": "descriptor", "artifact_id": "f" * 64,
                     "payload": "{}", "state": "pending", "attempts": 0, "created_at": now,
                     "next_attempt_at": now},
                ],
            )  # fmt: skip
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")
        assert sa.inspect(engine).get_pk_constraint("artifacts")["constrained_columns"] == [
            "id",
            "origin",
        ]
        with engine.connect() as conn:
            upstream = conn.execute(
                sa.text("SELECT upstream_from FROM artifacts WHERE id = 'art_b'")
            ).scalar_one()
            origins = {
                r[0]: r[1]
                for r in conn.execute(sa.text("SELECT kind, artifact_origin FROM outbox"))
            }
        assert upstream == "uk-aisi"
        assert origins == {"deliver": "us-aisi", "notice": "uk-aisi", "descriptor": None}
        # Another origin may now hold the same id.
        with engine.begin() as conn:
            conn.execute(
                art.insert(),
                [{**base, "id": "art_a", "direction": "received", "origin": "ca-aisi",
                  "sender": "ca-aisi", "upstream_id": None, "upstream_origin": None}],
            )  # fmt: skip
        with engine.begin() as conn, pytest.raises(IntegrityError):
            conn.execute(
                art.insert(),
                [{**base, "id": "art_a", "direction": "received", "origin": "ca-aisi",
                  "sender": "ca-aisi", "upstream_id": None, "upstream_origin": None}],
            )  # fmt: skip
    finally:
        engine.dispose()
