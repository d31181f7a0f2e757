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
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime

from sqlmodel import Session, select

from crypto.dsse import Envelope
from crypto.errors import CryptoError
from crypto.sealed import (
    open_sealed,
)
from service.artifacts.enforce import Facts, Refusal, enforce, first_rule, refuse
from service.artifacts.listing import get_artifact
from service.artifacts.read_rules import ReadFacts, check_readable
from service.artifacts.retention import due_now
from service.artifacts.rows import json_list
from service.audit.log import record
from service.audit.refusals import mark_audited
from service.blobs import BlobStore
from service.errors import (
    ConflictError,
    EntenteError,
    GoneError,
    NotFoundError,
    StoredArtifactCorruptError,
)
from service.handoff import Handoff, produced
from service.models import Artifact, Outbox
from service.node import Node
from service.tokens import Principal

__all__ = ["ReadStream", "open_for_read", "plaintext_chunks"]


# --- read -------------------------------------------------------------------------------------


def _retention_days(row: Artifact) -> int | None:
    days = [
        o["days"]
        for o in json_list(row.obligations)
        if o.get("kind") == "retain_max" and type(o.get("days")) is int and o["days"] >= 1
    ]
    return min(days) if days else None


def _read_refusal(
    node: Node,
    row: Artifact,
    subject: Artifact,
    principal: Principal,
    reason: str,
    *,
    rule: str | None = None,
    clause: str | None = None,
) -> None:
    refuse(
        node,
        Refusal(
            kind="read.denied",
            actor=principal.actor,
            artifact_id=row.id,
            digest=row.sha256,
            detail={"reason": reason, **({"upstream": subject.id} if subject is not row else {})},
        ),
        [subject.origin if subject.direction == "received" else None],
        rule=rule or reason,
        clause=clause,
        count=node.metrics.reads.labels("denied").inc,
    )  # fmt: skip


def _read_as(session: Session, row: Artifact) -> Artifact | None:
    """What reading ``row`` is a read of: itself, or, for a copy this node passed on (onward),
    the received artifact it was made from, whose terms bind the plaintext here (its read
    policy and obligations, its retention, a revocation by its origin); None when that is no
    longer held here."""
    if row.direction != "sent" or row.upstream_id is None:
        return row
    upstream = session.exec(
        select(Artifact).where(
            Artifact.id == row.upstream_id, Artifact.origin == (row.upstream_from or "")
        )
    ).first()
    if upstream is None or upstream.direction != "received" or upstream.blob is None:
        return None
    return upstream


def _check(node: Node, subject: Artifact, *, now: datetime) -> None:
    """Raise the refusal that applies to reading ``subject`` now: revoked, embargo, expired,
    and past any retention term that binds it here (the worker's terms: the origin's, and this
    node's own on receiving and reading it), which the worker may not have applied yet."""
    check_readable(
        ReadFacts(
            artifact_id=subject.id,
            recorded_at=subject.recorded_at,
            revoked_at=subject.revoked_at,
            embargo_until=subject.embargo_until,
            expires_at=subject.expires_at,
            retention_days=_retention_days(subject),
        ),
        now=now,
    )
    due = due_now(node, subject, now=now)
    if due is not None and due.reason == "retention":
        raise ConflictError(
            f"artifact {subject.id} is past its retention period (rule {due.rule}: "
            f"{due.term.days if due.term else '?'} days)",
            reason="retention",
            rule=due.rule,
            clause=due.clause,
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
        read_as = _read_as(session, row)
    subject = read_as if read_as is not None else row
    try:
        if read_as is None:
            raise GoneError(
                f"{row.id} was passed on from {row.upstream_id}, which this node no longer "
                "holds (revoked or deleted): its terms no longer let it be read here",
                reason="upstream-gone",
            )
        _check(node, subject, now=now)
    except EntenteError as error:
        reason = str(error.extra["reason"])
        _read_refusal(node, row, subject, principal, reason,
                      rule=error.extra.get("rule"), clause=error.extra.get("clause"))  # fmt: skip
        mark_audited(error)
        raise
    decision = None
    if subject.direction == "received":
        decision = enforce(
            node,
            Facts.of_row(subject).request(subject.origin, "read"),
            refusal=Refusal(
                kind="read.denied", actor=principal.actor, artifact_id=row.id, digest=row.sha256
            ),
            message=lambda d: f"reading {row.id} is denied: {d.summary}",
            now=now,
        )
    if row.blob is None:
        raise NotFoundError(f"artifact {row.id} has no stored ciphertext (deleted)")
    inform = any(o.get("kind") == "inform" for o in json_list(subject.obligations)) or (
        decision is not None and any(o.kind == "inform" for o in decision.obligations)
    )
    notify = inform and subject.direction == "received"  # the origin asked to hear of reads
    with node.db.session() as session:
        rule = first_rule(decision) if decision else None
        record(
            session,
            kind="read",
            actor=principal.actor,
            partner=subject.origin if subject.direction == "received" else None,
            artifact_id=row.id,
            digest=row.sha256,
            decision="allow",
            rule=",".join(r.id for r in decision.rules) if decision else None,
            clause=rule.clause if rule else None,
            detail={"inform": inform, **({"upstream": subject.id} if subject is not row else {})},
            now=now,
        )
        if notify:
            session.add(
                Outbox(
                    partner=subject.origin,
                    kind="notice",
                    artifact_id=subject.id,
                    artifact_origin=subject.origin,
                    payload=json.dumps(
                        {"type": "access", "reader": principal.actor, "read_at": now.isoformat()}
                    ),
                    created_at=now,
                    next_attempt_at=now,
                )
            )
    node.metrics.reads.labels("allowed").inc()
    return ReadStream(row, plaintext_chunks(node, blobs, row))


def plaintext_chunks(node: Node, blobs: BlobStore, row: Artifact) -> Iterator[bytes]:
    """Decrypt on a helper thread, handing plaintext chunks over a small bounded queue
    (``service.handoff``: the thread ends when the reader stops).

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

    def work(sink: Handoff) -> None:
        with blobs.open(row.blob or "") as source:
            open_sealed(
                source,
                sink,
                envelope=envelope,
                identities=node.keys.all_identities,
                keysets=keysets,
                origin=row.origin,
                reader=node.node_id,
            )

    chunks = produced(work, name=f"decrypt-{row.id}")
    try:
        yield from chunks
    except CryptoError:
        raise StoredArtifactCorruptError(
            f"the stored ciphertext of {row.id} failed verification while it was read"
        ) from None
    finally:
        chunks.close()
