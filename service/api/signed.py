"""The signed side of ``/federation/v1``: who is calling (a pinned partner's RFC 9421
signature, refused with 401 and audited otherwise), the partner's in-flight slot while its
request runs, and the signature on every answer to a signed request, refusals included.

This module has no routes (``service.api.federation`` and ``service.api.witness`` use it) and
does not verify signatures itself (``service.federation.signing``).
"""

from __future__ import annotations

import hashlib
import inspect
import json
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from crypto import httpsig
from crypto.errors import CryptoError
from service.api.problems import ProblemHandler
from service.audit.refusals import audit_refusal, mark_audited
from service.errors import (
    AuthError,
)
from service.federation.signing import (
    IncomingSignature,
    digest_value,
    sign_response_headers,
    verify_incoming,
)
from service.limits import Limits
from service.node import Node
from service.web import NodeDep

__all__ = [
    "FEDERATION_PREFIX",
    "Partner",
    "partner_running",
    "signed_json",
    "signed_partner",
    "signed_problems",
]

FEDERATION_PREFIX = "/federation/v1"  # the routes whose answers are signed


def _target_uri(node: Node, request: Request) -> str:
    raw_path = request.scope.get("raw_path") or request.url.path.encode()
    query = request.scope.get("query_string") or b""
    uri = node.home.url + raw_path.decode("latin-1")
    return uri + ("?" + query.decode("latin-1") if query else "")


async def signed_partner(request: Request, node: NodeDep) -> IncomingSignature:
    """Authenticate a partner by its RFC 9421 signature (the body digest is checked later)."""
    headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.scope["headers"]]
    limits = Limits.of(request.app.state)

    def admit(partner: str) -> None:  # the signature verified; its nonce is not stored yet
        request.state.partner = partner  # a refusal from here on is the partner's
        limits.partner(node, partner)

    try:
        sig = await run_in_threadpool(
            verify_incoming,
            node,
            method=request.method,
            target_uri=_target_uri(node, request),
            headers=headers,
            admit=admit,
        )
    except CryptoError as exc:
        reason = str(exc)
        await run_in_threadpool(_refused, node, request, reason)
        raise mark_audited(
            AuthError(f"federation request refused: {reason}", reason="signature")
        ) from None
    request.state.partner = sig.partner
    request.state.signature = sig
    return sig


def _refused(node: Node, request: Request, reason: str) -> None:
    node.metrics.refusals.labels("federation-signature").inc()
    audit_refusal(  # anonymous: summarised per source and window (service.audit.refusals)
        request,
        node,
        kind="federation.refused",
        actor="anonymous",
        reason=reason[:100],
        rule="signature",
        detail={"method": request.method, "path": request.url.path[:300], "reason": reason[:300]},
    )


Partner = Annotated[IncomingSignature, Depends(signed_partner)]


async def partner_running(request: Request, node: NodeDep, sig: Partner) -> AsyncIterator[None]:
    """Hold one of the partner's in-flight slots (``max_requests_in_flight``) while its
    request runs: one partner's slow or many requests never take another partner's."""
    async with Limits.of(request.app.state).running(
        node,
        f"partner:{sig.partner}",
        actor=f"partner:{sig.partner}",
        method=request.method,
        path=request.url.path,
    ):
        yield


def signed_problems(handler: ProblemHandler) -> ProblemHandler:
    """Wrap a problem handler (``service.api.problems``) so that a problem document answered on
    a ``/federation`` route to a request carrying one signature is signed like any federation
    answer: the partner can then tell this node's refusal from a forged one. A request without
    a signature (not a partner's) gets the problem unsigned, and signs nothing for an
    anonymous flood."""

    async def handle(request: Request, exc: Exception) -> Any:
        response = handler(request, exc)
        if inspect.isawaitable(response):
            response = await response
        if isinstance(response, Response) and request.url.path.startswith(FEDERATION_PREFIX + "/"):
            _sign_problem(request, response)
        return response

    return handle


def _sign_problem(request: Request, response: Response) -> None:
    node = getattr(request.app.state, "node", None)
    if node is None or b"signature-input" not in dict(request.scope.get("headers", ())):
        return
    headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.scope["headers"]]
    ctype = response.headers.get("content-type", "application/problem+json")
    try:
        message = httpsig.Request(request.method, _target_uri(node, request), headers)
        signed = sign_response_headers(
            node,
            request=message,
            status=response.status_code,
            headers={"Content-Type": ctype},
            content_digest=digest_value(hashlib.sha256(bytes(response.body)).digest()),
        )
    except CryptoError:  # not a request a partner client could match an answer to
        return
    for name, value in signed.items():
        response.headers[name] = value


def signed_json(node: Node, sig: IncomingSignature, status: int, data: Any) -> Response:
    body = json.dumps(data, separators=(",", ":")).encode()
    headers = {"Content-Type": "application/json"}
    headers.update(
        sign_response_headers(
            node,
            request=sig.message,
            status=status,
            headers=headers,
            content_digest=digest_value(hashlib.sha256(body).digest()),
        )
    )
    return Response(body, status_code=status, headers=headers)
