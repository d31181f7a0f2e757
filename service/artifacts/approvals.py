"""Two-person control: actions that wait for a second approver.

Where the operator requires it (``Settings.two_person_tlp``, ``two_person_policy_reload``), an
action does not happen when it is asked for. The request is stored as a pending
:class:`~service.models.Approval` (audited ``approval.requested``); a second principal, with a
different token AND a different name and a role that may approve the action, approves it (audited
``approval.granted`` naming both) and it is carried out, or anyone who may approve it rejects it
(``approval.rejected``). A pending action expires after ``Settings.approval_ttl_seconds``
(``approval.expired``): lazily, whenever approvals are listed or decided, and by the
``approvals-expire`` worker. A refused approval (the requester, the same person under another
token, the wrong role) is audited ``approval.refused`` and raised as a 403 with its ``reason``.

A pending share is sealed at request time, exactly as a share is (age to the partners and this
node, the DSSE manifest signed then, with the decisions of that moment), into the blob store:
nothing but ciphertext is at rest and the approver approves the very bytes the partners will
receive. No artifact row, outbox row or feed entry exists until approval, so no partner can
receive or pull it; approval re-decides every partner's policy, refuses if the decisions
changed since they were signed (``policy-changed``: share again), and then commits the artifact,
its deliveries and their audit entries with the approval in one transaction. A rejected or
expired share's blob is deleted (and the start-up sweep removes it, should that fail).

This module does not parse requests (``service.api.approvals``) and does not reload policies
(the API carries out an approved reload, ``service.api.admin``).
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlmodel import col, select

from crypto.sealed import Manifest, load_envelope
from policies import Decision
from service.artifacts.rows import Recipient
from service.artifacts.sealing import recipients_for
from service.artifacts.share import Stored, decide_share, seal_into_store, share_rows
from service.artifacts.terms import ShareTerms
from service.audit.log import AUDIT_TABLE, audit_row
from service.audit.refusals import mark_audited
from service.blob_journal import IN_FLIGHT, SETTLE, deletion_rows
from service.blobs import BlobStore
from service.commits import group_commit
from service.errors import ConflictError, ForbiddenError, NotFoundError
from service.models import Approval, Token
from service.node import Node
from service.tokens import Principal, Role

__all__ = [
    "APPROVERS",
    "approve",
    "approve_share",
    "check_approver",
    "claim",
    "expire_due",
    "get_approval",
    "list_approvals",
    "mark_approved",
    "reject",
    "release",
    "request_action",
    "request_share",
    "requester_of",
]

# Which roles may approve (and reject, and list) each kind of action.
APPROVERS: dict[str, frozenset[Role]] = {
    "share": frozenset({Role.PUBLISHER, Role.ADMIN}),
    "share.onward": frozenset({Role.PUBLISHER, Role.ADMIN}),
    "policy.reload": frozenset({Role.ADMIN}),
    "partner.add": frozenset({Role.ADMIN}),
    "partner.remove": frozenset({Role.ADMIN}),
}
SYSTEM_ACTOR = "node:approvals"
_APPROVALS = Approval.__table__  # type: ignore[attr-defined]
Also = Callable[[sa.Connection, Approval], None] | None  # more work for the request's transaction


def _row(
    node: Node,
    *,
    action: str,
    principal: Principal,
    now: datetime,
    summary: dict[str, Any],
    payload: dict[str, Any],
    artifact_id: str | None = None,
    blob: str | None = None,
) -> dict[str, Any]:
    return {
        "id": f"apr_{secrets.token_hex(12)}",
        "action": action,
        "state": "pending",
        "requested_by": principal.token_id,
        "requester_name": principal.name,
        "requester": principal.actor,
        "requested_at": now,
        "expires_at": now + timedelta(seconds=node.settings.approval_ttl_seconds),
        "summary": json.dumps(summary),
        "payload": json.dumps({**payload, "role": principal.role.value}),
        "artifact_id": artifact_id,
        "blob": blob,
        "decided_by": None,
        "decided_at": None,
        "reason": None,
    }


def _requested(values: dict[str, Any], *, digest: str | None = None) -> dict[str, Any]:
    return audit_row(
        kind="approval.requested",
        actor=values["requester"],
        artifact_id=values["artifact_id"],
        digest=digest,
        detail={
            "approval": values["id"],
            "action": values["action"],
            "expires_at": values["expires_at"].isoformat(),
            **json.loads(values["summary"]),
        },
        now=values["requested_at"],
    )


def request_share(
    node: Node,
    blobs: BlobStore,
    terms: ShareTerms,
    source: Any,
    *,
    principal: Principal,
    decisions: Sequence[tuple[Recipient, Decision]],
    onward_approved: Sequence[str] = (),
    also: Also = None,
) -> Approval:
    """Seal ``source`` into the blob store as a share would, and store it as a pending action
    (no artifact row, no delivery): one transaction writes the approval, its audit entry (and
    runs ``also``: see ``share.share_artifact``), after the blob is durable."""
    now = node.now()
    stored = seal_into_store(
        node, blobs, terms, source, decisions=decisions, onward_approved=onward_approved, now=now
    )
    m = stored.manifest
    # Everything the approval makes binding, as the approver is shown it and as the audit
    # entries of the request and the decision record it: the terms, and the originator's
    # approval of onward sharing the signed manifest grants.
    summary = {
        "title": terms.title, "tlp": terms.tlp, "partners": list(terms.partners),
        "topics": list(terms.topics), "purposes": list(terms.purposes),
        "embargo_until": _iso(terms.embargo_until), "expires_at": _iso(terms.expires_at),
        "onward_approved": list(onward_approved), "filename": m.filename,
        "artifact_id": m.artifact_id, "size": m.size, "sha256": m.sha256,
    }  # fmt: skip
    payload = {
        "manifest": stored.envelope.to_bytes().decode("utf-8"),
        "ciphertext_size": stored.ciphertext_size,
        "policy_ref": stored.policy_ref,
        "terms": {
            "title": terms.title, "tlp": terms.tlp, "partners": list(terms.partners),
            "topics": list(terms.topics), "purposes": list(terms.purposes),
            "embargo_until": _iso(terms.embargo_until), "expires_at": _iso(terms.expires_at),
        },
    }  # fmt: skip
    values = _row(
        node, action="share", principal=principal, now=now, summary=summary, payload=payload,
        artifact_id=m.artifact_id, blob=stored.blob,
    )  # fmt: skip
    try:  # the pending approval refers to the blob from now on: its journal entry goes
        return _store(node, values, also, m.sha256, prepare=blobs.sync_placed,
                      deletes={SETTLE: [stored.blob]})  # fmt: skip
    except BaseException:
        blobs.delete(stored.blob)
        raise


def request_action(
    node: Node,
    *,
    action: str,
    principal: Principal,
    summary: dict[str, Any],
    payload: dict[str, Any] | None = None,
    also: Also = None,
) -> Approval:
    """Store an action that needs no blob (a policy reload, an onward share, a partner change)
    as pending, with its audit entry, in one transaction (``also`` in it); ``payload`` is what
    carrying it out needs."""
    values = _row(node, action=action, principal=principal, now=node.now(), summary=summary,
                  payload=payload or {})  # fmt: skip
    return _store(node, values, also)


def _store(node: Node, values: dict[str, Any], also: Also, digest: str | None = None,
           **write: Any) -> Approval:  # fmt: skip
    row = Approval.model_construct(**values)
    rows = {_APPROVALS: [values], AUDIT_TABLE: [_requested(values, digest=digest)]}
    group_commit(node.db).write(rows, within=also and (lambda conn: also(conn, row)), **write)
    return row


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _time(value: Any) -> datetime | None:
    return datetime.fromisoformat(value) if isinstance(value, str) else None


# --- reading and expiring ---------------------------------------------------------------------


def _close(
    node: Node, row: Approval, *, state: str, kind: str, actor: str, reason: str | None
) -> bool:
    """Move a pending ``row`` to ``state`` with its audit entry, in one transaction; False when
    another request decided it first. A closed share's ciphertext is deleted."""
    now = node.now()
    with node.db.engine.begin() as conn:
        done = conn.execute(
            sa.update(_APPROVALS)
            .where(_APPROVALS.c.id == row.id, _APPROVALS.c.state == "pending")
            .values(state=state, decided_by=actor, decided_at=now, reason=reason)
        )
        if done.rowcount != 1:
            return False
        conn.execute(
            sa.insert(AUDIT_TABLE),
            [
                audit_row(
                    kind=kind,
                    actor=actor,
                    artifact_id=row.artifact_id,
                    detail={
                        "approval": row.id, "action": row.action, "requested_by": row.requester,
                        "requested_at": row.requested_at.isoformat(),
                        "expires_at": row.expires_at.isoformat(), "reason": reason,
                        **json.loads(row.summary),
                    },
                    now=now,
                )
            ],
        )  # fmt: skip
        if row.blob is not None:  # deleted below: journaled, in case we crash before that
            conn.execute(sa.insert(IN_FLIGHT), deletion_rows([row.blob]))
    if row.blob is not None:
        node.blobs.delete(row.blob)
    return True


