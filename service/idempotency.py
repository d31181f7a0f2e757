"""Idempotency keys: a retried share answers its first result instead of sharing twice.

The IETF httpapi draft *The Idempotency-Key HTTP Header Field* lets a client send a unique key
with a non-idempotent request (here ``POST /v1/artifacts`` and ``POST /v1/artifacts/{id}/share``)
and retry it safely. A key belongs to one principal (a token: one token's key never answers
another's request) and names one request, identified by its *fingerprint*: the SHA-256 of the
principal, the route and its parameters, and the whole body (:func:`fingerprint`).

1. :func:`claim` looks the key up. Unknown, it commits a ``pending`` row for this request (a
   :class:`Claim`); a row whose first request is still running (its lease is alive) is a 409
   (:class:`~service.errors.IdempotencyKeyInFlightError`, the draft's 2.6); a ``done`` row is
   a :class:`Replay` of the first result, which the caller answers once the fingerprints match
   (else a 422, :class:`~service.errors.IdempotencyKeyReusedError`).
2. While the request runs, a thread of the process renews the claim's lease
   (``idempotency_lease_seconds``), so a request that died (a crashed replica) frees its key
   after one lease, and a retry then takes the key over. Renewal never waits for a row that a
   share's transaction holds (:meth:`_Leases.renew`): it cannot deadlock with a group commit.
3. The share's own transaction settles the claim (:meth:`Claim.recorder`, run through
   ``service.commits.GroupCommit.write``'s ``within``): the row becomes ``done`` with the
   result's status, body and ``Location``, or, if another request took the key over meanwhile,
   the update matches nothing and the share's transaction fails: a crash never leaves a share
   without its key, nor a key without its share, and two requests never both share.
4. A request that fails or is refused releases its claim (:meth:`Claim.release`): only a result
   is remembered, so a retry is decided afresh. Results expire ``idempotency_ttl_seconds``
   after they were recorded; :func:`purge_expired` (the node's periodic purge) deletes them.

This module neither parses the header nor shapes responses (``service.api.idempotent``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
import threading
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TypeVar

import sqlalchemy as sa

from service.db import Database
from service.errors import ConflictError, IdempotencyKeyInFlightError
from service.models import IdempotencyKey
from service.node import Node
from service.tokens import Principal

__all__ = ["KEYS", "Claim", "Replay", "Result", "claim", "fingerprint", "purge_expired"]

log = logging.getLogger("entente.idempotency")

KEYS: sa.Table = IdempotencyKey.__table__  # type: ignore[attr-defined]
T = TypeVar("T")


@dataclass(frozen=True)
class Result:
    """A response worth answering again: its status, its JSON body, its ``Location``."""

    status: int
    body: bytes
    location: str | None = None


@dataclass(frozen=True)
class Replay:
    """A key whose first request finished: its fingerprint and result."""

    fingerprint: str | None
    result: Result

    def matches(self, fingerprint: str) -> bool:
        return self.fingerprint == fingerprint


def fingerprint(
    *, principal: Principal, route: str, params: Mapping[str, str], body_sha256: str
) -> str:
    """What makes two requests the same: the principal, the route (method and template), its
    parameters and the SHA-256 of the whole body, as the SHA-256 of their canonical JSON."""
    doc = {"principal": principal.token_id, "route": route, "params": dict(params),
           "body_sha256": body_sha256}  # fmt: skip
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


class Claim:
    """A key held by the request that runs now (``pending``), until it is settled or released."""

    def __init__(self, node: Node, *, principal: Principal, key: str, claim: str) -> None:
        self._node = node
        self._where = sa.and_(
            KEYS.c.principal == principal.token_id,
            KEYS.c.idempotency_key == key,
            KEYS.c.claim == claim,
            KEYS.c.state == "pending",
        )
        self.id = claim
        self.fingerprint: str | None = None  # known once the whole body has been read
        self.result: Result | None = None  # set when settled (in the share's transaction)

    def settle(self, conn: sa.Connection, result: Result) -> None:
        """Record ``result`` as the key's answer, in the caller's transaction; raises (so that
        the transaction fails) when this request no longer holds the key."""
        if self.fingerprint is None:  # pragma: no cover - the caller reads the body first
            raise RuntimeError("an idempotency key settled before its request was read")
        now = self._node.now()
        done = conn.execute(
            sa.update(KEYS)
            .where(self._where)
            .values(
                state="done",
                fingerprint=self.fingerprint,
                status=result.status,
                response=result.body.decode("utf-8"),
                location=result.location,
                expires_at=now + timedelta(seconds=self._node.settings.idempotency_ttl_seconds),
            )
        )
        if done.rowcount != 1:
            raise ConflictError(
                "another request took this Idempotency-Key over while this one ran (it held "
                "the key longer than its lease); nothing was shared by this request",
                reason="idempotency-key-lost",
            )
        self.result = result

    def recorder(self, render: Callable[[T], Result]) -> Callable[[sa.Connection, T], None]:
        """A hook for the domain's transaction: render the row it commits, then settle."""

        def record(conn: sa.Connection, row: T) -> None:
            self.settle(conn, render(row))

        return record

    def release(self) -> None:
        """Forget the key (the request failed or was refused): a retry is decided afresh."""
        try:
            with self._node.db.engine.begin() as conn:
                conn.execute(sa.delete(KEYS).where(self._where))
        except Exception:  # its lease lapses anyway
            log.warning("could not release an idempotency key; it lapses with its lease")

    def stop(self) -> None:
        """Stop renewing the lease (the request is over, whatever its outcome)."""
        _leases(self._node).drop(self.id)


