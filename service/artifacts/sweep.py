"""Start-up housekeeping of the blob store: after a crash, remove what no transaction owns.

A share or a delivery commits its blob first and its database row second. A process that dies
between the two (or while still writing) leaves:

- a temporary file under ``<blobs>/tmp`` (a write that never finished), or
- a content-addressed blob that no artifact row refers to (the transaction never committed),
  nor a share waiting for its second approver (``service.artifacts.approvals``).

:func:`sweep` removes both once they are older than ``blob_orphan_grace_seconds``: younger ones
may be another replica's writes in flight, whose rows are a moment away. It never deletes a
blob an artifact row refers to, and it never "repairs" a row whose blob is missing: that is
counted and logged as an error for the operator, since no sweep can bring the ciphertext back.

The app runs it once at start, in the background (:func:`sweep_in_background`): the node answers
at once, and the grace period keeps the sweep away from anything written since.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from itertools import islice

from sqlmodel import col, select

from service.models import Approval, Artifact
from service.node import Node

__all__ = ["SweepReport", "sweep", "sweep_in_background"]

log = logging.getLogger("entente.maintenance")
_BATCH = 500  # digests looked up per query


@dataclass(frozen=True)
class SweepReport:
    temporary_removed: int
    orphans_removed: int
    missing_blobs: int  # artifact rows whose ciphertext is not in the store


def _batches(items: Iterable[str], size: int) -> Iterator[list[str]]:
    it = iter(items)
    while batch := list(islice(it, size)):
        yield batch


def sweep(node: Node, *, clock: Callable[[], float] = time.time) -> SweepReport:
    """Remove abandoned temporary files and unreferenced blobs older than the grace period."""
    grace = node.settings.blob_orphan_grace_seconds
    store = node.blobs
    temporary = store.clean_temporary(older_than_seconds=grace)
    cutoff = clock() - grace
    orphans = 0
    for batch in _batches(store.iter_digests(), _BATCH):
        with node.db.session() as session:
            referenced = set(
                session.exec(select(Artifact.blob).where(col(Artifact.blob).in_(batch)))
            ) | set(  # a share waiting for its second approver (service.artifacts.approvals)
                session.exec(
                    select(Approval.blob).where(
                        col(Approval.blob).in_(batch), Approval.state == "pending"
                    )
                )
            )
        for digest in batch:
            if digest in referenced:
                continue
            path = store.path_for(digest)
            try:
                if path.stat().st_mtime > cutoff:
                    continue  # young: possibly in flight
            except FileNotFoundError:
                continue
            # Re-check under the same rule right before deleting: a row may have just committed.
            with node.db.session() as session:
                if session.exec(select(Artifact.id).where(Artifact.blob == digest)).first():
                    continue
                if session.exec(
                    select(Approval.id).where(Approval.blob == digest, Approval.state == "pending")
                ).first():
                    continue
            store.delete(digest)
            orphans += 1
    missing = 0
    with node.db.session() as session:
        stored = session.exec(select(Artifact.blob).where(col(Artifact.blob).is_not(None)))
        for blob in stored:
            if blob is not None and not store.exists(blob):
                missing += 1
    report = SweepReport(temporary, orphans, missing)
    if temporary or orphans:
        log.warning(
            "blob store sweep: removed %d abandoned temporary file(s) and %d orphaned blob(s)",
            temporary,
            orphans,
        )
    if missing:
        log.error("blob store sweep: %d artifact(s) have no ciphertext in the store", missing)
    return report


async def sweep_in_background(node: Node) -> SweepReport | None:
    """:func:`sweep` on a worker thread; a failure is logged, never raised (it is housekeeping)."""
    import anyio

    try:
        return await anyio.to_thread.run_sync(sweep, node)
    except Exception:
        log.exception("blob store sweep failed")
        return None
