"""``/federation/v1``: what partner nodes call. Every request is RFC 9421-signed by a pinned
partner (refused with 401 otherwise) and every response to a signed request, refusals included
(:func:`~service.api.signed.signed_problems`), is signed by this node, bound to that request's
signature (``service.api.signed``).

- ``POST inbox``: a delivery, ``application/vnd.entente.delivery``: the manifest (DSSE JSON, one
  line), a newline, then the age ciphertext, streamed. Answers with a signed receipt.
  A cut large delivery resumes (``service.federation.inbox_partial``): ``GET inbox/partial/{key}``
  says how many bytes of it this node holds, and a signed ``Entente-Resume-Offset: N`` sends
  the rest; the whole is verified again.
- ``GET feed?after=CURSOR``: what this node shared with the caller, in pages (catch-up).
- ``GET artifacts/{id}/payload``: the ciphertext of an artifact shared with the caller; with a
  (signed) ``Range: bytes=N-``, the rest of it from byte N (206, ``Content-Range`` signed, a
  ``Content-Digest`` of the bytes sent), so a partner's broken download resumes.
- ``POST notices``: revocations and access notices (see ``service/federation/notices.py``).
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Callable
from typing import Annotated, Any

import anyio
import anyio.to_thread
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from crypto import httpsig, strict_json
from crypto.dsse import Envelope
from crypto.errors import CryptoError
from service.api.bodies import StreamedBody, body_limiter, read_body
from service.api.problems import problem_type
from service.api.signed import FEDERATION_PREFIX, Partner, partner_running, signed_json
from service.audit.budget import RefusalBudget
from service.audit.log import record
from service.audit.refusals import mark_audited
from service.errors import (
    EntenteError,
    ForbiddenError,
    InvalidInputError,
    PartnerError,
    TooLargeError,
)
from service.federation import agreements as agreement_domain
from service.federation import feed as feed_domain
from service.federation import notices as notice_domain
from service.federation.client import BATCH_TYPE, DELIVERY_TYPE
from service.federation.inbox_partial import (
    RESUME_HEADER,
    inbox_partials,
    receive_push,
    resume_offset,
)
from service.federation.outbox import BATCH_ITEM_MAX_BYTES, BATCH_MAX_ITEMS
from service.federation.receive import Checked, Received, Receiver, summarise_refusals
from service.federation.settle import record_receipts
from service.federation.signing import (
    IncomingSignature,
    digest_value,
    sign_response_headers,
)
from service.limits import check_volume
from service.node import Node
from service.partners import rotate_partner
from service.web import NodeDep

router = APIRouter(prefix=FEDERATION_PREFIX, tags=["federation"])

BATCH_MAX_BODY_BYTES = 8 << 20  # bytes of one batch delivery (small artifacts only)
BATCH_REFUSALS_AUDITED_EACH = 4  # a batch's refused items audited each; the rest: one summary
PROBLEM = {"content": {"application/problem+json": {"schema": {"type": "object"}}}}
FED_PROBLEMS: dict[int | str, dict[str, Any]] = {
    code: {"description": "Problem document (RFC 9457)", **PROBLEM}
    for code in (400, 401, 403, 404, 409, 413, 422)
}


router.dependencies.append(Depends(partner_running))  # every route below: signed, slotted


async def _small_body(
    request: Request, node: Node, sig: IncomingSignature, *, limit: int | None = None
) -> bytes:
    """The whole (bounded) body, checked against the signed Content-Digest."""
    limit = limit or node.settings.max_federation_manifest_bytes
    body = await read_body(request, limit=limit, what="this federation body")
    digester = httpsig.ContentDigester()
    digester.update(body)
    try:
        digester.verify(sig.verified.content_digests)
    except CryptoError as exc:
        raise InvalidInputError(
            f"the body does not match its signature: {exc}", reason="digest"
        ) from None
    return bytes(body)


class _BodyReader:
    """A file-like view of a request body (``StreamedBody.pull``), digesting every byte."""

    def __init__(
        self, pull: Callable[[], bytes], digester: httpsig.ContentDigester, limit: int
    ) -> None:
        self._pull = pull
        self._digester = digester
        self._buf = b""
        self._eof = False
        self._limit = limit
        self._seen = 0

    def _fill(self) -> bool:
        if self._eof:
            return False
        chunk = self._pull()
        if not chunk:
            self._eof = True
            return False
        self._seen += len(chunk)
        if self._seen > self._limit:
            raise TooLargeError(
                f"the delivery is larger than this node accepts ({self._limit} bytes)"
            )
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


def _inbox_limit(node: Node) -> int:
    return node.settings.max_artifact_bytes * 2 + node.settings.max_federation_manifest_bytes


def _refuse_delivery(node: Node, sig: IncomingSignature, reason: str) -> None:
    with node.db.session() as session:
        record(
            session,
            kind="receive.rejected",
            actor=f"partner:{sig.partner}",
            partner=sig.partner,
            decision="deny",
            rule=reason[:200],
            detail={"reason": reason[:500], "via": "push"},
            now=node.now(),
        )
    node.metrics.received.labels("rejected").inc()


@router.post(
    "/inbox",
    status_code=201,
    summary="Deliver an artifact (manifest line + age ciphertext, streamed) or a batch of them",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                DELIVERY_TYPE: {"schema": {"type": "string", "format": "binary"}},
                BATCH_TYPE: {"schema": {"type": "string", "format": "binary"}},
            },
        }
    },
    responses={
        200: {
            "description": "A repeat delivery (the receipt already issued), or a batch's results",
            "content": {"application/json": {}},
        },
        **FED_PROBLEMS,
        416: {"description": "A resumed delivery this node does not hold the start of", **PROBLEM},
        503: {"description": "The same delivery is being received already", **PROBLEM},
    },
)
async def inbox(request: Request, node: NodeDep, sig: Partner) -> Response:
    ctype = request.headers.get("content-type", "").split(";")[0].strip()
    if ctype not in (DELIVERY_TYPE, BATCH_TYPE):
        reason = f"a delivery must be sent as {DELIVERY_TYPE} or {BATCH_TYPE}"
        await run_in_threadpool(_refuse_delivery, node, sig, reason)
        raise mark_audited(InvalidInputError(reason))
    length = request.headers.get("content-length")
    limit = BATCH_MAX_BODY_BYTES if ctype == BATCH_TYPE else _inbox_limit(node)
    if length is not None and length.isdigit() and int(length) > limit:
        reason = f"the delivery is larger than this node accepts ({limit} bytes)"
        await run_in_threadpool(_refuse_delivery, node, sig, reason)
        raise mark_audited(TooLargeError(reason))
    declared = int(length) if length is not None and length.isdigit() else None
    await run_in_threadpool(check_volume, node, sig.partner, declared)  # the partner's daily cap
    if ctype == BATCH_TYPE:
        return await _inbox_batch(request, node, sig)
    body = StreamedBody(request, block=node.settings.upload_prefetch_bytes)
    digester = httpsig.ContentDigester()
    reader = _BodyReader(body.pull, digester, limit)

    def check_digest() -> None:
        try:
            digester.verify(sig.verified.content_digests)
        except CryptoError as exc:
            raise InvalidInputError(
                f"the body does not match its signature: {exc}", reason="digest"
            ) from None

    def work() -> Any:
        try:
            resume = resume_offset(request.headers.get(RESUME_HEADER))
            line = reader.readline(node.settings.max_federation_manifest_bytes)
        except EntenteError as exc:
            Receiver(node, sender=sig.partner, via="push").reject(
                artifact_id=None, reason=exc.message
            )
            mark_audited(exc)
            raise
        rest = None if declared is None else declared - len(line) - 1
        return receive_push(
            node, sender=sig.partner, line=line, body=reader, resume=resume, expect=rest,
            keep_above=BATCH_ITEM_MAX_BYTES, before_commit=check_digest,
        )  # fmt: skip

    received = await body.run(work)
    return signed_json(
        node,
        sig,
        201 if received.created else 200,
        {"receipt": json.loads(received.receipt), "created": received.created},
    )


@router.get(
    "/inbox/partial/{key}",
    summary="How many bytes of a cut delivery of the caller's this node holds (to resume from)",
    responses=FED_PROBLEMS,
)
async def inbox_partial(key: str, request: Request, node: NodeDep, sig: Partner) -> Response:
    await _small_body(request, node, sig)
    held = await run_in_threadpool(inbox_partials(node).offset, sig.partner, key)
    return signed_json(node, sig, 200, {"offset": held})


def _problem(exc: EntenteError) -> dict[str, Any]:
    return {
        "type": problem_type(exc.kind),
        "title": exc.title,
        "status": exc.status,
        "detail": exc.message,
        **{k: v for k, v in exc.extra.items() if isinstance(v, str | int | None)},
    }


def _split_batch(body: bytes, max_manifest: int) -> list[tuple[bytes, bytes]]:
    """Parse ``manifest line \\n length \\n ciphertext`` records; refuses anything else."""
    items: list[tuple[bytes, bytes]] = []
    pos = 0
    while pos < len(body):
        if len(items) >= BATCH_MAX_ITEMS:
            raise TooLargeError(f"a batch holds at most {BATCH_MAX_ITEMS} deliveries")
        eol = body.find(b"\n", pos, pos + max_manifest + 1)
        if eol < 0:
            raise InvalidInputError("a batch item starts with the manifest on one line")
        line = body[pos:eol]
        eol2 = body.find(b"\n", eol + 1, eol + 22)
        size_text = body[eol + 1 : eol2] if eol2 > 0 else b""
        if not size_text.isdigit():
            raise InvalidInputError("a batch item's manifest is followed by its length in decimal")
        start, end = eol2 + 1, eol2 + 1 + int(size_text)
        if end > len(body):
            raise InvalidInputError("a batch item is shorter than its length says")
        items.append((line, body[start:end]))
        pos = end
    if not items:
        raise InvalidInputError("an empty batch")
    return items


async def _inbox_batch(request: Request, node: Node, sig: IncomingSignature) -> Response:
    try:
        body = await _small_body(request, node, sig, limit=BATCH_MAX_BODY_BYTES)
        items = _split_batch(body, node.settings.max_federation_manifest_bytes)
    except EntenteError as exc:
        await run_in_threadpool(_refuse_delivery, node, sig, exc.message)
        mark_audited(exc)
        raise

    # A batch's refusals past the first few are one summary entry: 64 items a request would
    # otherwise write 64 entries, in as many transactions, at every request the rate allows.
    budget = RefusalBudget(BATCH_REFUSALS_AUDITED_EACH)

    def work() -> list[dict[str, Any]]:
        try:
            return take()
        finally:
            summarise_refusals(node, budget, sender=sig.partner, via="push")

    def take() -> list[dict[str, Any]]:
        receiver = Receiver(node, sender=sig.partner, via="push", budget=budget)
        results: list[dict[str, Any] | None] = [None] * len(items)
        checked: list[tuple[int, Checked, bytes]] = []
        for i, (line, ciphertext) in enumerate(items):
            try:
                checked.append((i, receiver.check(line), ciphertext))
            except EntenteError as exc:
                results[i] = {"artifact_id": None, "status": exc.status, "problem": _problem(exc)}
        held = receiver.held([c.manifest.artifact_id for _, c, _ in checked])
        staged: list[tuple[int, Any]] = []
        try:
            for i, c, ciphertext in checked:
                artifact_id = c.manifest.artifact_id
                try:
                    if artifact_id in held:
                        again = receiver.repeat(held[artifact_id], c.manifest)
                        results[i] = _result(again)
                    else:
                        staged.append((i, receiver.stage(c, io.BytesIO(ciphertext))))
                except EntenteError as exc:
                    results[i] = {
                        "artifact_id": artifact_id, "status": exc.status, "problem": _problem(exc),
                    }  # fmt: skip
            for (i, _), received in zip(
                staged, receiver.commit([s for _, s in staged]), strict=True
            ):
                results[i] = _result(received)
        except BaseException:
            receiver.discard([s for _, s in staged])
            raise
        return [r or {"status": 500} for r in results]

    results = await anyio.to_thread.run_sync(work, limiter=body_limiter(request))
    return signed_json(node, sig, 200, {"results": results})


def _result(received: Received) -> dict[str, Any]:
    return {
        "artifact_id": received.artifact_id,
        "status": 201 if received.created else 200,
        "created": received.created,
        "receipt": json.loads(received.receipt),
    }


@router.get(
    "/feed", summary="Artifacts shared with the caller, after a cursor", responses=FED_PROBLEMS
)
async def feed(
    request: Request,
    node: NodeDep,
    sig: Partner,
    after: Annotated[int, Query(ge=0, le=2**62)] = 0,
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
    responses={
        200: {"content": {"application/octet-stream": {}}},
        206: {"content": {"application/octet-stream": {}}},
        **FED_PROBLEMS,
        416: {"description": "Problem document (RFC 9457)", **PROBLEM},
    },
)
async def payload(artifact_id: str, request: Request, node: NodeDep, sig: Partner) -> Response:
    await _small_body(request, node, sig)
    blob, size = await run_in_threadpool(
        feed_domain.payload_for, node, partner=sig.partner, artifact_id=artifact_id
    )
    start = feed_domain.payload_start(request.headers.get("range"), size)
    headers = {"Content-Type": "application/octet-stream", "Content-Length": str(size)}
    status, offset, digest = 200, 0, bytes.fromhex(blob)
    if start is not None:  # RFC 9110 14.4: the rest, from ``start``
        status, offset = 206, start
        headers["Content-Length"] = str(size - start)
        headers["Content-Range"] = f"bytes {start}-{size - 1}/{size}"
        digest = await run_in_threadpool(_digest_from, node, blob, start)
    headers.update(
        sign_response_headers(
            node,
            request=sig.message,
            status=status,
            headers=headers,
            content_digest=digest_value(digest),
        )
    )

    def chunks() -> Any:
        with node.blobs.open(blob, offset=offset) as fh:
            while data := fh.read(1 << 16):
                yield data

    return StreamingResponse(chunks(), status_code=status, headers=headers)


def _digest_from(node: Node, blob: str, offset: int) -> bytes:
    """The SHA-256 of a blob's bytes from ``offset`` on (a partial answer's Content-Digest)."""
    digester = hashlib.sha256()
    with node.blobs.open(blob, offset=offset) as fh:
        while data := fh.read(1 << 20):
            digester.update(data)
    return digester.digest()


@router.get(
    "/agreements",
    summary="The signed agreements this node holds with the caller, and their state",
    responses=FED_PROBLEMS,
)
async def agreements(request: Request, node: NodeDep, sig: Partner) -> Response:
    await _small_body(request, node, sig)
    held = await run_in_threadpool(agreement_domain.held_for, node, sig.partner)
    return signed_json(node, sig, 200, held)


@router.post("/notices", summary="Revocations and access notices", responses=FED_PROBLEMS)
async def notices(request: Request, node: NodeDep, sig: Partner) -> Response:
    body = await _small_body(request, node, sig)
    try:
        data = strict_json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise InvalidInputError("a notice is a JSON object") from None
    receipt = await run_in_threadpool(notice_domain.accept, node, sender=sig.partner, data=data)
    return signed_json(node, sig, 200, {"receipt": receipt})


@router.post(
    "/receipts",
    summary="Receipts for deliveries the caller pulled from this node's feed",
    responses=FED_PROBLEMS,
)
async def receipts(request: Request, node: NodeDep, sig: Partner) -> Response:
    body = await _small_body(request, node, sig, limit=BATCH_MAX_BODY_BYTES)
    try:
        data = strict_json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise InvalidInputError("receipts come as a JSON object") from None
    if not isinstance(data, dict) or not isinstance(data.get("receipts"), list):
        raise InvalidInputError('receipts come as {"receipts": [DSSE envelopes]}')
    settled = await run_in_threadpool(
        record_receipts, node, partner=sig.partner, receipts=data["receipts"]
    )
    return signed_json(node, sig, 200, {"recorded": settled})


@router.post(
    "/descriptor",
    summary="A partner's rotated node descriptor, signed by its pinned key and its new key",
    responses=FED_PROBLEMS,
)
async def descriptor(request: Request, node: NodeDep, sig: Partner) -> Response:
    body = await _small_body(request, node, sig)
    result = await run_in_threadpool(_rotate, node, sig.partner, body)
    return signed_json(node, sig, 200, result)


def _rotate(node: Node, sender: str, body: bytes) -> dict[str, Any]:
    try:
        claimed = strict_json.loads(Envelope.from_bytes(body).payload).get("node_id")
    except (CryptoError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        raise InvalidInputError("the body is not a node descriptor envelope") from None
    if claimed != sender:
        raise ForbiddenError(f"{sender} may only rotate its own descriptor", reason="not-own")
    with node.db.session() as session:
        try:
            row = rotate_partner(
                session, descriptor_bytes=body, now=node.now(), actor=f"partner:{sender}"
            )
        except PartnerError as exc:
            exc.extra.setdefault("reason", "descriptor")
            raise
    return {"node_id": row.node_id, "fingerprint": row.fingerprint, "accepted": True}