def expire_due(node: Node) -> int:
    """Expire every pending action past its time (audited ``approval.expired``); how many."""
    now = node.now()
    query = select(Approval).where(Approval.state == "pending", col(Approval.expires_at) <= now)
    with node.db.session() as session:
        due = list(session.exec(query))
    return sum(
        _close(node, row, state="expired", kind="approval.expired", actor=SYSTEM_ACTOR,
               reason="not approved in time")
        for row in due
    )  # fmt: skip


def list_approvals(
    node: Node, *, state: str | None = "pending", limit: int = 100
) -> list[Approval]:
    """Pending actions (or those in ``state``; ``None``: all), newest first, after expiring
    the ones past their time."""
    expire_due(node)
    query = select(Approval).order_by(col(Approval.requested_at).desc()).limit(limit)
    if state is not None:
        query = query.where(Approval.state == state)
    with node.db.session() as session:
        return list(session.exec(query))


def get_approval(node: Node, approval_id: str) -> Approval:
    expire_due(node)
    with node.db.session() as session:
        row = session.get(Approval, approval_id)
    if row is None:
        raise NotFoundError(f"no pending action {approval_id!r}")
    return row


# --- deciding ---------------------------------------------------------------------------------


def _refuse(node: Node, row: Approval, principal: Principal, reason: str, message: str) -> None:
    with node.db.engine.begin() as conn:
        conn.execute(
            sa.insert(AUDIT_TABLE),
            [
                audit_row(
                    kind="approval.refused", actor=principal.actor, artifact_id=row.artifact_id,
                    decision="deny",
                    detail={"approval": row.id, "action": row.action, "reason": reason,
                            "requested_by": row.requester},
                    now=node.now(),
                )
            ],
        )  # fmt: skip
    raise mark_audited(ForbiddenError(message, reason=reason, approval=row.id))


