"""``/v1/admin/webhooks``: subscribe local receivers to notice of arrivals (admin role).

``POST`` creates a subscription and answers its signing secret, once; ``GET`` lists them (never
the secret); ``DELETE /{id}`` removes one. Creating and deleting are audited
(``webhook.created``, ``webhook.deleted``); a refused URL is a 422 problem document whose
``reason`` names the rule it broke (``service.webhooks.destinations``). The deliveries
themselves are the dispatcher's (``service.webhooks.dispatch``).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from service.api.bodies import json_body, parse_json, read_body
from service.api.deps import require_roles
from service.tokens import Principal, Role
from service.web import NodeDep
from service.webhooks import create_webhook, delete_webhook, list_webhooks, webhook_out
from service.webhooks.destinations import MAX_URL_LENGTH

__all__ = ["router"]

router = APIRouter(prefix="/v1/admin/webhooks", tags=["admin"])
Admin = Annotated[Principal, Depends(require_roles(Role.ADMIN))]
PROBLEMS: dict[int | str, dict[str, Any]] = {
    code: {
        "description": "Problem document (RFC 9457)",
        "content": {"application/problem+json": {"schema": {"type": "object"}}},
    }
    for code in (400, 401, 403, 404, 409, 413, 422)
}


class WebhookIn(BaseModel):
    """A receiver to notify: a local URL, the event kinds it wants, where it starts."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(
        max_length=MAX_URL_LENGTH,
        description="http(s) URL on loopback or a host in ENTENTE_WEBHOOK_ALLOWED_HOSTS; "
        "never a partner's",
    )
    events: list[str] | None = Field(
        default=None,
        max_length=10,
        description="Event kinds (arrived, revoked, deleted); default: all of them",
    )
    after: int | None = Field(
        default=None, ge=0, description="Start after this event id (0: from the start); "
        "default: the present",
    )  # fmt: skip


@router.post(
    "",
    summary="Subscribe a local URL to notice of arrivals (audited); answers its signing "
    "secret, once",
    status_code=201,
    openapi_extra=json_body(WebhookIn),
    responses=PROBLEMS,
)
async def create(request: Request, node: NodeDep, principal: Admin) -> Any:
    # The body is read only after the caller is known to be an admin (never before auth).
    body = parse_json(await read_body(request, limit=node.settings.max_json_body_bytes), WebhookIn)
    created = await run_in_threadpool(
        lambda: create_webhook(
            node, url=body.url, events=body.events, after=body.after, actor=principal.actor
        )
    )
    return JSONResponse(
        {**webhook_out(created.row), "secret": created.secret},
        status_code=201,
        headers={"Location": f"/v1/admin/webhooks/{created.row.id}", "Cache-Control": "no-store"},
    )


@router.get("", summary="The webhook subscriptions (never their secrets)", responses=PROBLEMS)
async def listed(node: NodeDep, principal: Admin) -> Any:
    def work() -> list[dict[str, Any]]:
        with node.db.session() as session:
            return [webhook_out(row) for row in list_webhooks(session)]

    return await run_in_threadpool(work)


@router.delete(
    "/{webhook_id}", summary="Delete a webhook subscription (audited)", responses=PROBLEMS
)
async def delete(
    webhook_id: Annotated[str, Path(max_length=40)], node: NodeDep, principal: Admin
) -> Any:
    row = await run_in_threadpool(
        lambda: delete_webhook(node, webhook_id=webhook_id, actor=principal.actor)
    )
    return {"id": row.id, "removed": True}
