"""Sharing an artifact from this node.

Every requested partner's policy is evaluated first (:func:`decide_share`); if any denies,
nothing is stored and the denial (rule and MOU clause) is audited and raised. Otherwise
(:func:`share_artifact`) the file streams once through SHA-256 and age encryption to the
permitted partners and this node, into the blob store; then ONE transaction records the
artifact, an audit event per partner and an outbox row per partner.

This module does not deliver (``service.federation.outbox``) nor parse uploads (``service.api``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlmodel import col

from crypto.dsse import Envelope
from crypto.sealed import Manifest, seal
from policies import Decision
from service.artifacts.enforce import Facts, Refusal, deny, first_rule, refuse
from service.artifacts.retention_rules import Term, inconsistent_terms, terms_of_decision
from service.artifacts.rows import (
    _ARTIFACTS,
    _OUTBOX,
    Recipient,
    _outbox_values,
    _policy_refs,
    artifact_row,
    new_artifact_id,
)
from service.artifacts.sealing import recipients_for, sealing_for
from service.artifacts.terms import ShareTerms
from service.audit.log import AUDIT_TABLE, audit_row
from service.audit.refusals import mark_audited
from service.blob_journal import SETTLE
from service.blobs import BlobStore
from service.commits import group_commit
from service.errors import InvalidInputError
from service.faults import fault_point
from service.models import Artifact, Partner
from service.node import Node
from service.tokens import Principal

__all__ = [
    "PinnedRecipient",
    "Stored",
    "decide_share",
    "seal_into_store",
    "share_artifact",
    "share_rows",
]


# --- share ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PinnedRecipient:
    node_id: str
    age_recipient: str
    pq_recipient: str | None = None


# Built once: SQLAlchemy memoizes a statement's cache key, so executing it again skips the
# statement construction and compilation lookup that cost more than the query itself.
_PINNED = sa.select(
    col(Partner.node_id), col(Partner.age_recipient), col(Partner.pq_recipient)
).where(col(Partner.node_id).in_(sa.bindparam("ids", expanding=True)))


def decide_share(
    node: Node, meta: ShareTerms, *, principal: Principal
) -> list[tuple[Recipient, Decision]]:
    """Evaluate each requested partner's policy; all must allow, or nothing is shared.

    A denial for any partner is audited (one ``share.denied`` event per denied partner, in its own
    transaction) and raised as :class:`PolicyDeniedError` naming the partner, rule and clause.
    """
    now = node.now()
    with node.db.engine.connect() as conn:  # a read: no ORM session, no objects
        partners: dict[str, Recipient] = {
            node_id: PinnedRecipient(node_id, recipient, pq)
            for node_id, recipient, pq in conn.execute(_PINNED, {"ids": list(meta.partners)})
        }
    unknown = [p for p in meta.partners if p not in partners]
    if unknown:
        refuse(
            node,
            Refusal(
                kind="share.denied",
                actor=principal.actor,
                detail={"reason": "unknown-partner", "title": meta.title, "tlp": meta.tlp},
            ),
            unknown,
            rule=None,
            now=now,
        )
        raise mark_audited(
            InvalidInputError(
                f"not a pinned partner: {', '.join(unknown)}",
                reason="unknown-partner",
                partners=unknown,
            )
        )
    _refuse_inconsistent(node, meta, None, principal=principal, now=now)
    # Sealed post-quantum when this node and every partner can read it so: the policy decides
    # with that fact, so terms that need post-quantum deny a share that cannot meet them.
    facts = Facts.of(meta, sealing=sealing_for([node.home, *partners.values()]))
    decisions = [
        (partners[p], node.policies.decide(facts.request(p, "share"), now=now))
        for p in meta.partners
    ]
    denied = [(p, d) for p, d in decisions if not d.allowed]
    if denied:
        first_partner, first = denied[0]
        raise deny(
            node,
            Refusal(kind="share.denied", actor=principal.actor, detail={"title": meta.title}),
            [(p.node_id, d) for p, d in denied],
            message=f"sharing with {first_partner.node_id} is denied: {first.summary}",
            now=now,
            count=node.metrics.shares.labels("denied").inc,
            denials=[
                {
                    "partner": p.node_id,
                    "summary": d.summary,
                    "rules": [r.to_json() for r in d.rules],
                    "unmet": [u.to_json() for u in d.unmet],
                }
                for p, d in denied
            ],
        )
    for partner, decision in decisions:  # a retain_max that ends before the embargo does
        entry = {
            "rules": [r.to_json() for r in decision.rules],
            "obligations": [o.to_json() for o in decision.obligations],
        }
        kept = [t for t in terms_of_decision(entry, stated_by="own") if t.kind == "retain_max"]
        shortest = min(kept, key=lambda t: t.days or 0, default=None)
        _refuse_inconsistent(node, meta, shortest, principal=principal, now=now, to=partner)
    return decisions


def _refuse_inconsistent(
    node: Node,
    meta: ShareTerms,
    retention: Term | None,
    *,
    principal: Principal,
    now: datetime,
    to: Recipient | None = None,
) -> None:
    """Audit and raise (422) terms that cannot all be honoured: an embargo at or after the
    expiry, or a ``retain_max`` (of ``to``'s decision) that ends before the embargo does."""
    found = inconsistent_terms(
        embargo_until=meta.embargo_until, expires_at=meta.expires_at, retention=retention, now=now
    )
    if found is None:
        return
    reason, message = found
    rule = retention.rule if retention is not None else None
    clause = retention.clause if retention is not None else None
    refuse(
        node,
        Refusal(
            kind="share.denied",
            actor=principal.actor,
            detail={"reason": reason, "title": meta.title, "tlp": meta.tlp},
        ),
        [to.node_id] if to is not None else list(meta.partners),
        rule=rule or reason,
        clause=clause,
        now=now,
        count=node.metrics.shares.labels("denied").inc,
    )
    raise mark_audited(
        InvalidInputError(
            f"inconsistent terms: {message}",
            reason=reason,
            rule=rule,
            clause=clause,
            partner=to.node_id if to is not None else None,
        )
    )


def share_artifact(
    node: Node,
    blobs: BlobStore,
    meta: ShareTerms,
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
    also: Callable[[sa.Connection, Artifact], None] | None = None,
) -> Artifact:
    """Seal ``source`` to the permitted partners and this node, store it, queue deliveries.

    The manifest's policy reference records each partner's decision with its obligations (a
    recipient's ``onward`` obligation is what lets it pass the artifact on), the partners the
    publisher pre-approves for onward sharing (``onward_approved``), and, for an onward share
    (``service.federation.onward``), the holder's ``onward`` decisions; ``upstream`` (the artifact
    passed on: its id and origin, and the chain's root origin) is kept on the row. ``also``
    runs in the transaction that records the artifact, given the artifact (the request's
    idempotency key is settled there: ``service.idempotency``); if it raises, nothing is shared.
    """
    now = node.now()
    stored = seal_into_store(
        node, blobs, meta, source, decisions=decisions, chain=chain, artifact_id=artifact_id,
        onward_approved=onward_approved, onward=onward, now=now,
    )  # fmt: skip
    rows = share_rows(
        node, stored, meta, principal=principal, decisions=decisions, kind=kind,
        upstream=upstream, now=now,
    )  # fmt: skip
    # The committed values, unvalidated (they were just built here): a validating model
    # constructor costs ten times as much, about 70 µs per share.
    artifact = Artifact.model_construct(**rows[_ARTIFACTS][0])
    try:
        # One transaction: the artifact, its audit events and its outbox rows, committed
        # together with the rows of shares running at the same time (group commit: Core
        # inserts, one commit for the group, and one sync of the group's blobs before it).
        group_commit(node.db).write(
            rows,
            prepare=blobs.sync_placed,
            before_commit=lambda: fault_point("share.before_db_commit"),
            deletes={SETTLE: [stored.blob]},  # its journal entry: referenced from now on
            within=None if also is None else lambda conn: also(conn, artifact),
        )
    except BaseException:
        blobs.delete(stored.blob)
        raise
    fault_point("share.db_committed")
    node.metrics.shares.labels("allowed").inc()
    return artifact


@dataclass(frozen=True)
class Stored:
    """A share sealed into the blob store (placed; durable after the store's next sync) and
    not yet recorded: its signed manifest, its blob and this node's record of the decisions."""

    manifest: Manifest
    envelope: Envelope
    ciphertext_size: int
    blob: str
    policy_ref: dict[str, Any]


def seal_into_store(
    node: Node,
    blobs: BlobStore,
    meta: ShareTerms,
    source: Any,
    *,
    decisions: Sequence[tuple[Recipient, Decision]],
    now: datetime,
    chain: tuple[dict[str, Any], ...] = (),
    artifact_id: str | None = None,
    onward_approved: Sequence[str] = (),
    onward: dict[str, Any] | None = None,
) -> Stored:
    """Seal ``source`` (age to the permitted partners and this node, a DSSE-signed manifest)
    into the blob store; nothing is recorded in the database."""
    artifact_id = artifact_id or new_artifact_id(now)
    parties = [node.home, *(p for p, _ in decisions)]
    recipients = recipients_for(parties)
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
            signer=node.keys.signer,
            policy=signed_policy,
            now=now,
            topics=meta.topics,
            purposes=meta.purposes,
            embargo_until=meta.embargo_until,
            expires_at=meta.expires_at,
            chain=chain,
            filename=meta.filename,
            evaluation=meta.evaluation,
        )
        fault_point("share.sealed")
        digest = writer.place()  # durable before the rows commit: see below
    except BaseException:
        writer.abort()
        raise
    fault_point("share.blob_committed")
    return Stored(sealed.manifest, sealed.envelope, sealed.ciphertext_size, digest, policy_ref)