def _open(node: Node, approval_id: str) -> Approval:
    """The pending action ``approval_id``; a decided or expired one is a conflict."""
    row = get_approval(node, approval_id)  # expires it first if its time has passed
    if row.state != "pending":
        raise ConflictError(
            f"pending action {row.id} is {row.state}, not pending", reason=row.state
        )
    return row


def check_approver(node: Node, row: Approval, principal: Principal) -> None:
    """Refuse (audited, 403 with a ``reason``) an approver who may not approve ``row``: a role
    that may not approve its action, the requester's own token, or the requester's name on
    another token (the same person twice)."""
    roles = APPROVERS.get(row.action, frozenset())
    if principal.role not in roles:
        needed = " or ".join(sorted(r.value for r in roles))
        role = principal.role.value
        _refuse(node, row, principal, "role",
                f"the {role} role may not approve a {row.action}; it needs {needed}")  # fmt: skip
    if principal.token_id == row.requested_by:
        _refuse(node, row, principal, "own-request",
                "the requester may not approve their own action: a second person must")  # fmt: skip
    if principal.name.strip().casefold() == row.requester_name.strip().casefold():
        _refuse(node, row, principal, "same-person",
                f"{principal.name!r} requested this action (with another token): "
                "a second person must approve it")  # fmt: skip
    with node.db.session() as session:  # carried out in the requester's name: still theirs?
        token = session.get(Token, row.requested_by)
    if token is None or token.revoked_at is not None:
        _refuse(node, row, principal, "requester-revoked",
                f"the token that requested this action ({row.requested_by}) was revoked: "
                "reject it, and have a valid token ask again if it is still wanted")  # fmt: skip


