"""Sharing, listing, reading and revoking artifacts at this node (the domain behind ``/v1``).

Share: every requested partner's policy is evaluated first; if any denies, nothing is stored and
the denial (rule and MOU clause) is audited and raised. Otherwise the file streams once through
SHA-256 and age encryption to the permitted partners and this node, into the blob store; then ONE
transaction records the artifact, an audit event per partner and an outbox row per partner.

Read: the node decrypts with its own identity and streams plaintext to the caller after checking
revocation, embargo, expiry and retention; the read is audited (and, where an ``inform`` obligation
applies, an access notice to the origin is queued) before the first byte is sent. Plaintext never
touches the disk.
"""

from __future__ import annotations

import base64
import json
import queue
import secrets
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import sqlalchemy as sa
from sqlmodel import Session, col, select

from crypto import strict_json
from crypto.dsse import Envelope
from crypto.errors import CryptoError
from crypto.sealed import (
    Manifest,
    ManifestRecipient,
    disclosure,
    disclosure_digest,
    open_sealed,
    seal,
)
from policies import Decision, Request
from service.audit.log import AUDIT_TABLE, audit_row, record
from service.blobs import BlobStore
from service.commits import group_commit
from service.errors import (
    ConflictError,
    EntenteError,
    ForbiddenError,
    InvalidInputError,
    NotFoundError,
    PolicyDeniedError,
)
from service.faults import fault_point
from service.models import Artifact, Outbox, Partner
from service.node import Node
from service.schemas import ShareMetadata
from service.tokens import Principal, Role

__all__ = [
    "PinnedRecipient",
    "ReadStream",
    "Recipient",
    "decide_share",
    "get_artifact",
    "list_artifacts",
    "new_artifact_id",
    "open_for_read",
    "plaintext_chunks",
    "revoke_artifact",
    "share_artifact",
]

MAX_RECIPIENTS_PER_ID = 64  # origins listed when a plain id is ambiguous
_B32 = "0123456789abcdefghjkmnpqrstvwxyz"  # Crockford base32, sortable


def new_artifact_id(now: datetime) -> str:
    """``art_`` + 10 chars of milliseconds since the epoch + 16 random chars: sortable, unique."""
    ms = int(now.timestamp() * 1000)
    stamp = "".join(_B32[(ms >> (5 * i)) & 31] for i in reversed(range(10)))
    rand = "".join(_B32[b & 31] for b in secrets.token_bytes(16))
    return f"art_{stamp}{rand}"


def _json_list(text: str) -> list[Any]:
    value = json.loads(text)
    return value if isinstance(value, list) else []


# --- share ------------------------------------------------------------------------------------


class Recipient(Protocol):
    """What sharing needs of a pinned partner: its id and its age recipient."""

    @property
    def node_id(self) -> str: ...
    @property
    def age_recipient(self) -> str: ...


@dataclass(frozen=True)
class PinnedRecipient:
    node_id: str
    age_recipient: str


# Built once: SQLAlchemy memoizes a statement's cache key, so executing it again skips the
# statement construction and compilation lookup that cost more than the query itself.
_PINNED = sa.select(col(Partner.node_id), col(Partner.age_recipient)).where(
    col(Partner.node_id).in_(sa.bindparam("ids", expanding=True))
)


