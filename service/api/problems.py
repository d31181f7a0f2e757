"""RFC 9457 problem documents: the one place where errors become HTTP responses.

Every error kind has a stable ``type`` (``urn:entente:problem:<kind>``). Domain errors carry their
own status and safe message; request validation errors become ``invalid-input``; unknown routes and
methods keep their 404/405 as problems; anything unexpected is logged and answered as a generic
500 problem that reveals nothing (and is a bug: the test suite and the fuzzer look for it).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.audit.refusals import (
    ANONYMOUS,
    RefusalLedger,
    RefusalScope,
    already_audited,
    audit_refusal,
)
from service.db import DATABASE_UNAVAILABLE, say_unavailable
from service.errors import EntenteError

__all__ = [
    "PROBLEM_JSON",
    "ProblemHandler",
    "document_problems",
    "install_problem_handlers",
    "problem",
    "problem_type",
]

PROBLEM_JSON = "application/problem+json"
log = logging.getLogger("entente.api")

_HTTP_KINDS = {
    400: ("bad-request", "Bad request"),
    401: ("unauthorized", "Authentication required"),
    403: ("forbidden", "Forbidden"),
    404: ("not-found", "Not found"),
    405: ("method-not-allowed", "Method not allowed"),
    406: ("not-acceptable", "Not acceptable"),
    408: ("request-timeout", "Request timeout"),
    409: ("conflict", "Conflict"),
    410: ("gone", "Gone"),
    411: ("length-required", "Length required"),
    413: ("too-large", "Too large"),
    415: ("unsupported-media-type", "Unsupported media type"),
    422: ("invalid-input", "Invalid input"),
    429: ("rate-limited", "Too many requests"),
}


# Problem types another specification registers (IANA "HTTP Problem Types"): answered under
# their registered URI, so that any client of that specification recognises them.
REGISTERED_TYPES = {
    kind: f"https://iana.org/assignments/http-problem-types#{kind}"
    for kind in (  # draft-ietf-httpbis-resumable-upload, "Problem Types"
        "mismatching-upload-offset",
        "completed-upload",
        "inconsistent-upload-length",
    )
}


def problem_type(kind: str) -> str:
    return REGISTERED_TYPES.get(kind) or f"urn:entente:problem:{kind}"


def problem(
    status: int,
    kind: str,
    title: str,
    detail: str,
    *,
    instance: str | None = None,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    body: dict[str, Any] = {
        "type": problem_type(kind),
        "title": title,
        "status": status,
        "detail": detail,
    }
    if instance:
        body["instance"] = instance
    body.update({k: v for k, v in extra.items() if v is not None})
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


def _audit_refusal(
    request: Request, *, status: int, kind: str, detail: str, later: bool = False
) -> None:
    """Every refusal on a route that matched is an audit event, whatever its path (``/metrics``
    and ``/healthz`` too: the first refusal of a rate-limit burst may land there, and the rest of
    the burst is quiet), unless it is quiet or its raiser already wrote one
    (``service.errors``). A request that matched no route is a scan of unknown paths: logged,
    not audited. ``later``: the database is the reason, so the refusal is kept and written once
    it answers (``RefusalLedger.refused_later``)."""
    if (status >= 500 and not later) or request.scope.get("route") is None:
        return
    node = getattr(request.app.state, "node", None)
    if node is None:
        return
    principal = getattr(request.state, "principal", None)
    partner = getattr(request.state, "partner", None)
    actor = (
        principal.actor
        if principal is not None
        else (f"partner:{partner}" if partner else ANONYMOUS)
    )
    node.metrics.refusals.labels(kind).inc()
    what = {
        "method": request.method,
        "path": request.url.path[:300],
        "status": status,
        "detail": detail[:300],
    }
    if later:
        RefusalLedger.of(request.app.state, node).refused_later(
            kind="request.refused", actor=actor, reason=f"{status} {kind}", partner=partner,
            rule=kind, detail=what,
        )  # fmt: skip
        return
    # An anonymous refusal is summarised per source and window: a flood cannot flood the log.
    audit_refusal(
        request,
        node,
        kind="request.refused",
        actor=actor,
        reason=f"{status} {kind}",
        partner=partner,
        rule=kind,
        detail=what,
    )


async def _entente_error(request: Request, exc: Exception) -> JSONResponse:
    if not isinstance(exc, EntenteError):  # pragma: no cover - registration error
        return _unexpected(request, exc)
    if not exc.quiet and not already_audited(exc):
        await run_in_threadpool(
            _audit_refusal, request, status=exc.status, kind=exc.kind, detail=exc.message
        )
    headers = {"WWW-Authenticate": 'Bearer realm="entente"'} if exc.status == 401 else None
    if exc.status in (429, 503) and "retry_after" in exc.extra:
        headers = {"Retry-After": str(exc.extra["retry_after"])}
    if exc.status == 416 and "size" in exc.extra:  # RFC 9110 15.5.17
        headers = {"Content-Range": f"bytes */{exc.extra['size']}"}
    if isinstance(exc.extra.get("expected-offset"), int):  # resumable uploads: the right offset
        headers = {"Upload-Offset": str(exc.extra["expected-offset"])}
    return problem(
        exc.status,
        exc.kind,
        exc.title,
        exc.message,
        instance=request.url.path,
        headers=headers,
        **exc.extra,
    )


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    if not isinstance(exc, RequestValidationError):  # pragma: no cover
        return _unexpected(request, exc)
    errors = [
        {"loc": [str(p) for p in err.get("loc", ())], "msg": str(err.get("msg", ""))}
        for err in exc.errors()[:20]
    ]
    first = errors[0] if errors else {"loc": [], "msg": "invalid request"}
    detail = f"{'.'.join(first['loc']) or 'request'}: {first['msg']}"
    await run_in_threadpool(
        _audit_refusal, request, status=422, kind="invalid-input", detail=detail
    )
    return problem(
        422, "invalid-input", "Invalid input", detail, instance=request.url.path, errors=errors
    )


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    if not isinstance(exc, StarletteHTTPException):  # pragma: no cover
        return _unexpected(request, exc)
    kind, title = _HTTP_KINDS.get(exc.status_code, ("http-error", "HTTP error"))
    detail = exc.detail if isinstance(exc.detail, str) else title
    await run_in_threadpool(
        _audit_refusal, request, status=exc.status_code, kind=kind, detail=detail
    )
    return problem(
        exc.status_code,
        kind,
        title,
        detail,
        instance=request.url.path,
        headers=dict(exc.headers) if exc.headers else None,
    )


RETRY_DATABASE_SECONDS = 2


async def _database_unavailable(request: Request, exc: Exception) -> JSONResponse:
    """The database did not answer in time: SQLite's write lock held elsewhere past the busy
    timeout, a PostgreSQL server gone, no pooled connection free. Nothing of the request was
    kept (its transaction did not commit); the client may retry."""
    say_unavailable(log, exc, "%s %s", request.method, request.url.path, then="answered 503")
    detail = "the node's database did not answer in time (busy or unreachable); retry later"
    _audit_refusal(request, status=503, kind="database", detail=detail, later=True)
    return problem(
        503,
        "database",
        "Database unavailable",
        detail,
        instance=request.url.path,
        headers={"Retry-After": str(RETRY_DATABASE_SECONDS)},
    )


def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return problem(
        500, "internal", "Internal error", "the node failed to handle this request; see its log"
    )


ProblemHandler = Callable[[Request, Exception], Any]


def _as_is(handler: ProblemHandler) -> ProblemHandler:
    return handler


def install_problem_handlers(
    app: FastAPI, *, finish: Callable[[ProblemHandler], ProblemHandler] = _as_is
) -> None:
    """Map every error to its problem document. ``finish`` wraps each handler: the composition
    root passes the federation router's, which signs the refusals a partner receives (this
    module does not know about signing, so it imports no router). The handlers come with their
    :class:`RefusalScope`, the per-request registry of refusals the domain audited itself."""
    app.add_middleware(RefusalScope)
    app.add_exception_handler(EntenteError, finish(_entente_error))
    app.add_exception_handler(RequestValidationError, finish(_validation_error))
    app.add_exception_handler(StarletteHTTPException, finish(_http_error))
    for unavailable in DATABASE_UNAVAILABLE:
        app.add_exception_handler(unavailable, finish(_database_unavailable))
    app.add_exception_handler(Exception, finish(_unexpected))


# --- the OpenAPI document declares the problems the routes really answer with ----------------

PROBLEM_SCHEMA: dict[str, Any] = {
    "title": "Problem",
    "description": "RFC 9457 problem document; ``type`` is stable per error kind.",
    "type": "object",
    "required": ["type", "title", "status", "detail"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer", "minimum": 400, "maximum": 599},
        "detail": {"type": "string"},
        "instance": {"type": "string"},
    },
    "additionalProperties": True,
}

# Problems every operation of a family can answer with, whatever the route: authentication and
# roles, validation, rate limits, and (for bodies) size and read timeouts.
_FAMILY_PROBLEMS: dict[str, tuple[int, ...]] = {
    "/v1/": (401, 403, 422, 429),
    "/audit/v1/": (401, 403, 422, 429),
    "/federation/v1/": (400, 401, 403, 404, 409, 413, 422, 429),
}
_BODY_PROBLEMS = (408, 413)  # any operation with a request body
# Any operation at all: the server answers a request head larger than
# ENTENTE_MAX_REQUEST_HEADER_BYTES with 431 before routing it (service.api.bounds), and 503 with
# Retry-After when the database does not answer in time (_database_unavailable).
_ANY_PROBLEMS = (431, 503)
# Route-specific problems of routers that do not declare them themselves.
_ROUTE_PROBLEMS: dict[tuple[str, str], tuple[int, ...]] = {
    ("get", "/healthz"): (503,),
    ("get", "/audit/v1/checkpoint"): (404,),
    ("get", "/audit/v1/proof/inclusion"): (404,),
    ("get", "/audit/v1/proof/consistency"): (404,),
    ("post", "/witness/v1/add-checkpoint"): (400, 403, 404, 409, 422, 429, 503),
}


def _problem_response(description: str | None = None) -> dict[str, Any]:
    return {
        "description": description or "Problem document (RFC 9457)",
        "content": {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}},
    }


def _document(doc: dict[str, Any]) -> None:
    components = doc.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    schemas["Problem"] = PROBLEM_SCHEMA
    components.setdefault("securitySchemes", {})["bearer"] = {
        "type": "http",
        "scheme": "bearer",
        "description": "An ``entente token create`` token: ``ent_<handle>_<secret>``",
    }
    for path, operations in doc.get("paths", {}).items():
        for method, op in operations.items():
            responses: dict[str, Any] = op.setdefault("responses", {})
            wanted = {int(code) for code in responses if code.isdigit() and int(code) >= 400}
            wanted.update(_ANY_PROBLEMS)
            for prefix, codes in _FAMILY_PROBLEMS.items():
                if path.startswith(prefix):
                    wanted.update(codes)
            if "requestBody" in op:
                wanted.update(_BODY_PROBLEMS)
            wanted.update(_ROUTE_PROBLEMS.get((method, path), ()))
            for code in sorted(wanted):
                existing = responses.get(str(code), {})
                content = {
                    k: v
                    for k, v in existing.get("content", {}).items()
                    if k not in (PROBLEM_JSON, "application/json")
                }  # a route may declare other bodies for a status (tlog-witness's 409)
                merged = _problem_response()
                merged["content"].update(content)
                responses[str(code)] = merged
            if path.startswith(("/v1/", "/audit/v1/")):
                op["security"] = [{"bearer": []}]
    for name in ("HTTPValidationError", "ValidationError"):  # FastAPI's, now unreferenced
        others = {k: v for k, v in schemas.items() if k != name}
        if f"#/components/schemas/{name}" not in str((doc.get("paths"), others)):
            schemas.pop(name, None)


def document_problems(app: FastAPI, *, schemas: dict[str, Any] | None = None) -> None:
    """Make the app's OpenAPI document declare, for every operation, the problem documents it
    really answers with (FastAPI's default 422 body is replaced: validation errors here are
    problems too), so that clients and the schema-driven fuzzer hold the node to it.
    ``schemas`` adds component schemas that routes refer to from ``openapi_extra``."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            doc = generate()
            components = doc.setdefault("components", {}).setdefault("schemas", {})
            for name, schema in (schemas or {}).items():
                components.setdefault(name, schema)
            _document(doc)
            app.openapi_schema = doc
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
