"""Carrying out retention: the worker that deletes the ciphertext the terms no longer allow
this node to hold.

Each round (:meth:`RetentionWorker.run_once`) reads up to ``retention_batch`` artifact rows
that still hold ciphertext and may be due: those whose stored due time has come, those revoked,
and those not yet worked out under the policy version in force (new rows, and every row after a
reload or an agreement changed the terms). For each it gathers the terms (:func:`terms_for`)
and asks the pure :func:`service.artifacts.retention_rules.deletion_due`; a row not due yet
keeps when it will be (``next_due``) and the version that was worked out under, so that a round
costs what is due, not what is held. Terms are a function of the row and the policy version
alone (each decision is taken at the row's own times, never at the round's), and a row's
deletion, once due, stays due; the stored time is only a way in, the rule decides again.
For each deletion due, ONE transaction marks the row (``blob`` None, ``deleted_at``; the row
and its signed manifest stay, as evidence), marks this node's onward copies of it the same way,
records ``artifact.deleted`` per copy with the rule and clause of the obligation, and, for a
received artifact deleted under an obligation of the agreement (whichever side's decision
states it: both sides' files state the same agreement), queues a ``deletion`` notice to the
origin carrying this node's signed statement (a ``deletion`` receipt); the origin records
``deletion.acknowledged``. A revocation's deletion is not notified again: the origin holds the
holder's signed receipt of the revocation already.
Only once that transaction has committed are the blobs removed, those no other row refers to
(``service.artifacts.sweep.drop_unreferenced``): a crash in between leaves an
unreferenced blob, which the start-up sweep (``service.artifacts.sweep``) removes, never a row
claiming ciphertext it does not have. A repeated round finds nothing left to do.

Where the terms come from: the decisions stored with the artifact (``policy_ref``: this node's
share decisions at the origin; at a recipient, the origin's decision disclosed to it), the
obligations recorded with the row (the share or receive decision), and, at a recipient, this
node's policy on reading it (``retain_max`` is stated on ``read`` rules in the example MOUs).

This module does not send the notices (``service.federation.outbox``) nor schedule itself
(``service.app.register_workers``).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session, col, select

from crypto.receipt import Receipt, sign_receipt
from policies import Decision
from service.artifacts.enforce import Facts
from service.artifacts.retention_rules import (
    Deletion,
    RetentionFacts,
    Term,
    deletion_due,
    next_due,
    terms_of_decision,
)
from service.artifacts.rows import json_list, lock_with_onward_copies
from service.artifacts.sweep import drop_unreferenced
from service.audit.log import record
from service.blob_journal import record_deletions
from service.models import Artifact, Outbox
from service.node import Node
from service.policy_store import decision_scope

__all__ = ["Due", "RetentionRound", "RetentionWorker", "due_now", "terms_for"]

log = logging.getLogger("entente.retention")


@dataclass(frozen=True)
class Due:
    """An artifact whose ciphertext must go, and why."""

    artifact_id: str
    origin: str
    direction: str
    deletion: Deletion


@dataclass(frozen=True)
class RetentionRound:
    deleted: tuple[Due, ...]
    more: bool  # a full batch: more may be due, the next round should follow at once


def _permits(
    node: Node, partner: str, when: datetime
) -> dict[str, set[tuple[str, int | None]]] | None:
    """This node's policy about ``partner`` in force at ``when`` (the time of the decision:
    after an amendment the rule that stated an obligation may be the earlier version's):
    each permit's retention obligations."""
    policy = node.policies.current.at(partner, when)
    if policy is None:
        return None
    return {
        p.id: {(o.kind, o.days if o.kind == "retain_max" else None) for o in p.obligations}
        for p in policy.permits
    }


def _decided_terms(node: Node, decision: Decision, partner: str, when: datetime) -> list[Term]:
    if not decision.allowed:
        return []
    entry = {
        "rules": [r.to_json() for r in decision.rules],
        "obligations": [o.to_json() for o in decision.obligations],
    }
    return terms_of_decision(entry, stated_by="own", permits=_permits(node, partner, when))


