"""Notices between nodes: revocations (origin -> recipients), access notices (recipient ->
origin, the ``inform`` obligation) and deletion notices (recipient -> origin: the holder deleted
its copy as the origin's terms require, ``service.artifacts.retention``).

A notice is a small JSON object ``{"notice_id", "type", "artifact_id", "sha256", ...}``; the
sender's outbox row id is its ``notice_id``, so a repeated notice is answered with the receipt
already issued. A receipt states the artifact's digest: a notice about an artifact this node
holds must name the digest it holds. Accepting a revocation hides the artifact and deletes its
ciphertext (unless another row holds the same bytes); both sides audit it, and the receipt goes
back to the origin as evidence. A revocation reaches every copy: the artifacts this node passed
on from the revoked one (onward shares) are revoked and deleted here too, and their recipients
are sent revocations in turn. A deletion notice carries the holder's own signed statement (a
``deletion`` receipt), which the origin verifies against the holder's pinned keys and keeps in
its ``deletion.acknowledged`` entry, with the rule and clause.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col

from crypto.dsse import Envelope
from crypto.errors import CryptoError
from crypto.receipt import Receipt, sign_receipt, verify_receipt
from service.artifacts.rows import lock_with_onward_copies
from service.artifacts.sweep import drop_unreferenced
from service.audit.log import record
from service.blob_journal import record_deletions
from service.errors import InvalidInputError
from service.federation.settle import receipt_keys
from service.models import Artifact, Outbox, ReceivedNotice
from service.node import Node
from service.partners import partner_keys

__all__ = ["accept", "notice_payload"]

_TYPES = {"revocation": "revocation", "access": "access", "deletion": "deletion"}
_FIELDS = ("reason", "reader", "read_at", "rule", "clause", "deleted_at", "statement")


def notice_payload(row: Outbox, artifact: Artifact) -> dict[str, Any]:
    """What the sender posts for an outbox notice row."""
    extra = json.loads(row.payload)
    return {
        "notice_id": row.id,
        "type": extra.get("type"),
        "artifact_id": artifact.id,
        "sha256": artifact.sha256,
        **{k: v for k, v in extra.items() if k in _FIELDS},
    }


def _text(data: dict[str, Any], key: str, limit: int = 500) -> str:
    value = data.get(key, "")
    if not isinstance(value, str) or len(value) > limit:
        raise InvalidInputError(f"notice field {key!r} must be a string of at most {limit} chars")
    return value


def accept(node: Node, *, sender: str, data: Any) -> dict[str, Any]:
    """Apply a partner's notice once; return the signed receipt (DSSE JSON)."""
    if not isinstance(data, dict):
        raise InvalidInputError("a notice is a JSON object")
    kind = data.get("type")
    notice_id = data.get("notice_id")
    if kind not in _TYPES or not isinstance(notice_id, int) or notice_id < 0:
        raise InvalidInputError(
            "a notice needs a type (revocation, access or deletion) and a notice_id"
        )
    artifact_id = _text(data, "artifact_id", 64)
    sha256 = _text(data, "sha256", 64)
    now = node.now()
    to_delete: list[str] = []
    try:
        return _accept(node, sender, kind, notice_id, artifact_id, sha256, data, now, to_delete)
    except IntegrityError:  # the same notice, accepted concurrently: answer as a repeat
        to_delete.clear()
        with node.db.session() as session:
            seen = session.get(ReceivedNotice, (sender, notice_id))
        if seen is None:
            raise
        loaded: dict[str, Any] = json.loads(seen.receipt)
        return loaded
    finally:
        drop_unreferenced(node, to_delete)  # only once the revocation is committed


def _accept(
    node: Node,
    sender: str,
    kind: str,
    notice_id: int,
    artifact_id: str,
    sha256: str,
    data: dict[str, Any],
    now: datetime,
    to_delete: list[str],
) -> dict[str, Any]:
    with node.db.session() as session:
        seen = session.get(ReceivedNotice, (sender, notice_id))
        if seen is not None:
            loaded: dict[str, Any] = json.loads(seen.receipt)
            return loaded
        # A revocation is about the sender's artifact, an access or deletion notice about ours:
        # an id names an artifact only within its origin's namespace.
        if kind == "revocation":
            # With this node's onward copies of it, locked in key order before any is written
            # (as a retention round on another replica writes them).
            artifact, copies = lock_with_onward_copies(
                session, node.node_id, artifact_id[:64], sender, col(Artifact.revoked_at).is_(None)
            )
            blobs = _revocation(session, node, sender, artifact, copies, artifact_id, data, now)
            record_deletions(session, blobs)  # deleted after the commit; journaled till then
        else:
            artifact = session.get(Artifact, (artifact_id[:64], node.node_id))
            handle = _deletion if kind == "deletion" else _access
            handle(session, node, sender, artifact, artifact_id, data, now)
        receipt = sign_receipt(
            Receipt(
                kind=_TYPES[kind],
                artifact_id=artifact_id,
                sha256=sha256,
                receiver=node.node_id,
                sender=sender,
                received_at=now,
                notice_id=notice_id,
            ),
            key=node.keys.signer,
        )
        receipt_json = receipt.to_json()
        session.add(
            ReceivedNotice(
                partner=sender,
                notice_id=notice_id,
                kind=kind,
                artifact_id=artifact_id,
                received_at=now,
                receipt=json.dumps(receipt_json),
            )
        )
    if kind == "revocation":
        to_delete.extend(blobs)
    return receipt_json


