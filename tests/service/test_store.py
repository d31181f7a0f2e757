"""Tokens, partners and migrations against SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlmodel import select

from crypto.descriptor import NodeDescriptor, sign_descriptor
from crypto.keys import SigningKey, format_fingerprint
from service.db import Database, open_database
from service.errors import AuthError, ConflictError, DatabaseError, NotFoundError, PartnerError
from service.models import AuditEntry, PartnerKey
from service.partners import add_partner, list_partners, remove_partner, rotate_partner
from service.tokens import Role, authenticate, create_token, revoke_token

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


@pytest.fixture
def db(db_url: str) -> Database:
    database = open_database(db_url, migrate=True)
    yield database  # type: ignore[misc]
    database.dispose()


def _descriptor_bytes(key: SigningKey, node_id: str = "us-aisi") -> bytes:
    desc = NodeDescriptor(
        node_id=node_id,
        name="US AI Safety Institute",
        url="https://us.example",
        signing_key=key.public,
        age_recipient="age1example",
        created=NOW,
        expires=NOW + timedelta(days=30),
    )
    return sign_descriptor(desc, key=key).to_bytes()


def _kinds(db: Database) -> list[str]:
    with db.session() as s:
        return [e.kind for e in s.exec(select(AuditEntry).order_by(AuditEntry.id))]  # type: ignore[arg-type]


def test_migrations_are_idempotent_and_at_head(db: Database) -> None:
    db.upgrade()
    assert db.current_revision() == db.head_revision()


def test_token_lifecycle(db: Database) -> None:
    with db.session() as s:
        row, secret = create_token(s, role=Role.READER, name="alice", now=NOW, actor="test")
    assert secret.startswith("ent_")
    assert row.token_hash not in secret
    with db.session() as s:
        principal = authenticate(s, secret)
    assert principal.role is Role.READER
    assert principal.name == "alice"
    with db.session() as s:
        revoke_token(s, token_id=row.id, now=NOW, actor="test")
    with db.session() as s, pytest.raises(AuthError, match="revoked"):
        authenticate(s, secret)
    assert _kinds(db) == ["token.created", "token.revoked"]


@pytest.mark.parametrize(
    ("presented", "reason"),
    [
        (None, "missing"),
        ("", "missing"),
        ("Bearer x", "malformed"),
        ("ent_00000000_" + "A" * 43, "unknown"),
    ],
)
def test_authenticate_refuses_bad_tokens(db: Database, presented: str | None, reason: str) -> None:
    with db.session() as s, pytest.raises(AuthError) as info:
        authenticate(s, presented)
    assert info.value.extra["reason"] == reason


def test_stored_token_hash_is_not_the_token(db: Database) -> None:
    with db.session() as s:
        row, secret = create_token(s, role=Role.ADMIN, name="ops", now=NOW, actor="test")
    assert secret not in row.token_hash
    assert len(row.token_hash) == 64


def test_partner_pinning(db: Database) -> None:
    key = SigningKey(b"\x01" * 32)
    raw = _descriptor_bytes(key)
    with db.session() as s:
        add_partner(
            s,
            descriptor_bytes=raw,
            fingerprint=format_fingerprint(key.fingerprint),
            own_node_id="uk-aisi",
            now=NOW,
            actor="test",
        )
    with db.session() as s:
        [row] = list_partners(s)
        assert row.node_id == "us-aisi"
        assert row.fingerprint == key.fingerprint
    with db.session() as s, pytest.raises(ConflictError, match="already pinned"):
        add_partner(
            s,
            descriptor_bytes=raw,
            fingerprint=key.fingerprint,
            own_node_id="uk-aisi",
            now=NOW,
            actor="test",
        )
    with db.session() as s:
        add_partner(
            s,
            descriptor_bytes=raw,
            fingerprint=key.fingerprint,
            own_node_id="uk-aisi",
            now=NOW,
            actor="test",
            replace=True,
        )
    with db.session() as s:
        remove_partner(s, node_id="us-aisi", now=NOW, actor="test")
    with db.session() as s:
        assert list_partners(s) == []
    assert _kinds(db) == ["partner.added", "partner.replaced", "partner.removed"]


@pytest.mark.parametrize(
    ("fingerprint_of", "now", "raw", "message"),
    [
        ("other", NOW, None, "fingerprint mismatch"),
        ("self", NOW + timedelta(days=31), None, "expired"),
        ("self", NOW, b"{not json", "not a node descriptor"),
        (
            "self",
            NOW,
            b'{"payload": "e30=", "payloadType": "x", "signatures": [{"sig": "AA=="}]}',
            "wrong payloadType",
        ),
        ("garbage", NOW, None, "64 hexadecimal"),
    ],
)
def test_partner_add_refusals_change_nothing(
    db: Database, fingerprint_of: str, now: datetime, raw: bytes | None, message: str
) -> None:
    key = SigningKey(b"\x02" * 32)
    fp = {"self": key.fingerprint, "other": SigningKey(b"\x03" * 32).fingerprint, "garbage": "xyz"}
    with db.session() as s, pytest.raises(PartnerError, match=message):
        add_partner(
            s,
            descriptor_bytes=raw if raw is not None else _descriptor_bytes(key),
            fingerprint=fp[fingerprint_of],
            own_node_id="uk-aisi",
            now=now,
            actor="test",
        )
    with db.session() as s:
        assert list_partners(s) == []
    assert _kinds(db) == []


def test_partner_cannot_be_self(db: Database) -> None:
    key = SigningKey(b"\x04" * 32)
    with db.session() as s, pytest.raises(PartnerError, match="own"):
        add_partner(
            s,
            descriptor_bytes=_descriptor_bytes(key, node_id="uk-aisi"),
            fingerprint=key.fingerprint,
            own_node_id="uk-aisi",
            now=NOW,
            actor="test",
        )


def test_partner_key_rotation_keeps_old_key(db: Database) -> None:
    old, new = SigningKey(b"\x05" * 32), SigningKey(b"\x06" * 32)
    with db.session() as s:
        add_partner(
            s,
            descriptor_bytes=_descriptor_bytes(old),
            fingerprint=old.fingerprint,
            own_node_id="uk-aisi",
            now=NOW,
            actor="test",
        )
    rotated = NodeDescriptor(
        node_id="us-aisi",
        name="US AI Safety Institute",
        url="https://us.example",
        signing_key=new.public,
        age_recipient="age1new",
        created=NOW,
        expires=NOW + timedelta(days=30),
        previous=old.fingerprint,
    )
    with db.session() as s:
        rotate_partner(
            s,
            descriptor_bytes=sign_descriptor(rotated, key=new, previous_key=old).to_bytes(),
            now=NOW,
            actor="test",
        )
    with db.session() as s:
        keys = {k.fingerprint: k for k in s.exec(select(PartnerKey))}
        [row] = list_partners(s)
    assert row.fingerprint == new.fingerprint
    assert row.age_recipient == "age1new"
    assert keys[old.fingerprint].retired_at is not None
    assert keys[new.fingerprint].retired_at is None
    # A rotation signed only by the new key (an impostor) is refused.
    impostor = SigningKey(b"\x07" * 32)
    fake = NodeDescriptor(
        node_id="us-aisi",
        name="x",
        url="https://evil.example",
        signing_key=impostor.public,
        age_recipient="age1evil",
        created=NOW,
        expires=NOW + timedelta(days=30),
    )
    with db.session() as s, pytest.raises(PartnerError):
        rotate_partner(
            s, descriptor_bytes=sign_descriptor(fake, key=impostor).to_bytes(), now=NOW, actor="t"
        )


def test_unreachable_database_is_a_clear_error() -> None:
    with pytest.raises(DatabaseError, match=r"cannot connect.*127\.0\.0\.1:1"):
        open_database("postgresql+psycopg://nobody:secret@127.0.0.1:1/none")
    with pytest.raises(DatabaseError) as info:
        open_database("postgresql+psycopg://nobody:secret@127.0.0.1:1/none")
    assert "secret" not in info.value.message


def test_removing_unknown_partner_is_not_found(db: Database) -> None:
    with db.session() as s, pytest.raises(NotFoundError):
        remove_partner(s, node_id="nobody", now=NOW, actor="test")