def terms_for(node: Node, row: Artifact) -> tuple[Term, ...]:
    """Every retention term that binds this node's copy of ``row``."""
    received = row.direction == "received"
    terms: list[Term] = []
    try:
        stored = json.loads(row.policy_ref or "{}")
    except ValueError:
        stored = {}
    decisions = stored.get("decisions") if isinstance(stored, dict) else None
    for entry in decisions if isinstance(decisions, list) else []:
        if not isinstance(entry, dict):
            continue
        partner = str(entry.get("partner", ""))
        permits = None if received else _permits(node, partner, row.recorded_at)
        stated_by = "origin" if received else "own"
        terms += terms_of_decision(entry, stated_by=stated_by, permits=permits)
    if received:  # this node's own terms on receiving and reading what the origin sent
        facts = Facts.of_row(row)
        readable_from = max(row.recorded_at, row.embargo_until or row.recorded_at)
        for action, when in (("receive", row.recorded_at), ("read", readable_from)):
            decision = node.policies.decide(facts.request(row.origin, action), now=when)
            terms += _decided_terms(node, decision, row.origin, when)
    known = {(t.kind, t.days) for t in terms}
    for obligation in terms_of_decision(
        {"obligations": json_list(row.obligations)}, stated_by="own"
    ):
        if (obligation.kind, obligation.days) not in known:  # recorded, its rule not known here
            terms.append(obligation)
    return tuple(terms)


def retention_facts(node: Node, row: Artifact) -> RetentionFacts:
    return RetentionFacts(
        artifact_id=row.id,
        recorded_at=row.recorded_at,
        holds_ciphertext=row.blob is not None,
        revoked_at=row.revoked_at,
        expires_at=row.expires_at,
        terms=terms_for(node, row),
    )


def due_now(node: Node, row: Artifact, *, now: datetime) -> Deletion | None:
    return deletion_due(retention_facts(node, row), now=now)


_TABLE = Artifact.__table__  # type: ignore[attr-defined]
_WORKED_OUT = (
    sa.update(_TABLE)
    .where(_TABLE.c.id == sa.bindparam("_id"), _TABLE.c.origin == sa.bindparam("_origin"))
    .values(retention_due_at=sa.bindparam("_due_at"), retention_version=sa.bindparam("_version"))
)


def may_be_due(version: int, now: datetime) -> tuple[sa.ColumnElement[bool], ...]:
    """The rows a round looks at, one condition per way in (each a range of a partial index of
    the rows holding ciphertext): due by their stored time, revoked, or worked out under an
    older version than ``version`` (a new row's is -1)."""
    held = _TABLE.c.blob.is_not(None)
    return (
        sa.and_(held, _TABLE.c.retention_version < version),
        sa.and_(held, _TABLE.c.retention_due_at <= now),
        sa.and_(held, _TABLE.c.revoked_at.is_not(None)),
    )


