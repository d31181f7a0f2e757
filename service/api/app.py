"""The FastAPI application factory.

``create_app(node)`` wires the routers, the problem-document handlers and the middleware; the node
(settings, keys, database) is built by the caller and kept on ``app.state``. Background workers
(outbox delivery, feed pulls, checkpoints) start and stop with the app's lifespan.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request, Response

from service.api import admin, artifacts, federation, public
from service.api.audit import router as audit_router
from service.api.problems import document_problems, install_problem_handlers
from service.api.witness import router as witness_router
from service.console import router as console_router
from service.limits import Limits, RequestBounds
from service.maintenance import sweep_in_background
from service.node import Node
from service.transparency import register_audit_workers

__all__ = ["create_app"]

Lifespan = Callable[[FastAPI], Awaitable[None]]


def create_app(node: Node, *, start_workers: bool | None = None) -> FastAPI:
    run_workers = node.settings.workers_enabled if start_workers is None else start_workers

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        from service.workers import Workers

        workers = Workers(node) if run_workers else None
        transport = None
        if workers is not None:
            transport = register_audit_workers(workers, node)
            from service.federation.workers import register_federation_workers

            register_federation_workers(workers, node)
            await workers.start()
        swept = asyncio.ensure_future(sweep_in_background(node))  # what a crash left behind
        try:
            yield
        finally:
            if workers is not None:
                await workers.stop()
            close = getattr(transport, "aclose", None)
            if close is not None:
                await close()  # the witness client, kept open between submissions
            await swept

    app = FastAPI(
        title=f"Entente node {node.node_id}",
        version="1",
        description=(
            "Signed, encrypted, MOU-policy-checked sharing of research artifacts between "
            "institutes, with a cosigned transparency log. Errors are RFC 9457 problem documents."
        ),
        lifespan=lifespan,
    )
    app.state.node = node
    app.state.limits = Limits(node.settings)
    install_problem_handlers(app)
    document_problems(app)

    # Inside the request counter (added before it): a stalled body raises where the app reads it.
    app.add_middleware(
        RequestBounds,
        max_head_bytes=node.settings.max_request_header_bytes,
        idle_seconds=node.settings.request_body_idle_seconds,
    )

    @app.middleware("http")
    async def count_requests(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        started = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        path = getattr(route, "path", "unmatched")
        node.metrics.requests.labels(request.method, path, str(response.status_code)).inc()
        node.metrics.request_seconds.labels(path).observe(time.perf_counter() - started)
        return response

    app.include_router(public.router)
    app.include_router(artifacts.router)
    app.include_router(admin.router)
    app.include_router(federation.router)
    app.include_router(audit_router)
    app.include_router(witness_router)
    app.include_router(console_router)  # /ui, its static files included
    return app
