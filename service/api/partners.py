"""``/v1/admin/partners``: pin and unpin partners through the running node (admin role).

With two-person control on partner changes (``ENTENTE_TWO_PERSON_PARTNER_CHANGES``), a change
answers 202 with the pending approval: the descriptor and fingerprint are checked at once (bad
input is refused now, not at approval) and a second admin approves it through
``/v1/approvals`` (``service.artifacts.approval_actions``). Otherwise it is carried out at once.
Either way it is audited (``partner.added``, ``partner.replaced``, ``partner.removed``).
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from service.api.bodies import json_body, parse_json, read_body
from service.api.deps import require_roles
from service.artifacts import approval_actions
from service.node import Node
from service.partners import add_partner, list_partners, remove_partner
from service.schemas import approval_out
from service.tokens import Principal, Role
from service.web import NodeDep

__all__ = ["router"]

router = APIRouter(prefix="/v1/admin/partners", tags=["admin"])
Admin = Annotated[Principal, Depends(require_roles(Role.ADMIN))]
Viewer = Annotated[Principal, Depends(require_roles(Role.ADMIN, Role.AUDITOR))]
PROBLEMS: dict[int | str, dict[str, Any]] = {
    code: {
        "description": "Problem document (RFC 9457)",
        "content": {"application/problem+json": {"schema": {"type": "object"}}},
    }
    for code in (400, 401, 403, 404, 409, 413, 422)
}


class PartnerIn(BaseModel):
    """A partner to pin: its signed descriptor and the fingerprint compared out of band."""

    model_config = ConfigDict(extra="forbid")

    descriptor: dict[str, Any] = Field(description="The partner's descriptor (DSSE envelope)")
    fingerprint: str = Field(max_length=200, description="Its key's fingerprint, out of band")
    replace: bool = Field(default=False, description="Re-pin an existing node id")


def _pending(row: Any) -> JSONResponse:
    return JSONResponse(
        approval_out(row).model_dump(mode="json"),
        status_code=202,
        headers={"Location": f"/v1/approvals/{row.id}"},
    )


def _listed(node: Node) -> list[dict[str, Any]]:
    with node.db.session() as session:
        return [
            {"node_id": p.node_id, "name": p.name, "url": p.url, "fingerprint": p.fingerprint,
             "post_quantum": p.mldsa_key is not None}
            for p in list_partners(session)
        ]  # fmt: skip


@router.get("", summary="The pinned partners", responses=PROBLEMS)
async def partners(node: NodeDep, principal: Viewer) -> Any:
    return await run_in_threadpool(_listed, node)


@router.post(
    "",
    summary="Pin a partner (audited); with two-person control, 202: pending a second admin",
    status_code=201,
    openapi_extra=json_body(PartnerIn),
    responses=PROBLEMS,
)
async def pin(request: Request, node: NodeDep, principal: Admin) -> Any:
    # The body is read only after the caller is known to be an admin (never before auth).
    body = parse_json(await read_body(request, limit=node.settings.max_json_body_bytes), PartnerIn)
    raw = json.dumps(body.descriptor).encode()

    def work() -> Any:
        if node.settings.two_person_partner_changes:
            return _pending(
                approval_actions.request_partner_add(
                    node,
                    principal=principal,
                    descriptor=raw,
                    fingerprint=body.fingerprint,
                    replace=body.replace,
                )
            )
        with node.db.session() as session:
            row = add_partner(
                session, descriptor_bytes=raw, fingerprint=body.fingerprint,
                own_node_id=node.node_id, now=node.now(), actor=principal.actor,
                replace=body.replace,
            )  # fmt: skip
            return {"partner": row.node_id, "fingerprint": row.fingerprint}

    return await run_in_threadpool(work)


@router.delete(
    "/{partner}",
    summary="Unpin a partner (audited); with two-person control, 202: pending a second admin",
    responses=PROBLEMS,
)
async def unpin(partner: str, node: NodeDep, principal: Admin) -> Any:
    def work() -> Any:
        if node.settings.two_person_partner_changes:
            return _pending(
                approval_actions.request_partner_remove(node, principal=principal, partner=partner)
            )
        with node.db.session() as session:
            remove_partner(session, node_id=partner, now=node.now(), actor=principal.actor)
        return {"partner": partner, "removed": True}

    return await run_in_threadpool(work)