def decide_share(
    node: Node, meta: ShareMetadata, *, principal: Principal
) -> list[tuple[Recipient, Decision]]:
    """Evaluate each requested partner's policy; all must allow, or nothing is shared.

    A denial for any partner is audited (one ``share.denied`` event per denied partner, in its own
    transaction) and raised as :class:`PolicyDeniedError` naming the partner, rule and clause.
    """
    now = node.now()
    with node.db.engine.connect() as conn:  # a read: no ORM session, no objects
        partners: dict[str, Recipient] = {
            node_id: PinnedRecipient(node_id, recipient)
            for node_id, recipient in conn.execute(_PINNED, {"ids": list(meta.partners)})
        }
    unknown = [p for p in meta.partners if p not in partners]
    if unknown:
        with node.db.session() as session:
            for name in unknown:
                record(
                    session,
                    kind="share.denied",
                    actor=principal.actor,
                    partner=name,
                    decision="deny",
                    detail={"reason": "unknown-partner", "title": meta.title, "tlp": meta.tlp},
                    now=now,
                )
        raise InvalidInputError(
            f"not a pinned partner: {', '.join(unknown)}",
            reason="unknown-partner",
            partners=unknown,
            audited=True,
        )
    decisions = []
    for partner_id in meta.partners:
        request = Request(
            partner=partner_id,
            action="share",
            tlp=meta.tlp,
            topics=frozenset(meta.topics),
            purposes=frozenset(meta.purposes),
            embargo_until=meta.embargo_until,
            expires_at=meta.expires_at,
        )
        decisions.append((partners[partner_id], node.policies.decide(request, now=now)))
    denied = [(p, d) for p, d in decisions if not d.allowed]
    if denied:
        with node.db.session() as session:
            for partner, decision in denied:
                rule = decision.rules[0] if decision.rules else None
                record(
                    session,
                    kind="share.denied",
                    actor=principal.actor,
                    partner=partner.node_id,
                    decision="deny",
                    rule=rule.id if rule else decision.reason,
                    clause=rule.clause if rule else None,
                    detail={"title": meta.title, "decision": decision.to_json()},
                    now=now,
                )
        node.metrics.shares.labels("denied").inc()
        first_partner, first = denied[0]
        rule = first.rules[0] if first.rules else None
        raise PolicyDeniedError(
            f"sharing with {first_partner.node_id} is denied: {first.summary}",
            partner=first_partner.node_id,
            rule=rule.id if rule else None,
            clause=rule.clause if rule else None,
            reason=first.reason,
            denials=[
                {
                    "partner": p.node_id,
                    "summary": d.summary,
                    "rules": [r.to_json() for r in d.rules],
                    "unmet": [u.to_json() for u in d.unmet],
                }
                for p, d in denied
            ],
            audited=True,
        )
    return decisions