def claim(node: Node, *, principal: Principal, key: str, route: str) -> Claim | Replay:
    """Take ``key`` for this request (a :class:`Claim`), or find its first result (a
    :class:`Replay`); raises :class:`IdempotencyKeyInFlightError` while its first request
    runs."""
    settings = node.settings
    pk = sa.and_(KEYS.c.principal == principal.token_id, KEYS.c.idempotency_key == key)
    for _ in range(3):
        now = node.now()
        new = secrets.token_hex(16)
        values = {
            "claim": new, "state": "pending", "route": route[:300], "fingerprint": None,
            "status": None, "response": None, "location": None, "created_at": now,
            "lease_until": now + timedelta(seconds=settings.idempotency_lease_seconds),
            "expires_at": now + timedelta(seconds=settings.idempotency_ttl_seconds),
        }  # fmt: skip
        with node.db.engine.connect() as conn:
            row = conn.execute(sa.select(KEYS).where(pk)).first()
        try:
            with node.db.engine.begin() as conn:
                if row is None:
                    conn.execute(
                        sa.insert(KEYS),
                        [{"principal": principal.token_id, "idempotency_key": key, **values}],
                    )
                elif row.state == "done" and row.expires_at > now:
                    return Replay(row.fingerprint, Result(row.status, row.response.encode(),
                                                          row.location))  # fmt: skip
                elif row.state == "pending" and row.lease_until > now:
                    raise IdempotencyKeyInFlightError(
                        "a request with this Idempotency-Key is still being carried out: "
                        "retry once it has finished to receive its result",
                        retry_after=max(1, int((row.lease_until - now).total_seconds())),
                    )
                else:  # a result past its time, or a claim whose request died: take it over
                    taken = conn.execute(
                        sa.update(KEYS).where(pk, KEYS.c.claim == row.claim).values(**values)
                    )
                    if taken.rowcount != 1:
                        continue  # another request took it first: look again
        except sa.exc.IntegrityError:
            continue  # another request inserted it first: look again
        _leases(node).hold(new)
        return Claim(node, principal=principal, key=key, claim=new)
    raise IdempotencyKeyInFlightError(
        "requests with this Idempotency-Key are racing for it: retry in a moment", retry_after=1
    )


def purge_expired(node: Node) -> int:
    """Delete results past their time and claims whose requests died; how many rows."""
    now = node.now()
    with node.db.engine.begin() as conn:
        gone = conn.execute(
            sa.delete(KEYS).where(
                KEYS.c.expires_at <= now,
                sa.or_(KEYS.c.state == "done", KEYS.c.lease_until <= now),
            )
        )
    return int(gone.rowcount or 0)


# --- leases: renewed while their requests run ------------------------------------------------


class _Leases:
    """The claims of one database held by this process, renewed by one thread while any is
    held (every third of a lease), so that only a request that died loses its key."""

    def __init__(self, db: Database, *, seconds: float, clock: Callable[[], datetime]) -> None:
        self._db = db
        self._seconds = seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._held: set[str] = set()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def hold(self, claim_id: str) -> None:
        with self._lock:
            self._held.add(claim_id)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="entente-idempotency-leases", daemon=True
                )
                self._thread.start()

    def drop(self, claim_id: str) -> None:
        with self._lock:
            self._held.discard(claim_id)

    def _run(self) -> None:
        while True:
            self._wake.wait(self._seconds / 3)
            with self._lock:
                held = sorted(self._held)
                if not held:
                    self._thread = None
                    return
            try:
                self.renew(held)
            except Exception:
                log.warning("could not renew idempotency key leases", exc_info=True)

    def renew(self, held: list[str]) -> None:
        """Extend the leases of the ``held`` claims still pending, never waiting for a row.

        A claim's row is locked by the share's transaction that settles it (a group commit
        settles several, in its own order). Renewal takes the rows it can lock now and skips
        the others (PostgreSQL ``FOR UPDATE SKIP LOCKED``; SQLite has no row locks and renders
        none): one that waited for such a row while holding another could close a cycle with
        that transaction, a deadlock the database ends by failing one of them. A skipped row is
        being settled, so it needs no lease; one that stays pending is renewed next round."""
        until = self._clock() + timedelta(seconds=self._seconds)
        with self._db.engine.begin() as conn:
            free = list(
                conn.execute(
                    sa.select(KEYS.c.claim)
                    .where(KEYS.c.claim.in_(held), KEYS.c.state == "pending")
                    .with_for_update(skip_locked=True)
                ).scalars()
            )
            if free:
                conn.execute(
                    sa.update(KEYS)
                    .where(KEYS.c.claim.in_(free), KEYS.c.state == "pending")
                    .values(lease_until=until)
                )


_all_leases: weakref.WeakKeyDictionary[Database, _Leases] = weakref.WeakKeyDictionary()
_all_lock = threading.Lock()


def _leases(node: Node) -> _Leases:
    with _all_lock:
        leases = _all_leases.get(node.db)
        if leases is None:
            leases = _all_leases[node.db] = _Leases(
                node.db, seconds=node.settings.idempotency_lease_seconds, clock=node.now
            )
        return leases
