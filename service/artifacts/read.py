"""Reading an artifact at this node.

The node decrypts with its own identity and streams plaintext to the caller after checking
revocation, embargo, expiry and retention (the pure rules of ``read_rules``; a refusal is
audited here, once, as ``read.denied``) and the MOU policy (``enforce``); the read is audited
(and, where an ``inform`` obligation applies, an access notice to the origin is queued) before
the first byte is sent.
Plaintext never touches the disk.

This module does not shape the HTTP response (``service.api.artifacts``).
"""

from __future__ import annotations

import json
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass

from crypto.dsse import Envelope
from crypto.errors import CryptoError
from crypto.sealed import (
    open_sealed,
)
from service.artifacts.enforce import Facts, Refusal, enforce, first_rule, refuse
from service.artifacts.listing import get_artifact
from service.artifacts.read_rules import ReadFacts, check_readable
from service.artifacts.rows import json_list
from service.audit.log import record
from service.audit.refusals import mark_audited
from service.blobs import BlobStore
from service.errors import (
    EntenteError,
    NotFoundError,
    StoredArtifactCorruptError,
)
from service.models import Artifact, Outbox
from service.node import Node
from service.tokens import Principal

__all__ = ["ReadStream", "open_for_read", "plaintext_chunks"]


# --- read -------------------------------------------------------------------------------------


def _retention_days(row: Artifact) -> int | None:
    days = [
        int(o.get("days", 0)) for o in json_list(row.obligations) if o.get("kind") == "retain_max"
    ]
    return min(days) if days else None


def _read_refusal(node: Node, row: Artifact, principal: Principal, reason: str) -> None:
    refuse(
        node,
        Refusal(
            kind="read.denied",
            actor=principal.actor,
            artifact_id=row.id,
            digest=row.sha256,
            detail={"reason": reason},
        ),
        [row.origin if row.direction == "received" else None],
        rule=reason,
        count=node.metrics.reads.labels("denied").inc,
    )


@dataclass
class ReadStream:
    artifact: Artifact
    chunks: Iterator[bytes]


def open_for_read(
    node: Node, blobs: BlobStore, artifact_id: str, *, principal: Principal
) -> ReadStream:
    """Check obligations, audit the read, and return a plaintext stream."""
    now = node.now()
    with node.db.session() as session:
        row = get_artifact(session, artifact_id)
    facts = ReadFacts(
        artifact_id=row.id,
        recorded_at=row.recorded_at,
        revoked_at=row.revoked_at,
        embargo_until=row.embargo_until,
        expires_at=row.expires_at,
        retention_days=_retention_days(row),
    )
    try:
        check_readable(facts, now=now)
    except EntenteError as error:
        _read_refusal(node, row, principal, str(error.extra["reason"]))
        mark_audited(error)
        raise
    decision = None
    if row.direction == "received":
        decision = enforce(
            node,
            Facts.of_row(row).request(row.origin, "read"),
            refusal=Refusal(
                kind="read.denied", actor=principal.actor, artifact_id=row.id, digest=row.sha256
            ),
            message=lambda d: f"reading {row.id} is denied: {d.summary}",
            now=now,
        )
    if row.blob is None:
        raise NotFoundError(f"artifact {row.id} has no stored ciphertext (deleted)")
    inform = any(o.get("kind") == "inform" for o in json_list(row.obligations)) or (
        decision is not None and any(o.kind == "inform" for o in decision.obligations)
    )
    notify = inform and row.direction == "received"  # the origin asked to hear of reads
    with node.db.session() as session:
        rule = first_rule(decision) if decision else None
        record(
            session,
            kind="read",
            actor=principal.actor,
            partner=row.origin if row.direction == "received" else None,
            artifact_id=row.id,
            digest=row.sha256,
            decision="allow",
            rule=",".join(r.id for r in decision.rules) if decision else None,
            clause=rule.clause if rule else None,
            detail={"inform": inform},
            now=now,
        )
        if notify:
            session.add(
                Outbox(
                    partner=row.origin,
                    kind="notice",
                    artifact_id=row.id,
                    artifact_origin=row.origin,
                    payload=json.dumps(
                        {"type": "access", "reader": principal.actor, "read_at": now.isoformat()}
                    ),
                    created_at=now,
                    next_attempt_at=now,
                )
            )
    node.metrics.reads.labels("allowed").inc()
    return ReadStream(row, plaintext_chunks(node, blobs, row))


class _QueueSink:
    def __init__(self, q: queue.Queue[bytes | BaseException | None], cancelled: threading.Event):
        self._q = q
        self._cancelled = cancelled

    def write(self, data: bytes | bytearray | memoryview, /) -> int:
        if self._cancelled.is_set():
            raise _Cancelled
        chunk = bytes(data)
        while True:
            try:
                self._q.put(chunk, timeout=0.5)
                return len(chunk)
            except queue.Full:
                if self._cancelled.is_set():
                    raise _Cancelled from None


class _Cancelled(Exception):
    pass


def plaintext_chunks(node: Node, blobs: BlobStore, row: Artifact) -> Iterator[bytes]:
    """Decrypt on a helper thread, handing plaintext chunks over a small bounded queue.

    The stored manifest is verified against this node's keys, current and retired (so what it
    signed before a key rotation still opens), or against the origin's pinned keys.
    """
    from service.partners import partner_keysets

    with node.db.session() as session:
        keysets = (
            node.keys.keysets
            if row.origin == node.node_id
            else partner_keysets(session, row.origin)
        )
    envelope = Envelope.from_bytes(row.manifest.encode())
    q: queue.Queue[bytes | BaseException | None] = queue.Queue(maxsize=4)
    cancelled = threading.Event()

    def work() -> None:
        try:
            with blobs.open(row.blob or "") as source:
                open_sealed(
                    source,
                    _QueueSink(q, cancelled),
                    envelope=envelope,
                    identities=node.keys.all_identities,
                    keysets=keysets,
                    origin=row.origin,
                    reader=node.node_id,
                )
            q.put(None)
        except _Cancelled:
            return
        except BaseException as exc:  # handed to the reader
            q.put(exc)

    thread = threading.Thread(target=work, name=f"decrypt-{row.id}", daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                if isinstance(item, CryptoError):
                    raise StoredArtifactCorruptError(
                        f"the stored ciphertext of {row.id} failed verification while it was read"
                    ) from None
                raise item
            yield item
    finally:
        cancelled.set()
