"""Unauthenticated routes: liveness, the node descriptor, Prometheus metrics."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service.api.deps import NodeDep
from service.errors import DatabaseError

router = APIRouter(tags=["public"])


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


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
def metrics(node: NodeDep) -> Response:
    registry = node.metrics.registry
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
