"""Bearer tokens for local users: created once, stored as SHA-256, revocable.

A token reads ``ent_<handle>_<secret>``: the handle (public, 8 hex) names it in listings and audit
events; the secret is 32 random bytes in base64url. Only SHA-256 of the whole token is stored; a
lookup hashes the presented token and finds its row, so no stored secret can be compared byte by
byte and leaked through timing.
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlmodel import Session, col, select

from service.audit.log import record
from service.errors import AuthError, NotFoundError, UsageError
from service.models import Token

__all__ = ["Principal", "Role", "authenticate", "create_token", "list_tokens", "revoke_token"]

_TOKEN_RE = re.compile(r"^ent_([0-9a-f]{8})_([A-Za-z0-9_-]{43})$")


class Role(StrEnum):
    PUBLISHER = "publisher"
    READER = "reader"
    AUDITOR = "auditor"
    ADMIN = "admin"
    METRICS = "metrics"  # reads /metrics only (the Prometheus scraper)


@dataclass(frozen=True)
class Principal:
    """Who is calling: a token's handle, name and role."""

    token_id: str
    name: str
    role: Role

    @property
    def actor(self) -> str:
        return f"{self.role.value}:{self.name} ({self.token_id})"


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def parse_role(value: str) -> Role:
    try:
        return Role(value)
    except ValueError:
        roles = ", ".join(r.value for r in Role)
        raise UsageError(f"unknown role {value!r}; choose one of {roles}") from None


def create_token(
    session: Session, *, role: Role, name: str, now: datetime, actor: str
) -> tuple[Token, str]:
    """Create a token; returns the row and the secret token string (shown once)."""
    name = name.strip()
    if not name or len(name) > 200:
        raise UsageError("a token needs a name of 1 to 200 characters")
    handle = secrets.token_hex(4)
    secret = base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode("ascii")
    token = f"ent_{handle}_{secret}"
    row = Token(
        id=f"tok_{handle}", name=name, role=role.value, token_hash=_hash(token), created_at=now
    )
    session.add(row)
    record(
        session,
        kind="token.created",
        actor=actor,
        detail={"token_id": row.id, "name": name, "role": role.value},
        now=now,
    )
    return row, token


def list_tokens(session: Session) -> list[Token]:
    return list(session.exec(select(Token).order_by(Token.created_at)))  # type: ignore[arg-type]


def revoke_token(session: Session, *, token_id: str, now: datetime, actor: str) -> Token:
    row = session.get(Token, token_id)
    if row is None:
        raise NotFoundError(f"no token {token_id!r}")
    if row.revoked_at is None:
        row.revoked_at = now
        session.add(row)
        record(
            session,
            kind="token.revoked",
            actor=actor,
            detail={"token_id": row.id, "name": row.name, "role": row.role},
            now=now,
        )
    return row


# Built once (SQLAlchemy memoizes its cache key): every authenticated request runs it, and
# building and loading a Token object cost several times the lookup itself.
_BY_HASH = sa.select(col(Token.id), col(Token.name), col(Token.role), col(Token.revoked_at)).where(
    col(Token.token_hash) == sa.bindparam("token_hash")
)


def authenticate(session: Session | Connection, presented: str | None) -> Principal:
    """Resolve an ``Authorization: Bearer`` value to a principal or raise :class:`AuthError`."""
    if not presented:
        raise AuthError("missing bearer token", reason="missing")
    if not _TOKEN_RE.match(presented):
        raise AuthError("malformed bearer token", reason="malformed")
    row = session.execute(_BY_HASH, {"token_hash": _hash(presented)}).first()
    if row is None:
        raise AuthError("unknown bearer token", reason="unknown")
    token_id, name, role, revoked_at = row
    if revoked_at is not None:
        raise AuthError("this token was revoked", reason="revoked", token_id=token_id)
    return Principal(token_id=token_id, name=name, role=Role(role))
