"""``GET /audit/v1/bundle``: a filtered range of the audit log as an export bundle, each entry
with its inclusion proof against the latest signed checkpoint, for checking offline
(``entente audit verify-export``; the format is ``service.audit.bundle``).

Auditors and admins only. ``from`` and ``to`` (log indexes, both included; default: the whole
log as of the latest checkpoint), ``kind`` (repeatable) and ``artifact``; any other query
parameter, an unknown kind, or a range outside the checkpoint or wider than
``audit_export_max_entries`` is a 422 problem, audited like every refusal. The export itself is
recorded (``audit.exported``, with the filter) before the first byte is sent; the body streams
in chunks, so memory stays flat whatever the range.

This router builds nothing itself: ``service.audit.export`` plans and writes the bundle.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from service.api.deps import require_roles
from service.audit.export import ExportPlan, bundle_lines, plan_export, record_export
from service.errors import InvalidInputError
from service.tokens import Principal, Role
from service.web import NodeDep

__all__ = ["PARAMETERS", "router"]

router = APIRouter(prefix="/audit/v1", tags=["audit"])

JSONL = "application/jsonl"
MAX_SEQ = (1 << 63) - 1  # log indexes are SQL BIGINTs
PARAMETERS = frozenset({"from", "to", "kind", "artifact"})
Auditor = Annotated[Principal, Depends(require_roles(Role.AUDITOR, Role.ADMIN))]


@router.get(
    "/bundle",
    summary="A filtered range of the audit log with inclusion proofs (an audited export)",
    response_class=StreamingResponse,
    responses={200: {"content": {JSONL: {}}}},
)
async def export_bundle(
    request: Request,
    node: NodeDep,
    who: Auditor,
    first: Annotated[
        int | None, Query(alias="from", ge=0, le=MAX_SEQ, description="First seq (included)")
    ] = None,
    last: Annotated[
        int | None, Query(alias="to", ge=0, le=MAX_SEQ, description="Last seq (included)")
    ] = None,
    kind: Annotated[list[str] | None, Query(max_length=64, description="Event kind")] = None,
    artifact: Annotated[str | None, Query(max_length=64, description="Artifact id")] = None,
) -> Response:
    unknown = sorted(set(request.query_params) - PARAMETERS)
    if unknown:
        raise InvalidInputError(
            f"unknown query parameter {unknown[0][:40]!r}: this export takes "
            "from, to, kind and artifact"
        )

    def begin() -> ExportPlan:
        with node.db.session() as session:
            plan = plan_export(
                session, node_id=node.node_id, first=first, last=last, kinds=kind or (),
                artifact=artifact, max_entries=node.settings.audit_export_max_entries,
            )  # fmt: skip
            record_export(session, plan, actor=who.actor, via="api", now=node.now())
        return plan

    plan = await run_in_threadpool(begin)
    flt = plan.filter
    name = f"{node.node_id}-audit-{flt.first}-{flt.last}.jsonl"
    return StreamingResponse(
        bundle_lines(node.db.session, plan, now=node.now()),
        media_type=JSONL,
        headers={
            "Cache-Control": "no-store",
            "Content-Disposition": f'attachment; filename="{name}"',
            "X-Tree-Size": str(plan.checkpoint.size),
        },
    )
