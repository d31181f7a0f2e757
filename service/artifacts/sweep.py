"""Start-up housekeeping of the blob store: after a crash, remove what no transaction owns.

A share or a delivery places its blob first and commits its database row second. A process that
dies between the two (or while still writing) leaves:

- a temporary file under ``<blobs>/tmp`` (or a temporary object or multipart upload under
  ``<prefix>/tmp/`` in an object store): a write that never finished, or
- a blob under its content address that no artifact row refers to (the transaction never
  committed), nor a share waiting for its second approver (``service.artifacts.approvals``).

The second kind is found without walking the store: every blob is journaled before it is placed
(``service.blob_journal``), and the journal row goes away in the transaction that makes the blob
referenced, or when the blob is deleted. :func:`sweep` reads only the journal rows older than
``blob_orphan_grace_seconds`` (younger ones may be another replica's writes in flight, whose rows
are a moment away) and, for each digest:

- referenced by an artifact or a pending approval: the row is dropped (the crash came after the
  commit); if the store lacks the blob it is counted and logged as an error for the operator,
  since no sweep can bring the ciphertext back, and the row is never "repaired";
- journaled again more recently (a new write of the same bytes in flight): the old row is
  dropped, the blob kept;
- otherwise the blob is deleted (after a last look for a referring row) with its rows.

A long write keeps a claim row ``tmp:<token>`` young while it writes (``service.blobs``): the
temporary file or upload of a claim younger than the grace is never removed, however old it
is; a claim older than the grace is a write that stopped, and its row is dropped.

Its store calls are one cleaning of the temporary area and, per old journal row, at most one
existence check or one deletion: the cost follows the crashes, not the size of the store.

The app runs it once at start, in the background (:func:`sweep_in_background`): the node answers
at once, and the grace period keeps the sweep away from anything written since.

What stops referring to a blob at run time (a revocation, a retention deletion, a delivery whose
transaction failed) deletes it with :func:`drop_unreferenced`, by the same notion of a reference:
byte-identical ciphertexts share one address, so a blob may hold the ciphertext of several rows.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session, col, select
from sqlmodel.sql.expression import SelectOfScalar

from service.blob_journal import IN_FLIGHT
from service.blobs import CLAIM
from service.db import DATABASE_UNAVAILABLE, say_unavailable
from service.models import Approval, Artifact, BlobInFlight
from service.node import Node

__all__ = ["SweepReport", "drop_unreferenced", "referring", "sweep", "sweep_in_background"]

log = logging.getLogger("entente.maintenance")
_BATCH = 500  # journal rows per round


@dataclass(frozen=True)
class SweepReport:
    temporary_removed: int
    orphans_removed: int
    missing_blobs: int  # journaled blobs an artifact row refers to that are not in the store
    settled: int = 0  # journal rows of blobs whose rows had committed (dropped, blob kept)


def referring(
    digests: Collection[str],
) -> tuple[SelectOfScalar[Any], SelectOfScalar[Any]]:
    """The queries of the digests among ``digests`` that an artifact row, or a pending approval
    (a share waiting for its second approver), refers to: each an index search
    (``ix_artifacts_blob``, ``ix_approvals_blob``), never a scan of the table."""
    wanted = list(digests)
    return (
        select(Artifact.blob).where(col(Artifact.blob).in_(wanted)),
        select(Approval.blob).where(col(Approval.blob).in_(wanted), Approval.state == "pending"),
    )


def _referenced(session: Session, digests: Collection[str]) -> set[str | None]:
    """The digests an artifact row or a pending approval refers to."""
    artifacts, pending = referring(digests)
    return set(session.exec(artifacts).all()) | set(session.exec(pending).all())


def drop_unreferenced(node: Node, digests: Iterable[str | None]) -> None:
    """Delete those of ``digests`` that no artifact row nor pending approval refers to, once the
    transaction that stopped referring to them has committed: another row may hold the same
    ciphertext (a partner can deliver, under its own id, the bytes of an artifact we hold).
    Should the database not answer, the blobs stay for the start-up sweep (they are journaled).
    """
    wanted = {digest for digest in digests if digest}
    if not wanted:
        return
    try:
        with node.db.session() as session:
            kept = _referenced(session, wanted)
    except DATABASE_UNAVAILABLE as exc:
        say_unavailable(log, exc, "deleting %d blob(s)", len(wanted), then="left to the sweep")
        return
    for digest in sorted(wanted - kept):
        node.blobs.delete(digest)


def sweep(node: Node, *, clock: Callable[[], float] = time.time) -> SweepReport:
    """Remove abandoned temporary files and the unreferenced blobs of journal rows older than
    the grace period; never lists the blobs of the store."""
    grace = node.settings.blob_orphan_grace_seconds
    store = node.blobs
    now = clock()
    cutoff = datetime.fromtimestamp(now - grace, UTC)
    alive = _live_claims(node, cutoff)
    temporary = store.clean_temporary(older_than_seconds=grace, alive=alive, now=now)
    orphans = missing = settled = 0
    after = 0
    while True:
        with node.db.session() as session:
            batch = session.exec(
                select(BlobInFlight)
                .where(col(BlobInFlight.since) <= cutoff, col(BlobInFlight.id) > after)
                .order_by(col(BlobInFlight.id))
                .limit(_BATCH)
            ).all()
            if not batch:
                break
            after = batch[-1].id or after
            rows: dict[str, list[int]] = {}
            stopped: list[int] = []  # claims of writes not seen alive within the grace
            for row in batch:
                if row.digest.startswith(CLAIM):
                    stopped.append(row.id or 0)
                else:
                    rows.setdefault(row.digest, []).append(row.id or 0)
            referenced = _referenced(session, rows)
            young = set(
                session.exec(
                    select(BlobInFlight.digest).where(
                        col(BlobInFlight.digest).in_(list(rows)), col(BlobInFlight.since) > cutoff
                    )
                ).all()
            )
        _drop(node, stopped, cutoff=cutoff)
        for digest, ids in rows.items():
            if digest in referenced or digest in young:
                if digest in referenced and not store.exists(digest):
                    missing += 1
                settled += 1
            else:
                # Re-check right before deleting: a row may have just committed.
                with node.db.session() as session:
                    if _referenced(session, [digest]):
                        settled += 1
                        _drop(node, ids)
                        continue
                store.delete(digest)
                orphans += 1
            _drop(node, ids)
    report = SweepReport(temporary, orphans, missing, settled)
    if temporary or orphans:
        log.warning(
            "blob store sweep: removed %d abandoned temporary file(s) and %d orphaned blob(s)",
            temporary,
            orphans,
        )
    if missing:
        log.error("blob store sweep: %d artifact(s) have no ciphertext in the store", missing)
    return report


def _live_claims(node: Node, cutoff: datetime) -> set[str]:
    """The tokens of the writes whose claim was touched after ``cutoff``."""
    with node.db.session() as session:
        names = session.exec(
            select(BlobInFlight.digest).where(
                col(BlobInFlight.digest).startswith(CLAIM), col(BlobInFlight.since) > cutoff
            )
        ).all()
    return {name.removeprefix(CLAIM) for name in names}


def _drop(node: Node, ids: list[int], *, cutoff: datetime | None = None) -> None:
    """Delete journal rows; with ``cutoff``, only those not touched since."""
    if not ids:
        return
    delete = sa.delete(IN_FLIGHT).where(IN_FLIGHT.c.id.in_(ids))
    if cutoff is not None:
        delete = delete.where(IN_FLIGHT.c.since <= cutoff)
    with node.db.engine.begin() as conn:
        conn.execute(delete)


async def sweep_in_background(node: Node) -> SweepReport | None:
    """:func:`sweep` on a worker thread; a failure is logged, never raised (it is housekeeping)."""
    import anyio

    try:
        return await anyio.to_thread.run_sync(sweep, node)
    except Exception:
        log.exception("blob store sweep failed")
        return None