def _revocation(
    session: Session,
    node: Node,
    sender: str,
    artifact: Artifact | None,
    copies: list[Artifact],
    artifact_id: str,
    data: dict[str, Any],
    now: datetime,
) -> list[str]:
    """Hide the artifact and this node's onward ``copies`` of it (not yet revoked); return the
    blobs to delete once the transaction has committed."""
    reason = _text(data, "reason")
    if artifact is not None:
        if artifact.origin != sender:
            raise InvalidInputError("only the origin of an artifact can revoke it")
        _same_digest(artifact, data)
    blob = None
    blobs: list[str] = []
    if artifact is not None and artifact.revoked_at is None:
        artifact.revoked_at = now
        artifact.revocation_reason = reason or None
        artifact.deleted_at = now
        blob, artifact.blob = artifact.blob, None
        session.add(artifact)
        blobs = _revoke_onward_copies(session, node, artifact, copies, reason, now)
    record(
        session,
        kind="revocation.received",
        actor=f"partner:{sender}",
        partner=sender,
        artifact_id=artifact_id,
        digest=artifact.sha256 if artifact else None,
        detail={"reason": reason, "held": artifact is not None, "deleted": blob is not None},
        now=now,
    )
    return ([blob] if blob else []) + blobs


def _revoke_onward_copies(
    session: Session,
    node: Node,
    upstream: Artifact,
    copies: list[Artifact],
    reason: str,
    now: datetime,
) -> list[str]:
    """Revoke what this node passed on from ``upstream``: delete the copies, tell recipients."""
    blobs = []
    for copy in (c for c in copies if c.revoked_at is None):  # as read once locked
        copy.revoked_at = now
        copy.revocation_reason = f"revoked upstream by {upstream.origin}: {reason}"[:500]
        copy.deleted_at = now
        if copy.blob:
            blobs.append(copy.blob)
        copy.blob = None
        session.add(copy)
        for partner in [r for r in json.loads(copy.recipients) if r != node.node_id]:
            record(
                session,
                kind="revocation.issued",
                actor=f"node:{node.node_id}",
                partner=partner,
                artifact_id=copy.id,
                digest=copy.sha256,
                detail={"reason": copy.revocation_reason, "upstream": upstream.id},
                now=now,
            )
            session.add(
                Outbox(
                    partner=partner,
                    kind="notice",
                    artifact_id=copy.id,
                    artifact_origin=copy.origin,
                    payload=json.dumps({"type": "revocation", "reason": copy.revocation_reason}),
                    created_at=now,
                    next_attempt_at=now,
                )
            )
    return blobs


def _same_digest(artifact: Artifact, data: dict[str, Any]) -> None:
    """The receipt states the notice's digest: refuse one that is not the artifact's, lest this
    node sign that its artifact has a digest the sender chose."""
    if _text(data, "sha256", 64) != artifact.sha256:
        raise InvalidInputError(f"the notice's sha256 is not the digest of artifact {artifact.id}")


def _shared_with(
    node: Node, sender: str, artifact: Artifact | None, what: str, data: dict[str, Any]
) -> Artifact:
    """``artifact``, which a recipient's ``what`` is about: one this node shared with ``sender``,
    under the digest the notice names (checked once the sender is known to be a recipient)."""
    if artifact is None or artifact.origin != node.node_id:
        raise InvalidInputError(f"{what} must be about an artifact this node shared")
    if sender not in json.loads(artifact.recipients):
        raise InvalidInputError(f"the sender of {what.split(' ', 1)[1]} is not a recipient")
    _same_digest(artifact, data)
    return artifact


def _access(
    session: Session,
    node: Node,
    sender: str,
    artifact: Artifact | None,
    artifact_id: str,
    data: dict[str, Any],
    now: datetime,
) -> None:
    artifact = _shared_with(node, sender, artifact, "an access notice", data)
    record(
        session,
        kind="access_notice.received",
        actor=f"partner:{sender}",
        partner=sender,
        artifact_id=artifact_id,
        digest=artifact.sha256,
        detail={"reader": _text(data, "reader", 200), "read_at": _text(data, "read_at", 64)},
        now=now,
    )


def _deletion(
    session: Session,
    node: Node,
    sender: str,
    artifact: Artifact | None,
    artifact_id: str,
    data: dict[str, Any],
    now: datetime,
) -> None:
    """Record a recipient's signed statement that it deleted its copy of our artifact."""
    artifact = _shared_with(node, sender, artifact, "a deletion notice", data)
    try:
        statement = Envelope.from_json(data.get("statement"))
        verify_receipt(
            statement,
            keysets=receipt_keys(partner_keys(session, sender), statement),
            expect_kind="deletion",
            artifact_id=artifact.id,
            sha256=artifact.sha256,
            receiver=sender,
            sender=node.node_id,
        )
    except (CryptoError, ValueError, TypeError) as exc:
        raise InvalidInputError(f"the deletion statement is not acceptable: {exc}") from None
    record(
        session,
        kind="deletion.acknowledged",
        actor=f"partner:{sender}",
        partner=sender,
        artifact_id=artifact_id,
        digest=artifact.sha256,
        rule=_text(data, "rule", 200) or None,
        clause=_text(data, "clause") or None,
        detail={
            "reason": _text(data, "reason", 64),
            "deleted_at": _text(data, "deleted_at", 64),
            "statement": statement.to_json(),
        },
        now=now,
    )