class RetentionWorker:
    """Rounds of the retention rules over the held rows that may be due, a batch at a time."""

    def __init__(self, node: Node) -> None:
        self.node = node

    def plan(self, *, limit: int | None = None) -> list[Due]:
        """What the rules would delete now, deleting nothing (``entente artifacts sweep
        --dry-run``): every row that holds ciphertext, or the first ``limit`` found."""
        now = self.node.now()
        found: list[Due] = []
        with self.node.db.session() as session, decision_scope():
            rows = session.exec(select(Artifact).where(col(Artifact.blob).is_not(None)))
            for row in rows:
                deletion = due_now(self.node, row, now=now)
                if deletion is not None:
                    found.append(Due(row.id, row.origin, row.direction, deletion))
                    if limit is not None and len(found) >= limit:
                        break
        return found

    def run_once(self) -> RetentionRound:
        """One bounded round: look at up to ``retention_batch`` rows that may be due, delete
        what is, and keep for the others when they will be."""
        node = self.node
        size = node.settings.retention_batch
        now = node.now()
        with node.db.session() as session, decision_scope():  # one policy version a round
            version = node.policies.version
            found: dict[tuple[str, str], Artifact] = {}
            for way_in in may_be_due(version, now):  # one indexed query each: no scan of all
                for row in session.exec(select(Artifact).where(way_in).limit(size)):
                    found.setdefault((row.id, row.origin), row)
                if len(found) >= size:
                    break
            rows = list(found.values())[:size]
            more = len(found) >= size
            due: list[Due] = []
            later: list[dict[str, Any]] = []
            for row in rows:
                facts = retention_facts(node, row)
                deletion = deletion_due(facts, now=now)
                if deletion is not None:
                    due.append(Due(row.id, row.origin, row.direction, deletion))
                else:
                    later.append(
                        {"_id": row.id, "_origin": row.origin,
                         "_due_at": next_due(facts), "_version": version}
                    )  # fmt: skip
            if later:  # in key order: replicas' rounds lock shared rows in the same order
                later.sort(key=lambda r: (r["_id"], r["_origin"]))
                session.connection().execute(_WORKED_OUT, later)
        done = tuple(d for d in due if delete_copy(node, d, now=now))
        if done:
            log.info("retention: deleted the ciphertext of %d artifact(s)", len(done))
        return RetentionRound(done, more)


def _mark(
    session: Session, node: Node, row: Artifact, due: Due, now: datetime, **extra: Any
) -> str:
    """Mark ``row`` deleted and audit it; return the blob it held."""
    blob = row.blob or ""
    row.blob = None
    row.deleted_at = now
    session.add(row)
    deletion = due.deletion
    record(
        session,
        kind="artifact.deleted",
        actor=f"node:{node.node_id}",
        partner=row.origin if row.direction == "received" else None,
        artifact_id=row.id,
        digest=row.sha256,
        rule=deletion.rule,
        clause=deletion.clause,
        detail={
            "reason": deletion.reason,
            "due_at": deletion.due_at.isoformat(),
            "obligation": deletion.term.to_json() if deletion.term else None,
            **extra,
        },
        now=now,
    )
    return blob


def delete_copy(node: Node, due: Due, *, now: datetime) -> bool:
    """Delete the ciphertext of ``due`` and of this node's onward copies of it; False when
    another round (or a revocation) got there first."""
    blobs: list[str] = []
    with node.db.session() as session:
        holding = col(Artifact.blob).is_not(None)
        row, copies = lock_with_onward_copies(
            session, node.node_id, due.artifact_id, due.origin, holding
        )
        if row is None or row.blob is None:
            return False
        # An obligation of the agreement (not a revocation, which the origin ordered and has a
        # receipt for): the holder tells the origin, with its signed statement.
        acknowledge = row.direction == "received" and due.deletion.term is not None
        blobs.append(_mark(session, node, row, due, now, acknowledged=acknowledge))
        for copy in copies:
            blobs.append(_mark(session, node, copy, due, now, upstream=row.id))
        if acknowledge:
            session.add(_deletion_notice(node, row, due.deletion, now))
        record_deletions(session, blobs)  # deleted after the commit; journaled till then
    drop_unreferenced(node, blobs)
    return True


def _deletion_notice(node: Node, row: Artifact, deletion: Deletion, now: datetime) -> Outbox:
    """The notice to the origin: this node's signed statement that it deleted its copy."""
    statement = sign_receipt(
        Receipt(
            kind="deletion",
            artifact_id=row.id,
            sha256=row.sha256,
            receiver=node.node_id,  # the holder that deleted it
            sender=row.origin,  # whose terms required it
            received_at=now,
        ),
        key=node.keys.signer,
    )
    payload = {
        "type": "deletion",
        "reason": deletion.reason,
        "rule": deletion.rule,
        "clause": deletion.clause or "",
        "deleted_at": now.isoformat(),
        "statement": statement.to_json(),
    }
    return Outbox(
        partner=row.origin,
        kind="notice",
        artifact_id=row.id,
        artifact_origin=row.origin,
        payload=json.dumps(payload),
        created_at=now,
        next_attempt_at=now,
    )
