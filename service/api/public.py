"""Liveness and the node descriptor (unauthenticated), and Prometheus metrics, which name
partners and their counts and so need a token of the ``metrics``, ``auditor`` or ``admin``
role."""

from __future__ import annotations

from typing import Annotated, Any

import sqlalchemy as sa
from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service.api.deps import require_roles
from service.errors import DatabaseError
from service.tokens import Principal, Role
from service.web import NodeDep

router = APIRouter(tags=["public"])

MetricsReader = Annotated[Principal, Depends(require_roles(Role.METRICS, Role.AUDITOR, Role.ADMIN))]


@router.get("/healthz", summary="Liveness and readiness")
def healthz(node: NodeDep) -> dict[str, Any]:
    try:
        with node.db.engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except sa.exc.SQLAlchemyError:
        raise DatabaseError("the database does not answer") from None
    return {"status": "ok", "node_id": node.node_id}


@router.get(
    "/.well-known/entente.json",
    summary="The node descriptor (DSSE envelope signed by the node's Ed25519 key)",
)
def descriptor(node: NodeDep) -> JSONResponse:
    return JSONResponse(node.descriptor().to_json(), headers={"Cache-Control": "max-age=300"})


@router.get(
    "/metrics",
    summary="Prometheus metrics (a token of the metrics, auditor or admin role)",
    response_class=Response,
    responses={code: {"description": "Problem document (RFC 9457)"} for code in (401, 403, 429)},
)
def metrics(node: NodeDep, _who: MetricsReader) -> Response:
    registry = node.metrics.registry
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
