"""``/federation/v1``: what partner nodes call. Every request is RFC 9421-signed by a pinned
partner (refused with 401 otherwise) and every successful response is signed by this node.

- ``POST inbox``: a delivery, ``application/vnd.entente.delivery``: the manifest (DSSE JSON, one
  line), a newline, then the age ciphertext, streamed. Answers with a signed receipt.
- ``GET feed?after=CURSOR``: what this node shared with the caller, in pages (catch-up).
- ``GET artifacts/{id}/payload``: the ciphertext of an artifact shared with the caller.
- ``POST notices``: revocations and access notices (see ``service/federation/notices.py``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any

import anyio
import anyio.from_thread
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from crypto import httpsig
from crypto.errors import CryptoError
from service.api.deps import NodeDep
from service.audit import record
from service.errors import AuthError, InvalidInputError, TooLargeError
from service.federation import feed as feed_domain
from service.federation import notices as notice_domain
from service.federation.receive import receive_artifact
from service.federation.signing import (
    IncomingSignature,
    digest_value,
    sign_response_headers,
    verify_incoming,
)
from service.node import Node

router = APIRouter(prefix="/federation/v1", tags=["federation"])

DELIVERY_TYPE = "application/vnd.entente.delivery"
PROBLEM = {"content": {"application/problem+json": {"schema": {"type": "object"}}}}
FED_PROBLEMS: dict[int | str, dict[str, Any]] = {
    code: {"description": "Problem document (RFC 9457)", **PROBLEM}
    for code in (400, 401, 403, 404, 409, 413, 422)
}


def _target_uri(node: Node, request: Request) -> str:
    raw_path = request.scope.get("raw_path") or request.url.path.encode()
    query = request.scope.get("query_string") or b""
    uri = node.home.url + raw_path.decode("latin-1")
    return uri + ("?" + query.decode("latin-1") if query else "")


async def signed_partner(request: Request, node: NodeDep) -> IncomingSignature:
    """Authenticate a partner by its RFC 9421 signature (the body digest is checked later)."""
    headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.scope["headers"]]
    try:
        sig = await run_in_threadpool(
            verify_incoming,
            node,
            method=request.method,
            target_uri=_target_uri(node, request),
            headers=headers,
        )
    except CryptoError as exc:
        reason = str(exc)
        await run_in_threadpool(_refused, node, request, reason)
        raise AuthError(
            f"federation request refused: {reason}", reason="signature", audited=True
        ) from None
    request.state.partner = sig.partner
    request.state.signature = sig
    return sig


def _refused(node: Node, request: Request, reason: str) -> None:
    with node.db.session() as session:
        record(
            session,
            kind="federation.refused",
            actor="anonymous",
            decision="deny",
            rule="signature",
            detail={
                "method": request.method,
                "path": request.url.path[:300],
                "reason": reason[:300],
            },
            now=node.now(),
        )
    node.metrics.refusals.labels("federation-signature").inc()


Partner = Annotated[IncomingSignature, Depends(signed_partner)]


async def _small_body(request: Request, node: Node, sig: IncomingSignature) -> bytes:
    """The whole (bounded) body, checked against the signed Content-Digest."""
    limit = node.settings.max_federation_manifest_bytes
    digester = httpsig.ContentDigester()
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise TooLargeError(f"federation bodies are limited to {limit} bytes")
        digester.update(chunk)
    try:
        digester.verify(sig.verified.content_digests)
    except CryptoError as exc:
        raise InvalidInputError(f"the body does not match its signature: {exc}") from None
    return bytes(body)


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


class _BodyReader:
    """A file-like view of the request body pulled from a worker thread, digesting every byte."""

    def __init__(self, pull: Callable[[], bytes], digester: httpsig.ContentDigester) -> None:
        self._pull = pull
        self._digester = digester
        self._buf = b""
        self._eof = False

    def _fill(self) -> bool:
        if self._eof:
            return False
        chunk = self._pull()
        if not chunk:
            self._eof = True
            return False
        self._digester.update(chunk)
        self._buf += chunk
        return True

    def readline(self, limit: int) -> bytes:
        while b"\n" not in self._buf:
            if len(self._buf) > limit or not self._fill():
                break
        idx = self._buf.find(b"\n")
        if idx < 0 or idx > limit:
            raise InvalidInputError(
                "a delivery starts with the manifest on one line, then a newline"
            )
        line, self._buf = self._buf[:idx], self._buf[idx + 1 :]
        return line

    def read(self, n: int = -1, /) -> bytes:
        if n is None or n < 0:
            while self._fill():
                pass
            out, self._buf = self._buf, b""
            return out
        while len(self._buf) < n and self._fill():
            pass
        out, self._buf = self._buf[:n], self._buf[n:]
        return out


@router.post(
    "/inbox",
    status_code=201,
    summary="Deliver an artifact (manifest line + age ciphertext, streamed)",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {DELIVERY_TYPE: {"schema": {"type": "string", "format": "binary"}}},
        }
    },
    responses=FED_PROBLEMS,
)
async def inbox(request: Request, node: NodeDep, sig: Partner) -> Response:
    ctype = request.headers.get("content-type", "")
    if ctype.split(";")[0].strip() != DELIVERY_TYPE:
        raise InvalidInputError(f"a delivery must be sent as {DELIVERY_TYPE}")
    length = request.headers.get("content-length")
    limit = node.settings.max_artifact_bytes * 2 + node.settings.max_federation_manifest_bytes
    if length is not None and length.isdigit() and int(length) > limit:
        raise TooLargeError("the delivery is larger than this node accepts")
    chunks: AsyncIterator[bytes] = request.stream().__aiter__()

    async def next_chunk() -> bytes:
        try:
            return await chunks.__anext__()
        except StopAsyncIteration:
            return b""

    digester = httpsig.ContentDigester()
    reader = _BodyReader(lambda: anyio.from_thread.run(next_chunk), digester)

    def check_digest() -> None:
        try:
            digester.verify(sig.verified.content_digests)
        except CryptoError as exc:
            raise InvalidInputError(f"the body does not match its signature: {exc}") from None

    def work() -> Any:
        line = reader.readline(node.settings.max_federation_manifest_bytes)
        return receive_artifact(
            node,
            sender=sig.partner,
            envelope_bytes=line,
            ciphertext=reader,
            via="push",
            before_commit=check_digest,
        )

    received = await anyio.to_thread.run_sync(work)
    return signed_json(
        node,
        sig,
        201 if received.created else 200,
        {"receipt": json.loads(received.receipt), "created": received.created},
    )


@router.get(
    "/feed", summary="Artifacts shared with the caller, after a cursor", responses=FED_PROBLEMS
)
async def feed(
    request: Request,
    node: NodeDep,
    sig: Partner,
    after: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 200,
) -> Response:
    await _small_body(request, node, sig)
    page = await run_in_threadpool(
        feed_domain.page, node, partner=sig.partner, after=after, limit=limit
    )
    return signed_json(node, sig, 200, page)


@router.get(
    "/artifacts/{artifact_id}/payload",
    summary="The age ciphertext of an artifact shared with the caller",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/octet-stream": {}}}, **FED_PROBLEMS},
)
async def payload(artifact_id: str, request: Request, node: NodeDep, sig: Partner) -> Response:
    await _small_body(request, node, sig)
    blob, size = await run_in_threadpool(
        feed_domain.payload_for, node, partner=sig.partner, artifact_id=artifact_id
    )
    headers = {"Content-Type": "application/octet-stream", "Content-Length": str(size)}
    headers.update(
        sign_response_headers(
            node,
            request=sig.message,
            status=200,
            headers=headers,
            content_digest=digest_value(bytes.fromhex(blob)),
        )
    )

    def chunks() -> Any:
        with node.blobs.open(blob) as fh:
            while data := fh.read(1 << 16):
                yield data

    return StreamingResponse(chunks(), headers=headers)


@router.post("/notices", summary="Revocations and access notices", responses=FED_PROBLEMS)
async def notices(request: Request, node: NodeDep, sig: Partner) -> Response:
    body = await _small_body(request, node, sig)
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise InvalidInputError("a notice is a JSON object") from None
    receipt = await run_in_threadpool(notice_domain.accept, node, sender=sig.partner, data=data)
    return signed_json(node, sig, 200, {"receipt": receipt})
