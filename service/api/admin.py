"""``/v1/admin``: operator actions on a running node (admin role)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from policies.errors import PolicyError
from service.api.deps import require_roles
from service.artifacts import approval_actions
from service.errors import InvalidInputError
from service.federation import agreements as agreement_domain
from service.node import Node
from service.schemas import approval_out
from service.tokens import Principal, Role
from service.web import NodeDep

router = APIRouter(prefix="/v1/admin", tags=["admin"])
Admin = Annotated[Principal, Depends(require_roles(Role.ADMIN))]
PROBLEMS: dict[int | str, dict[str, Any]] = {
    code: {
        "description": "Problem document (RFC 9457)",
        "content": {"application/problem+json": {"schema": {"type": "object"}}},
    }
    for code in (401, 403, 422)
}


def reload_policies(node: Node, *, actor: str) -> dict[str, Any]:
    """Re-read ``<home>/policies`` and commit it as the new version every replica decides on;
    all or nothing, and audited when the active set changes."""
    try:
        published = node.policies.reload(actor=actor, now=node.now())
    except PolicyError as exc:
        raise InvalidInputError(
            f"the policy folder was not loaded (the previous set stays in force): {exc}",
            reason="policy-load",
        ) from None
    snapshot = published.snapshot
    return {
        "sha256": snapshot.sha256,
        "version": snapshot.version,
        "changed": published.changed,
        "policies": snapshot.policies.refs(),
    }


@router.post(
    "/policies/reload",
    summary="Reload the MOU policies for every replica of the node (all or nothing, audited); "
    "with ENTENTE_TWO_PERSON_POLICY_RELOAD, 202: pending a second admin's approval",
    responses=PROBLEMS,
)
async def reload(node: NodeDep, principal: Admin) -> Any:
    if node.settings.two_person_policy_reload:
        # Two-person control: a second admin approves it (POST /v1/approvals/{id}/approve).
        row = await run_in_threadpool(approval_actions.request_reload, node, principal=principal)
        return JSONResponse(
            approval_out(row).model_dump(mode="json"),
            status_code=202,
            headers={"Location": f"/v1/approvals/{row.id}"},
        )
    return await run_in_threadpool(reload_policies, node, actor=principal.actor)


Viewer = Annotated[Principal, Depends(require_roles(Role.ADMIN, Role.AUDITOR))]


@router.get(
    "/agreements",
    summary="The signed agreements the node holds (adopted, superseded, awaiting signatures) "
    "and the partners whose terms come from an unsigned local file",
    responses=PROBLEMS,
)
async def agreements(node: NodeDep, principal: Viewer) -> Any:
    def work() -> dict[str, Any]:
        snapshot = node.policies.snapshot()
        return {
            "version": snapshot.version,
            "agreements": [a.to_json() for a in snapshot.agreements],
            "unsigned": list(snapshot.unsigned),
        }

    return await run_in_threadpool(work)


@router.get(
    "/agreements/compare/{partner}",
    summary="Compare the signed agreements held here with those the partner holds",
    responses={**PROBLEMS, 404: PROBLEMS[422], 502: PROBLEMS[422]},
)
async def compare_agreements(partner: str, node: NodeDep, principal: Viewer) -> Any:
    return await run_in_threadpool(agreement_domain.compare, node, partner)
