"""The replay (nonce) cache of signed federation requests: one bulkhead per partner key.

Every accepted RFC 9421 nonce is stored in ``seen_nonces`` (the database, so a replay is refused
by every replica) under the signing key's fingerprint. The cache is bounded **per key**
(``nonce_cache_size`` nonces each): a partner that fills its own room is refused with 429
``nonce-cache`` until expired nonces are purged, and no other partner notices. A live nonce is
never forgotten to make room (that would reopen a replay window). Only the pinned partners'
current keys reach this module (``signing.verify_incoming`` resolves nothing else), so the
number of rooms is bounded by the number of partners.

Callers store a nonce only once the request's signature verified and the partner's rate limit
let it through (``signing.verify_incoming``'s ``admit``): a request refused for any reason
spends no room.

This module does not verify signatures, rate-limit, or decide which keys are trusted.
"""

from __future__ import annotations

import threading
import time
import weakref
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, func, select

from service.db import Database
from service.errors import RateLimitedError
from service.models import SeenNonce
from service.settings import Settings

__all__ = ["MAX_NONCE_CHARS", "check_nonce_room", "forget_expired", "remember_nonce"]

MAX_NONCE_CHARS = 128  # characters of one nonce (the column's size)
RECOUNT_SECONDS = 1.0  # seconds: how stale this process's count of a key's nonces may be


def _held(session: Session, keyid: str) -> int:
    query = select(func.count()).select_from(SeenNonce).where(SeenNonce.keyid == keyid)
    return int(session.exec(query).one())


def check_nonce_room(session: Session, settings: Settings, *, keyid: str, partner: str) -> None:
    """Refuse a new nonce for ``keyid`` when its room already holds ``nonce_cache_size``."""
    if _held(session, keyid) >= settings.nonce_cache_size:
        raise RateLimitedError(
            f"the replay cache of {partner} is full ({settings.nonce_cache_size} nonces per "
            "partner, ENTENTE_NONCE_CACHE_SIZE); retry once expired nonces are purged",
            reason="nonce-cache",
            retry_after=settings.signature_max_age_seconds,
        )


@dataclass
class _Room:
    """How full one key's room is, without counting its rows on every signed request.

    The rows are counted when this process has not looked for ``RECOUNT_SECONDS``, and on every
    request once the count this process knows (the last count plus its own inserts since) is
    within a tenth of the bound: near the bound every request is counted, so a full room is
    refused exactly. Far below it, other replicas' inserts are seen up to ``RECOUNT_SECONDS``
    late, so with several replicas a room may pass its bound by what they accept in that time.
    """

    known: int | None = None  # rows at the last count
    added: int = 0  # nonces this process stored since
    counted_at: float = 0.0  # monotonic seconds
    lock: threading.Lock = field(default_factory=threading.Lock)

    def check(self, session: Session, settings: Settings, keyid: str, partner: str) -> None:
        cap = settings.nonce_cache_size
        with self.lock:
            estimate = None if self.known is None else self.known + self.added
            stale = time.monotonic() - self.counted_at > RECOUNT_SECONDS
        if estimate is not None and not stale and estimate < cap - max(1, cap // 10):
            return
        held = _held(session, keyid)
        with self.lock:
            self.known, self.added, self.counted_at = held, 0, time.monotonic()
        if held >= cap:
            check_nonce_room(session, settings, keyid=keyid, partner=partner)

    def stored(self) -> None:
        with self.lock:
            self.added += 1


class _Rooms:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.by_key: dict[str, _Room] = {}

    def get(self, keyid: str) -> _Room:
        with self.lock:
            room = self.by_key.get(keyid)
            if room is None:
                room = self.by_key[keyid] = _Room()
            return room

    def forget(self) -> None:
        with self.lock:
            self.by_key.clear()


_rooms: weakref.WeakKeyDictionary[Database, _Rooms] = weakref.WeakKeyDictionary()
_rooms_lock = threading.Lock()


def _rooms_of(db: Database) -> _Rooms:
    with _rooms_lock:
        rooms = _rooms.get(db)
        if rooms is None:
            rooms = _rooms[db] = _Rooms()
        return rooms


def remember_nonce(
    db: Database, settings: Settings, *, keyid: str, partner: str, nonce: str, now: datetime
) -> bool:
    """Store ``nonce`` in ``keyid``'s room; True when it was already there (a replay).

    Raises :class:`RateLimitedError` (429 ``nonce-cache``) when the room is full.
    """
    room = _rooms_of(db).get(keyid)
    try:
        with db.session() as session:
            room.check(session, settings, keyid, partner)  # bounded: refuse rather than forget
            session.execute(sa.insert(SeenNonce).values(keyid=keyid, nonce=nonce, seen_at=now))
    except IntegrityError:
        return True
    room.stored()
    return False


def forget_expired(db: Database, settings: Settings, *, now: datetime) -> int:
    """Forget nonces older than any signature that could still be accepted; how many."""
    horizon = now - timedelta(
        seconds=settings.signature_max_age_seconds + 2 * settings.clock_skew_seconds
    )
    with db.session() as session:
        result = session.execute(sa.delete(SeenNonce).where(col(SeenNonce.seen_at) < horizon))
    _rooms_of(db).forget()
    return int(getattr(result, "rowcount", 0) or 0)