def share_artifact(
    node: Node,
    blobs: BlobStore,
    meta: ShareMetadata,
    source: Any,
    *,
    principal: Principal,
    decisions: Sequence[tuple[Recipient, Decision]],
    chain: tuple[dict[str, Any], ...] = (),
    artifact_id: str | None = None,
    kind: str = "share.allowed",
    onward_approved: Sequence[str] = (),
    onward: dict[str, Any] | None = None,
    upstream: tuple[str, str, str] | None = None,
) -> Artifact:
    """Seal ``source`` to the permitted partners and this node, store it, queue deliveries.

    The manifest's policy reference records each partner's decision with its obligations (a
    recipient's ``onward`` obligation is what lets it pass the artifact on), the partners the
    publisher pre-approves for onward sharing (``onward_approved``), and, for an onward share
    (``service.federation.onward``), the holder's ``onward`` decisions; ``upstream`` (the artifact
    passed on: its id and origin, and the chain's root origin) is kept on the row.
    """
    now = node.now()
    artifact_id = artifact_id or new_artifact_id(now)
    # X25519 for everyone: a file mixing post-quantum and classic stanzas is only as strong as
    # the classic one, so age refuses the mix. (Hybrid recipients need every party to have one.)
    recipients = [ManifestRecipient(node.node_id, node.home.age_recipient)] + [
        ManifestRecipient(p.node_id, p.age_recipient) for p, _ in decisions
    ]
    policy_ref, signed_policy = _policy_refs(decisions, onward_approved, onward)
    writer = blobs.writer()
    try:
        sealed = seal(
            source,
            writer,
            artifact_id=artifact_id,
            title=meta.title,
            origin=node.node_id,
            tlp=meta.tlp,
            recipients=recipients,
            signer=node.keys.signing,
            policy=signed_policy,
            now=now,
            topics=meta.topics,
            purposes=meta.purposes,
            embargo_until=meta.embargo_until,
            expires_at=meta.expires_at,
            chain=chain,
        )
        fault_point("share.sealed")
        digest = writer.place()  # durable before the rows commit: see below
    except BaseException:
        writer.abort()
        raise
    fault_point("share.blob_committed")
    values = artifact_row(
        sealed.manifest, sealed.envelope, ciphertext_size=sealed.ciphertext_size, blob=digest,
        direction="sent", sender=node.node_id, now=now,
        obligations=[o.to_json() for _, d in decisions for o in d.obligations],
    )  # fmt: skip
    values["policy_ref"] = json.dumps(policy_ref)  # ours: every decision and disclosure
    if upstream is not None:
        values["upstream_id"], values["upstream_from"], values["upstream_origin"] = upstream
    outbox = [
        _outbox_values(
            partner=partner.node_id, artifact_id=artifact_id, origin=node.node_id, now=now
        )
        for partner, _ in decisions
    ]
    events = []
    for partner, decision in decisions:
        rule = decision.rules[0] if decision.rules else None
        detail = {"title": meta.title, "tlp": meta.tlp, "size": sealed.size,
                  "policy": decision.policy_ref}  # fmt: skip
        if upstream is not None:
            detail.update(upstream=upstream[0], origin=upstream[2])
        events.append(
            audit_row(
                kind=kind,
                actor=principal.actor,
                partner=partner.node_id,
                artifact_id=artifact_id,
                digest=sealed.manifest.sha256,
                decision="allow",
                rule=",".join(r.id for r in decision.rules) or None,
                clause=rule.clause if rule else None,
                detail=detail,
                now=now,
            )
        )
    try:
        # One transaction: the artifact, its audit events and its outbox rows, committed
        # together with the rows of shares running at the same time (group commit: Core
        # inserts, one commit for the group, and one sync of the group's blobs before it).
        group_commit(node.db).write(
            {_ARTIFACTS: [values], _OUTBOX: outbox, AUDIT_TABLE: events},
            prepare=blobs.sync_placed,
            before_commit=lambda: fault_point("share.before_db_commit"),
        )
    except BaseException:
        blobs.delete(digest)
        raise
    fault_point("share.db_committed")
    node.metrics.shares.labels("allowed").inc()
    # The committed values, unvalidated (they were just built here): a validating model
    # constructor costs ten times as much, about 70 µs per share.
    return Artifact.model_construct(**values)


_ARTIFACTS = Artifact.__table__  # type: ignore[attr-defined]
_OUTBOX = Outbox.__table__  # type: ignore[attr-defined]