def approve(node: Node, approval_id: str, *, principal: Principal) -> Approval:
    """Check that ``principal`` may approve the pending action; returns it (still pending).

    A share is carried out by :func:`approve_share`, in the approval's own transaction. Any
    other action (an onward share, a policy reload) is carried out by the caller between
    :func:`claim` and :func:`mark_approved` (or :func:`release`, when it failed)."""
    row = _open(node, approval_id)
    check_approver(node, row, principal)
    return row


def requester_of(row: Approval) -> Principal:
    """The principal who asked for ``row``: the action is carried out in their name."""
    role = json.loads(row.payload).get("role", Role.PUBLISHER.value)
    return Principal(row.requested_by, row.requester_name, Role(role))


def claim(node: Node, row: Approval) -> None:
    """Take ``row`` from ``pending`` to ``carrying-out``, so that two approvers at once cannot
    both carry it out; a conflict when another request took or decided it first."""
    with node.db.engine.begin() as conn:
        done = conn.execute(
            sa.update(_APPROVALS)
            .where(_APPROVALS.c.id == row.id, _APPROVALS.c.state == "pending")
            .values(state="carrying-out")
        )
    if done.rowcount != 1:
        raise ConflictError(f"pending action {row.id} was decided meanwhile", reason="decided")


def release(node: Node, row: Approval) -> None:
    """Put a claimed action back to ``pending`` (carrying it out failed; nothing changed)."""
    with node.db.engine.begin() as conn:
        conn.execute(
            sa.update(_APPROVALS)
            .where(_APPROVALS.c.id == row.id, _APPROVALS.c.state == "carrying-out")
            .values(state="pending")
        )


def mark_approved(
    node: Node, row: Approval, *, principal: Principal, result: dict[str, Any] | None = None
) -> Approval:
    """Record that ``principal`` approved the claimed ``row`` and it was carried out
    (``result``, e.g. the artifact an onward share made, goes into the audit entry)."""
    with node.db.engine.begin() as conn:
        _grant(conn, node, row, principal, now=node.now(), state="carrying-out", result=result)
    return get_approval(node, row.id)


def _grant(
    conn: sa.Connection,
    node: Node,
    row: Approval,
    principal: Principal,
    *,
    now: datetime,
    state: str = "pending",
    result: dict[str, Any] | None = None,
) -> None:
    done = conn.execute(
        sa.update(_APPROVALS)
        .where(_APPROVALS.c.id == row.id, _APPROVALS.c.state == state)
        .values(state="approved", decided_by=principal.actor, decided_at=now)
    )
    if done.rowcount != 1:
        raise ConflictError(f"pending action {row.id} was decided meanwhile", reason="decided")
    conn.execute(
        sa.insert(AUDIT_TABLE),
        [
            audit_row(
                kind="approval.granted", actor=principal.actor, artifact_id=row.artifact_id,
                decision="allow",
                detail={"approval": row.id, "action": row.action,
                        "requested_by": row.requester, "approved_by": principal.actor,
                        "requested_at": row.requested_at.isoformat(),
                        **json.loads(row.summary), **({"result": result} if result else {})},
                now=now,
            )
        ],
    )  # fmt: skip


