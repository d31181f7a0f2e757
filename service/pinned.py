"""The pinned partners as ``entente seal``, ``open`` and ``verify`` need them: read, never written.

A file command needs two facts about partners: the age recipients of the ones it seals to
(:func:`pinned_parties`) and the key sets a partner has signed with (:func:`pinned_keysets`,
the same rows as :func:`service.partners.partner_keysets`). On the default database, a SQLite
file in the home whose schema is the one this code was written for
(:data:`service.migrations.SCHEMA_REVISION`), they are read with the standard library's
``sqlite3``, in a read-only transaction; the ORM, Alembic and SQLAlchemy are not imported,
which is most of a file command's start-up time and memory. Anything else (PostgreSQL, a URL
with options, a database that does not exist yet or needs migrating) goes through the database
layer as every other command does (``service.db``, migrated first), imported only then.

This module does not pin, check or change partners (``service.partners`` does) and does not
audit: reading the keys of what is already pinned is not an action.
"""

from __future__ import annotations

import base64
import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path

from crypto.keys import VerifyKey
from crypto.keyset import KeySet
from crypto.mldsa import MLDSAVerifyKey
from service.errors import DatabaseError
from service.migrations import SCHEMA_REVISION

__all__ = ["PinnedParty", "pinned_keysets", "pinned_parties", "sqlite_path"]

_SQLITE = "sqlite:///"


@dataclass(frozen=True)
class PinnedParty:
    """A pinned partner as a party to a sealed file (``service.artifacts.parties.Party``)."""

    node_id: str
    age_recipient: str
    pq_recipient: str | None


def sqlite_path(url: str) -> Path | None:
    """The file of a plain ``sqlite:///PATH`` URL, or None for any other URL (PostgreSQL, a
    driver name, query options, an in-memory or URI database): those need the full layer."""
    if not url.startswith(_SQLITE) or "?" in url:
        return None
    path = url[len(_SQLITE) :]
    if not path or path == ":memory:" or path.startswith("file:"):
        return None
    return Path(path)


@contextmanager
def _light(url: str) -> Iterator[sqlite3.Connection | None]:
    """A read-only transaction on the home's SQLite file when it is at the current schema;
    None when the full database layer must answer instead."""
    path = sqlite_path(url)
    if path is None or not path.is_file():
        yield None
        return
    try:
        conn = sqlite3.connect(path, timeout=30, isolation_level=None)
    except sqlite3.Error:
        yield None  # the full layer reports it in its own words
        return
    with closing(conn):
        try:
            conn.execute("PRAGMA query_only=ON")
            conn.execute("BEGIN")  # one snapshot for every read below
            row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
        except sqlite3.Error:
            row = None  # not migrated yet: the full layer creates and migrates it
        if row is None or row[0] != SCHEMA_REVISION:
            yield None
            return
        try:
            yield conn
        except sqlite3.Error as exc:
            raise DatabaseError(f"reading the partners from {path} failed: {exc}") from None


def pinned_parties(url: str, node_ids: Iterable[str]) -> dict[str, PinnedParty]:
    """The pinned partners among ``node_ids``, by node id (the ones not pinned are absent)."""
    wanted = list(dict.fromkeys(node_ids))
    with _light(url) as conn:
        if conn is not None:
            found: dict[str, PinnedParty] = {}
            for node_id in wanted:
                row = conn.execute(
                    "SELECT node_id, age_recipient, pq_recipient FROM partners WHERE node_id = ?",
                    (node_id,),
                ).fetchone()
                if row is not None:
                    found[node_id] = PinnedParty(str(row[0]), str(row[1]), _text(row[2]))
            return found
    return _full_parties(url, wanted)


def pinned_keysets(url: str, node_id: str) -> list[KeySet]:
    """Every key set (current and retired) partner ``node_id`` has signed with; empty when it
    is not pinned."""
    with _light(url) as conn:
        if conn is not None:
            rows = conn.execute(
                "SELECT public_key, mldsa_key FROM partner_keys WHERE node_id = ?", (node_id,)
            ).fetchall()
            return [_keyset(str(public), _text(mldsa)) for public, mldsa in rows]
    return _full_keysets(url, node_id)


def _text(value: object) -> str | None:
    return None if value is None else str(value)


def _keyset(public_key: str, mldsa_key: str | None) -> KeySet:
    return KeySet(
        VerifyKey(base64.b64decode(public_key)),
        None if mldsa_key is None else MLDSAVerifyKey(base64.b64decode(mldsa_key)),
    )


# --- the full database layer (imported only here: SQLAlchemy, the ORM and Alembic) -------------


def _full_parties(url: str, node_ids: list[str]) -> dict[str, PinnedParty]:
    from service.db import open_database
    from service.models import Partner

    db = open_database(url, migrate=True)
    try:
        with db.session() as session:
            rows = [session.get(Partner, node_id) for node_id in node_ids]
            return {
                r.node_id: PinnedParty(r.node_id, r.age_recipient, r.pq_recipient)
                for r in rows
                if r is not None
            }
    finally:
        db.dispose()


def _full_keysets(url: str, node_id: str) -> list[KeySet]:
    from service.db import open_database
    from service.partners import partner_keysets

    db = open_database(url, migrate=True)
    try:
        with db.session() as session:
            return partner_keysets(session, node_id)
    finally:
        db.dispose()
