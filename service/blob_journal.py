"""The journal of blobs in flight (the ``blobs_in_flight`` table), so that no sweep walks the store.

A blob and the row that refers to it cannot be written atomically together: the blob goes to the
store first, the row commits second, and a crash in between leaves a blob nobody refers to. The
journal makes that gap visible without listing the store:

1. before a blob appears under its content address the store calls :meth:`DbBlobJournal.intend`,
   which commits a row naming the digest (through the group commit, so the intents of shares
   running at the same time share one transaction); a receiver placing the blobs of a whole feed
   page or batch delivery intends them all at once, then places each (``place(journaled=True)``);
2. the transaction that writes the row referring to the blob deletes the journal row in the same
   transaction (:data:`SETTLE`, for ``service.commits.GroupCommit.write``'s ``deletes``);
3. a blob deleted by the store (an aborted share, a revocation, retention) is forgotten
   (:meth:`DbBlobJournal.forget`); a deletion that must survive a crash between its transaction
   and the blob's removal writes a row in that transaction (:func:`record_deletions`).

A write that lasts long also keeps a *claim* here, a row ``tmp:<token>`` naming its temporary
file or upload (``service.blobs.Heartbeat``), whose ``since`` it moves forward while it writes
(:meth:`DbBlobJournal.touch`): for a claim, ``since`` means "last seen alive".

What is left after a crash is a handful of rows, which the start-up sweep
(``service.artifacts.sweep``) checks once they are older than its grace period.

The journal's times are the wall clock of the process (``clock``), not the node's domain clock:
they bound how long a write may be in flight, on any replica.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session

from service.commits import group_commit
from service.db import Database
from service.models import BlobInFlight

__all__ = ["IN_FLIGHT", "SETTLE", "DbBlobJournal", "deletion_rows", "record_deletions"]

IN_FLIGHT: sa.Table = BlobInFlight.__table__  # type: ignore[attr-defined]
SETTLE: sa.Column[Any] = IN_FLIGHT.c.digest  # ``deletes={SETTLE: [digest]}``: referenced now


def _at(clock: Callable[[], float]) -> datetime:
    return datetime.fromtimestamp(clock(), UTC)


class DbBlobJournal:
    """:class:`service.blobs.BlobJournal` on the node's database."""

    def __init__(self, db: Database, *, clock: Callable[[], float] = time.time) -> None:
        self._db = db
        self._clock = clock

    def intend(self, *digests: str) -> None:
        """Commit a row for each of ``digests``, in one transaction (returns once committed)."""
        if digests:
            since = _at(self._clock)
            rows = [{"digest": digest, "since": since} for digest in digests]
            group_commit(self._db).write({IN_FLIGHT: rows})

    def touch(self, name: str, /) -> None:
        """Mark the claim ``name`` alive now (its row is made on the first touch)."""
        since = _at(self._clock)
        with self._db.engine.begin() as conn:
            moved = conn.execute(
                sa.update(IN_FLIGHT).where(IN_FLIGHT.c.digest == name).values(since=since)
            )
            if moved.rowcount == 0:
                conn.execute(sa.insert(IN_FLIGHT).values(digest=name, since=since))

    def forget(self, digests: Sequence[str], /) -> None:
        """Delete the rows of blobs the store has just deleted."""
        if not digests:
            return
        with self._db.engine.begin() as conn:
            conn.execute(sa.delete(IN_FLIGHT).where(IN_FLIGHT.c.digest.in_(list(digests))))


def deletion_rows(
    digests: Sequence[str | None], *, clock: Callable[[], float] = time.time
) -> list[dict[str, Any]]:
    """Journal rows for ``digests``, to insert in the transaction that stops referring to them,
    so that a crash before the store deletes them leaves rows for the sweep."""
    since = _at(clock)
    return [{"digest": digest, "since": since} for digest in digests if digest]


def record_deletions(
    session: Session, digests: Sequence[str | None], *, clock: Callable[[], float] = time.time
) -> None:
    """:func:`deletion_rows`, added to ``session`` (whose commit is the caller's)."""
    for values in deletion_rows(digests, clock=clock):
        session.add(BlobInFlight(**values))