def _entries(decisions: Sequence[tuple[Recipient, Decision]]) -> list[dict[str, Any]]:
    """What the signed manifest committed to, per partner (``share._policy_refs``' record)."""
    return [
        {"partner": p.node_id, "effect": d.effect, "policy": d.policy_ref,
         "rules": [r.to_json() for r in d.rules],
         "obligations": [o.to_json() for o in d.obligations]}
        for p, d in decisions
    ]  # fmt: skip


def approve_share(node: Node, row: Approval, *, principal: Principal) -> str:
    """Carry out an approved pending share: re-decide, then ONE transaction writes the
    approval, the artifact, its outbox rows and audit entries. Returns the artifact id."""
    payload = json.loads(row.payload)
    t = payload["terms"]
    terms = ShareTerms(
        title=t["title"], tlp=t["tlp"], partners=tuple(t["partners"]),
        topics=tuple(t["topics"]), purposes=tuple(t["purposes"]),
        embargo_until=_time(t["embargo_until"]), expires_at=_time(t["expires_at"]),
    )  # fmt: skip
    # The policies decide again now: a denial is audited and raised as for any share.
    decisions = decide_share(node, terms, principal=principal)
    signed = json.loads(json.dumps(_entries(decisions)))
    if signed != payload["policy_ref"]["decisions"]:
        raise ConflictError(
            "the policy decisions changed since this share was requested and signed: "
            "reject it and share again",
            reason="policy-changed",
        )
    envelope = load_envelope(payload["manifest"].encode("utf-8"))
    manifest = Manifest.from_payload(envelope.payload)
    # Sealed to the keys pinned when it was requested: a partner that rotated (a leaked key,
    # say) or was pinned again since would be sent a ciphertext its retired key opens.
    if set(manifest.recipients) != set(recipients_for([node.home, *(p for p, _ in decisions)])):
        raise ConflictError(
            "a recipient's keys changed since this share was sealed (a partner rotated its keys "
            "or was pinned again): reject it and share again",
            reason="recipients-changed",
        )
    stored = Stored(
        manifest=manifest,
        envelope=envelope,
        ciphertext_size=int(payload["ciphertext_size"]),
        blob=str(row.blob),
        policy_ref=payload["policy_ref"],
    )
    requester = requester_of(row)
    now = node.now()
    rows = share_rows(
        node, stored, terms, principal=requester, decisions=decisions, now=now,
        approval={"id": row.id, "requested_by": row.requester, "approved_by": principal.actor},
    )  # fmt: skip
    with node.db.engine.begin() as conn:
        _grant(conn, node, row, principal, now=now)
        for table, values in rows.items():
            conn.execute(sa.insert(table), values)
    node.metrics.shares.labels("allowed").inc()
    return stored.manifest.artifact_id


def reject(node: Node, approval_id: str, *, principal: Principal, reason: str) -> Approval:
    """Reject a pending action (any role that may approve it; the requester withdraws it)."""
    row = _open(node, approval_id)
    roles = APPROVERS.get(row.action, frozenset())
    if principal.role not in roles:
        _refuse(node, row, principal, "role",
                f"the {principal.role.value} role may not decide a {row.action}")  # fmt: skip
    if not _close(node, row, state="rejected", kind="approval.rejected", actor=principal.actor,
                  reason=reason or "rejected"):  # fmt: skip
        raise ConflictError(f"pending action {row.id} was decided meanwhile", reason="decided")
    return get_approval(node, row.id)