def share_rows(
    node: Node,
    stored: Stored,
    meta: ShareTerms,
    *,
    principal: Principal,
    decisions: Sequence[tuple[Recipient, Decision]],
    now: datetime,
    kind: str = "share.allowed",
    upstream: tuple[str, str, str] | None = None,
    approval: dict[str, Any] | None = None,
) -> dict[sa.Table, list[dict[str, Any]]]:
    """The rows that make ``stored`` shared: the artifact, an outbox row and an audit entry
    (actor ``principal``; ``approval``, when a second approver carried it out, in the detail)
    per partner. The caller commits them in one transaction."""
    m = stored.manifest
    artifact_id = m.artifact_id
    values = artifact_row(
        m, stored.envelope, ciphertext_size=stored.ciphertext_size, blob=stored.blob,
        direction="sent", sender=node.node_id, now=now,
        obligations=[o.to_json() for _, d in decisions for o in d.obligations],
    )  # fmt: skip
    values["policy_ref"] = json.dumps(stored.policy_ref)  # ours: every decision and disclosure
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
        rule = first_rule(decision)
        detail = {"title": meta.title, "tlp": meta.tlp, "size": m.size,
                  "sealing": values["sealing"], "policy": decision.policy_ref}  # fmt: skip
        if upstream is not None:
            detail.update(upstream=upstream[0], origin=upstream[2])
        if approval is not None:
            detail["approval"] = approval
        events.append(
            audit_row(
                kind=kind,
                actor=principal.actor,
                partner=partner.node_id,
                artifact_id=artifact_id,
                digest=m.sha256,
                decision="allow",
                rule=",".join(r.id for r in decision.rules) or None,
                clause=rule.clause if rule else None,
                detail=detail,
                now=now,
            )
        )
    return {_ARTIFACTS: [values], _OUTBOX: outbox, AUDIT_TABLE: events}