def _policy_refs(
    decisions: Sequence[tuple[Recipient, Decision]],
    onward_approved: Sequence[str],
    onward: dict[str, Any] | None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(this node's record of the decisions, what the manifest signs).

    The manifest commits to each recipient's decision (and, on an onward share, this node's
    onward decision for it) with a salted SHA-256 (``crypto.sealed.disclosure``); each
    recipient is shown only its own disclosure, with its delivery. The record keeps every
    decision and every disclosure, for this node's users and its deliveries."""
    entries = {
        p.node_id: {
            "partner": p.node_id, "effect": d.effect, "policy": d.policy_ref,
            "rules": [r.to_json() for r in d.rules],
            "obligations": [o.to_json() for o in d.obligations],
        }
        for p, d in decisions
    }  # fmt: skip
    onward_for = {
        e.get("onward_to"): e
        for e in (onward or {}).get("decisions", [])
        if isinstance(e, dict) and isinstance(e.get("onward_to"), str)
    }
    disclosures = {
        partner: disclosure(
            partner, entry, onward=onward_for.get(partner), salt=secrets.token_bytes(16)
        )
        for partner, entry in entries.items()
    }
    signed: dict[str, Any] = {
        "decisions": [
            {"partner": partner, "sha256": disclosure_digest(d)}
            for partner, d in disclosures.items()
        ]
    }
    kept: dict[str, Any] = {"decisions": list(entries.values()), "disclosures": disclosures}
    if onward_approved:
        signed["onward_approved"] = kept["onward_approved"] = sorted(set(onward_approved))
    if onward is not None:
        signed["onward"] = {
            "upstream": onward.get("upstream"),
            "origin": onward.get("origin"),
            "disclosure": onward.get("disclosure"),
        }
        kept["onward"] = onward
    return kept, signed


def delivery_head(row: Artifact, partner: str) -> bytes:
    """The first line of a delivery of ``row`` to ``partner``: the manifest, with what the
    manifest commits to for that partner (its disclosure) when there is one; the manifest
    alone for an artifact shared before commitments."""
    envelope = json.loads(row.manifest)
    shown = json.loads(row.policy_ref or "{}").get("disclosures", {}).get(partner)
    head = envelope if shown is None else {"manifest": envelope, "disclosure": shown}
    return json.dumps(head, separators=(",", ":")).encode()


def artifact_row(
    m: Manifest,
    envelope: Envelope,
    *,
    ciphertext_size: int,
    blob: str | None,
    direction: str,
    sender: str,
    now: datetime,
    obligations: list[dict[str, Any]],
) -> dict[str, Any]:
    """Every column of a new artifact row, sent or received (a Core insert applies no model
    defaults); a received row's receipt and upstream columns are the receiver's to fill."""
    return {
        "id": m.artifact_id,
        "direction": direction,
        "origin": m.origin,
        "sender": sender,
        "title": m.title,
        "tlp": m.tlp,
        "topics": json.dumps(list(m.topics)),
        "purposes": json.dumps(list(m.purposes)),
        "recipients": json.dumps([r.node_id for r in m.recipients]),
        "created_at": m.created,
        "recorded_at": now,
        "embargo_until": m.embargo_until,
        "expires_at": m.expires_at,
        "size": m.size,
        "sha256": m.sha256,
        "blob": blob,
        "ciphertext_size": ciphertext_size,
        "header_sha256": m.age_header_sha256,
        "manifest": envelope.to_bytes().decode("utf-8"),
        "policy_ref": json.dumps(m.policy),
        "obligations": json.dumps(obligations),
        "revoked_at": None,
        "revocation_reason": None,
        "deleted_at": None,
        "receipt": None,
        "upstream_id": None,
        "upstream_from": None,
        "upstream_origin": None,
    }


def _outbox_values(*, partner: str, artifact_id: str, origin: str, now: datetime) -> dict[str, Any]:
    """Every column of a new delivery row but its id (assigned by the database)."""
    return {
        "partner": partner,
        "kind": "deliver",
        "artifact_id": artifact_id,
        "artifact_origin": origin,
        "payload": "{}",
        "state": "pending",
        "attempts": 0,
        "created_at": now,
        "next_attempt_at": now,
        "lease_owner": None,
        "lease_until": None,
        "last_error": None,
        "delivered_at": None,
        "receipt": None,
    }


# --- list and get -----------------------------------------------------------------------------


def _encode_cursor(row: Artifact) -> str:
    raw = json.dumps([row.recorded_at.isoformat(), row.id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        stamp, ident = strict_json.loads(raw)
        at = datetime.fromisoformat(stamp)
        if at.tzinfo is None:
            raise ValueError("naive")
        return at.astimezone(UTC), str(ident)
    except (ValueError, TypeError, UnicodeDecodeError, OverflowError):
        raise InvalidInputError("the cursor is not one this node issued") from None


def list_artifacts(
    session: Session,
    *,
    direction: str | None,
    partner: str | None,
    tlp: str | None,
    topic: str | None,
    cursor: str | None,
    limit: int,
) -> tuple[list[Artifact], str | None]:
    """Newest first, keyset-paginated on (recorded_at, id); deleted artifacts are left out."""
    query = select(Artifact).where(col(Artifact.deleted_at).is_(None))
    if direction is not None:
        query = query.where(Artifact.direction == direction)
    if partner is not None:
        query = query.where(
            sa.or_(
                col(Artifact.origin) == partner,
                col(Artifact.sender) == partner,
                col(Artifact.recipients).contains(json.dumps(partner)),
            )
        )
    if tlp is not None:
        query = query.where(Artifact.tlp == tlp)
    if topic is not None:
        query = query.where(col(Artifact.topics).contains(json.dumps(topic)))
    if cursor is not None:
        at, ident = _decode_cursor(cursor)
        query = query.where(
            sa.or_(
                col(Artifact.recorded_at) < at,
                sa.and_(col(Artifact.recorded_at) == at, col(Artifact.id) < ident),
            )
        )
    rows = list(
        session.exec(
            query.order_by(col(Artifact.recorded_at).desc(), col(Artifact.id).desc()).limit(
                limit + 1
            )
        )
    )
    more = len(rows) > limit
    rows = rows[:limit]
    return rows, _encode_cursor(rows[-1]) if more and rows else None


def get_artifact(session: Session, artifact_id: str) -> Artifact:
    """The artifact ``id`` or ``id@origin`` names (ids are unique per origin).

    A plain id names this node's own artifact when it has one under that id (its own
    namespace), else the one artifact received under it; when several origins used the id,
    the caller must say which (409, naming the ``id@origin`` forms)."""
    ident, _, origin = artifact_id.partition("@")
    if len(ident) > 64 or len(origin) > 63:
        raise NotFoundError(f"no artifact {artifact_id[:100]!r}")
    query = select(Artifact).where(Artifact.id == ident, col(Artifact.deleted_at).is_(None))
    if origin:
        query = query.where(Artifact.origin == origin)
    rows = list(session.exec(query.limit(MAX_RECIPIENTS_PER_ID)))
    own = [r for r in rows if r.direction == "sent"]
    if own:
        return own[0]
    if not rows:
        raise NotFoundError(f"no artifact {artifact_id[:100]!r}")
    if len(rows) > 1:
        refs = ", ".join(sorted(f"{r.id}@{r.origin}" for r in rows))
        raise ConflictError(
            f"artifact id {ident!r} is used by several origins: name one of {refs}",
            reason="ambiguous",
        )
    return rows[0]


def deliveries_for(session: Session, artifact_id: str) -> list[Outbox]:
    return list(
        session.exec(
            select(Outbox)
            .where(Outbox.artifact_id == artifact_id, Outbox.kind == "deliver")
            .order_by(col(Outbox.partner))
        )
    )


# --- read -------------------------------------------------------------------------------------


def _retention_days(row: Artifact) -> int | None:
    days = [
        int(o.get("days", 0)) for o in _json_list(row.obligations) if o.get("kind") == "retain_max"
    ]
    return min(days) if days else None


def _read_refusal(
    node: Node, row: Artifact, principal: Principal, reason: str, message: str
) -> None:
    with node.db.session() as session:
        record(
            session,
            kind="read.denied",
            actor=principal.actor,
            partner=row.origin if row.direction == "received" else None,
            artifact_id=row.id,
            digest=row.sha256,
            decision="deny",
            rule=reason,
            detail={"reason": reason},
            now=node.now(),
        )
    node.metrics.reads.labels("denied").inc()


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
    checks: list[tuple[bool, str, str, EntenteError]] = [
        (
            row.revoked_at is not None,
            "revoked",
            "the origin revoked this artifact",
            ConflictError(f"artifact {row.id} was revoked by its origin", reason="revoked"),
        ),
        (
            row.embargo_until is not None and now < row.embargo_until,
            "embargo",
            "under embargo",
            ForbiddenError(
                f"artifact {row.id} is under embargo until {row.embargo_until}",
                reason="embargo",
                embargo_until=row.embargo_until.isoformat() if row.embargo_until else None,
            ),
        ),
        (
            row.expires_at is not None and now >= row.expires_at,
            "expired",
            "expired",
            ConflictError(f"artifact {row.id} expired at {row.expires_at}", reason="expired"),
        ),
    ]
    retention = _retention_days(row)
    if retention is not None:
        limit = row.recorded_at + timedelta(days=retention)
        checks.append(
            (
                now >= limit,
                "retention",
                "past its retention period",
                ConflictError(
                    f"artifact {row.id} is past its retention period ({retention} days)",
                    reason="retention",
                ),
            )
        )
    for failed, reason, message, error in checks:
        if failed:
            _read_refusal(node, row, principal, reason, message)
            error.audited = True
            raise error
    decision = None
    if row.direction == "received":
        decision = node.policies.decide(
            Request(
                partner=row.origin,
                action="read",
                tlp=row.tlp,
                topics=frozenset(_json_list(row.topics)),
                purposes=frozenset(_json_list(row.purposes)),
                embargo_until=row.embargo_until,
                expires_at=row.expires_at,
            ),
            now=now,
        )
        if not decision.allowed:
            rule = decision.rules[0] if decision.rules else None
            with node.db.session() as session:
                record(
                    session,
                    kind="read.denied",
                    actor=principal.actor,
                    partner=row.origin,
                    artifact_id=row.id,
                    digest=row.sha256,
                    decision="deny",
                    rule=rule.id if rule else decision.reason,
                    clause=rule.clause if rule else None,
                    detail={"decision": decision.to_json()},
                    now=now,
                )
            raise PolicyDeniedError(
                f"reading {row.id} is denied: {decision.summary}",
                partner=row.origin,
                rule=rule.id if rule else None,
                clause=rule.clause if rule else None,
                reason=decision.reason,
                audited=True,
            )
    if row.blob is None:
        raise NotFoundError(f"artifact {row.id} has no stored ciphertext (deleted)")
    inform = any(o.get("kind") == "inform" for o in _json_list(row.obligations)) or (
        decision is not None and any(o.kind == "inform" for o in decision.obligations)
    )
    with node.db.session() as session:
        rule = decision.rules[0] if decision and decision.rules else None
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
        if inform and row.direction == "received":
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
    from service.partners import partner_verify_keys

    keys = node.keys
    with node.db.session() as session:
        trusted = (
            {k.fingerprint: k.public for k in (keys.signing, *keys.retired_signing)}
            if row.origin == node.node_id
            else partner_verify_keys(session, row.origin)
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
                    trusted=trusted,
                    origin=row.origin,
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
                    raise _IntegrityFailure(row.id) from None
                raise item
            yield item
    finally:
        cancelled.set()


class _IntegrityFailure(Exception):
    """The stored ciphertext failed verification mid-stream (storage corruption)."""


# --- revoke -----------------------------------------------------------------------------------


def revoke_artifact(node: Node, artifact_id: str, *, principal: Principal, reason: str) -> Artifact:
    """Revoke an artifact this node originated: recipients are told to hide and delete it."""
    now = node.now()
    with node.db.session() as session:
        row = get_artifact(session, artifact_id)
        if row.origin != node.node_id:
            raise ForbiddenError("only the origin can revoke an artifact", reason="not-origin")
        if principal.role not in (Role.PUBLISHER, Role.ADMIN):
            raise ForbiddenError("revoking needs the publisher or admin role")
        if row.revoked_at is not None:
            return row
        row.revoked_at = now
        row.revocation_reason = reason[:500] or None
        session.add(row)
        for partner in [r for r in _json_list(row.recipients) if r != node.node_id]:
            record(
                session,
                kind="revocation.issued",
                actor=principal.actor,
                partner=partner,
                artifact_id=row.id,
                digest=row.sha256,
                detail={"reason": reason[:500]},
                now=now,
            )
            session.add(
                Outbox(
                    partner=partner,
                    kind="notice",
                    artifact_id=row.id,
                    artifact_origin=row.origin,
                    payload=json.dumps({"type": "revocation", "reason": reason[:500]}),
                    created_at=now,
                    next_attempt_at=now,
                )
            )
        return row
