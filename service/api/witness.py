"""``POST /federation/v1/add-checkpoint``: this node as a C2SP tlog-witness for its partners.

The request body is the tlog-witness ``add-checkpoint`` body; a success is ``200`` with the
cosignature line (``text/plain``). Refusals are problem documents (400, 403, 404, 409, 413, 422),
except the one the spec shapes itself: an old size that is not the size this witness last
cosigned is ``409`` with ``Content-Type: text/x.tlog.size`` and that size in decimal as the body.

Who is calling comes from :func:`calling_partner`: the federation's RFC 9421 authentication
against pinned partner keys; the answer is signed the same way.

``POST /witness/v1/add-checkpoint`` is the same request from a log that is no partner's, as the
C2SP spec has it: no HTTP authentication, the checkpoint's own signature by a log key listed in
``ENTENTE_WITNESSED_LOGS_FILE`` authenticates it (``service.audit.witness_public``); its answers
are the spec's (the cosignature line; 409 ``text/x.tlog.size``) and problem documents.

``GET /witness/v1/checkpoint?origin=ORIGIN`` (no authentication: what witnesses exist to
publish) answers the latest checkpoint this witness cosigned for that log, as the log signed it,
with a fresh cosignature by this witness (``text/plain``, a C2SP signed note), or 404. Auditors
compare a log with it (``entente audit verify``), so a node cannot show them a truncated or
rewritten history that its witnesses did not cosign.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response

from crypto import httpsig
from crypto.errors import CryptoError
from service.api.bodies import read_body
from service.api.signed import signed_partner
from service.audit.errors import WitnessSizeConflictError
from service.audit.witness import (
    ADD_CHECKPOINT_MAX_BYTES,
    TLOG_SIZE_MEDIA_TYPE,
    add_checkpoint,
    held_checkpoint,
    witness_cosigner,
)
from service.audit.witness_public import add_public_checkpoint, witnessed_logs
from service.errors import InvalidInputError
from service.federation.signing import IncomingSignature, digest_value, sign_response_headers
from service.node import Node
from service.web import NodeDep

__all__ = ["FederationCaller", "calling_partner", "held_router", "router"]

router = APIRouter(prefix="/federation/v1", tags=["federation"])
held_router = APIRouter(prefix="/witness/v1", tags=["witness"])

ResponseSigner = Callable[[int, dict[str, str], bytes], dict[str, str]]


def _no_body_check(_body: bytes) -> None:
    return None


@dataclass(frozen=True)
class FederationCaller:
    """An authenticated partner request.

    ``check_body`` raises :class:`InvalidInputError` when the body does not match the signed
    ``Content-Digest``; ``sign_response`` returns the headers that sign a response
    ``(status, headers, body)``. Both are supplied by the federation's authentication.
    """

    partner: str
    check_body: Callable[[bytes], None] = field(default=_no_body_check)
    sign_response: ResponseSigner | None = None


def calling_partner(
    node: NodeDep, sig: Annotated[IncomingSignature, Depends(signed_partner)]
) -> FederationCaller:
    """The pinned partner that signed this request (RFC 9421, ``service.api.federation``), with
    the check of the body against its signed ``Content-Digest`` and the signer of our answer."""

    def check_body(body: bytes) -> None:
        digester = httpsig.ContentDigester()
        digester.update(body)
        try:
            digester.verify(sig.verified.content_digests)
        except CryptoError as exc:
            raise InvalidInputError(f"the body does not match its signature: {exc}") from None

    def sign_response(status: int, headers: dict[str, str], body: bytes) -> dict[str, str]:
        return sign_response_headers(
            node,
            request=sig.message,
            status=status,
            headers=headers,
            content_digest=digest_value(hashlib.sha256(body).digest()),
        )

    return FederationCaller(sig.partner, check_body, sign_response)


def _witness(node: Node, partner: str, body: bytes) -> str:
    with node.db.session() as session:
        return add_checkpoint(
            session,
            origin_partner=partner,
            request_body=body,
            cosigner=witness_cosigner(node),
            now=node.now(),
        )


def _respond(caller: FederationCaller, status: int, media_type: str, body: bytes) -> Response:
    headers = {"Content-Type": media_type}
    if caller.sign_response is not None:
        headers.update(caller.sign_response(status, dict(headers), body))
    return Response(body, status_code=status, headers=headers)


@router.post(
    "/add-checkpoint",
    summary="Cosign a partner's audit log checkpoint (C2SP tlog-witness)",
    response_class=Response,
    responses={
        200: {"content": {"text/plain": {}}, "description": "The cosignature line"},
        409: {"content": {TLOG_SIZE_MEDIA_TYPE: {}, "application/problem+json": {}}},
    },
)
async def add_checkpoint_route(
    request: Request,
    node: NodeDep,
    caller: Annotated[FederationCaller, Depends(calling_partner)],
) -> Response:
    body = await read_body(
        request, limit=ADD_CHECKPOINT_MAX_BYTES, what="an add-checkpoint request"
    )
    caller.check_body(body)
    if not body:
        raise InvalidInputError("an add-checkpoint request has a body")
    try:
        line = await asyncio.to_thread(_witness, node, caller.partner, body)
    except WitnessSizeConflictError as exc:
        # tlog-witness: "The response body MUST consist of the tree size of the latest cosigned
        # checkpoint in decimal, followed by a newline ... Content-Type of text/x.tlog.size".
        return _respond(caller, 409, TLOG_SIZE_MEDIA_TYPE, f"{exc.latest_size}\n".encode())
    return _respond(caller, 200, "text/plain; charset=utf-8", line.encode("utf-8"))


def _held(node: Node, origin: str) -> bytes:
    with node.db.session() as session:
        return held_checkpoint(
            session, origin=origin, cosigner=witness_cosigner(node), now=node.now()
        )


@held_router.get(
    "/checkpoint",
    summary="The latest checkpoint this witness cosigned for a log, freshly cosigned",
    response_class=Response,
    responses={
        200: {"content": {"text/plain": {}}, "description": "A C2SP signed note"},
        404: {"description": "This witness holds no checkpoint of that log"},
    },
)
async def held_checkpoint_route(
    node: NodeDep,
    origin: Annotated[str, Query(min_length=1, max_length=200, description="The log origin")],
) -> Response:
    note = await asyncio.to_thread(_held, node, origin)
    return Response(note, media_type="text/plain; charset=utf-8")


def _witness_public(node: Node, body: bytes) -> str:
    logs = witnessed_logs(node.settings.witnessed_logs_file)
    with node.db.session() as session:
        return add_public_checkpoint(
            session,
            request_body=body,
            logs=logs,
            cosigner=witness_cosigner(node),
            now=node.now(),
        )


@held_router.post(
    "/add-checkpoint",
    summary="Cosign a checkpoint of a log this node witnesses for anyone (C2SP tlog-witness)",
    response_class=Response,
    responses={
        200: {"content": {"text/plain": {}}, "description": "The cosignature line"},
        409: {"content": {TLOG_SIZE_MEDIA_TYPE: {}, "application/problem+json": {}}},
    },
)
async def add_public_checkpoint_route(request: Request, node: NodeDep) -> Response:
    body = await read_body(
        request, limit=ADD_CHECKPOINT_MAX_BYTES, what="an add-checkpoint request"
    )
    if not body:
        raise InvalidInputError("an add-checkpoint request has a body")
    try:
        line = await asyncio.to_thread(_witness_public, node, body)
    except WitnessSizeConflictError as exc:
        body = f"{exc.latest_size}\n".encode()  # the spec's 409: the size held, as text
        return Response(body, status_code=409, headers={"Content-Type": TLOG_SIZE_MEDIA_TYPE})
    return Response(line.encode("utf-8"), media_type="text/plain; charset=utf-8")
