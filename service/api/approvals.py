"""``/v1/approvals``: actions waiting for a second approver (two-person control).

Roles: ``publisher`` and ``admin`` list pending actions and decide shares; only ``admin``
decides a policy reload. The domain (``service.artifacts.approvals``) refuses, audited, the
requester and the requester's name on another token; this router parses, calls it, carries out
an approved policy reload (``service.api.admin``) and shapes the answer.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query
from starlette.concurrency import run_in_threadpool

from service.api.admin import reload_policies
from service.api.deps import require_roles
from service.artifacts import approval_actions, approvals
from service.errors import ConflictError
from service.federation import onward as onward_domain
from service.models import Approval
from service.node import Node
from service.schemas import ApprovalOut, approval_out
from service.tokens import Principal, Role
from service.web import NodeDep

__all__ = ["router"]

router = APIRouter(prefix="/v1/approvals", tags=["approvals"])
Approver = Annotated[Principal, Depends(require_roles(Role.PUBLISHER, Role.ADMIN))]
PROBLEMS: dict[int | str, dict[str, Any]] = {
    code: {
        "description": "Problem document (RFC 9457)",
        "content": {"application/problem+json": {"schema": {"type": "object"}}},
    }
    for code in (401, 403, 404, 409, 422)
}


@router.get("", summary="Actions waiting for a second approver", responses=PROBLEMS)
def list_(
    node: NodeDep,
    principal: Approver,
    state: Literal["pending", "approved", "rejected", "expired", "all"] = "pending",
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> list[ApprovalOut]:
    rows = approvals.list_approvals(node, state=None if state == "all" else state, limit=limit)
    return [approval_out(r) for r in rows]


@router.get("/{approval_id}", summary="One pending or decided action", responses=PROBLEMS)
def get(approval_id: str, node: NodeDep, principal: Approver) -> ApprovalOut:
    return approval_out(approvals.get_approval(node, approval_id))


def _approve(node: Node, approval_id: str, principal: Principal) -> ApprovalOut:
    row = approvals.approve(node, approval_id, principal=principal)
    if row.action == "share":
        approvals.approve_share(node, row, principal=principal)
        return approval_out(approvals.get_approval(node, row.id))
    if row.action == "policy.reload":
        approval_actions.check_reload_unchanged(node, row)
    approvals.claim(node, row)  # one approver carries it out
    try:
        result = _carry_out(node, row, principal)
    except BaseException:
        approvals.release(node, row)
        raise
    done = approvals.mark_approved(node, row, principal=principal, result=result)
    return approval_out(done, result=result)


def _carry_out(node: Node, row: Approval, principal: Principal) -> dict[str, Any]:
    summary = json.loads(row.summary)
    if row.action == "share.onward":
        made = onward_domain.share_onward(
            node,
            summary["upstream"],
            targets=summary["partners"],
            principal=approvals.requester_of(row),
        )
        return {"artifact_id": made.id}
    actor = f"{row.requester}, approved by {principal.actor}"
    if row.action == "policy.reload":
        return reload_policies(node, actor=actor)
    if row.action in ("partner.add", "partner.remove"):
        return approval_actions.carry_out_partner_change(node, row, actor=actor)
    raise ConflictError(f"this node cannot carry out a {row.action}", reason="unknown-action")


@router.post(
    "/{approval_id}/approve",
    summary="Approve a pending action as its second person; it is carried out (audited)",
    responses=PROBLEMS,
)
async def approve(approval_id: str, node: NodeDep, principal: Approver) -> ApprovalOut:
    return await run_in_threadpool(_approve, node, approval_id, principal)


@router.post(
    "/{approval_id}/reject",
    summary="Reject a pending action; a share's ciphertext is deleted (audited)",
    responses=PROBLEMS,
)
async def reject(
    approval_id: str,
    node: NodeDep,
    principal: Approver,
    reason: Annotated[str, Query(max_length=500)] = "",
) -> ApprovalOut:
    row = await run_in_threadpool(
        lambda: approvals.reject(node, approval_id, principal=principal, reason=reason)
    )
    return approval_out(row)
