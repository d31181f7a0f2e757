"""``/v1/uploads/{id}``: a resumable upload's offset (``HEAD``), appends (``PATCH``) and
cancellation (``DELETE``), per draft-ietf-httpbis-resumable-upload.

An upload is created by ``POST /v1/artifacts`` with ``Upload-Complete: ?0``
(``service.api.resumable``). Only the token that created it may touch it: to any other it does
not exist (404). An append sends ``Content-Type: application/partial-upload``, the
``Upload-Offset`` it starts from (the offset stored, else a 409 ``mismatching-upload-offset``
problem naming ``expected-offset``) and ``Upload-Complete``. The last append's answer is the
share's: the whole stored body is carried out as the ``POST /v1/artifacts`` it would have been
(the same parsing, policy checks, two-person control and audit), answering 201 with the
artifact, 202 with the pending approval, or the same problem document. Then:

- carried out: the bytes go; the answer is kept under an idempotency key of this route
  (``service.idempotency``, settled in the share's transaction), and the upload stays,
  complete, so that a client whose answer was lost sends the last append again and gets that
  answer (``Idempotent-Replayed``), never a second share;
- refused: the upload is gone, as a refused plain share leaves nothing;
- failed on this side (a 5xx: the blob store or the database unavailable): the upload is open
  again, its bytes kept, for the last append to be sent again.

The store is ``service.uploads``.
"""

from __future__ import annotations

import functools
import hashlib
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Depends, Path, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from service import idempotency, uploads
from service.api.artifacts import PROBLEM, _problems, _share_sync, _upload_limit
from service.api.bodies import StreamedBody, body_limiter
from service.api.deps import require_roles
from service.api.idempotent import answer, carry_out, replay
from service.api.resumable import (
    INTERRUPTIONS,
    PARTIAL_UPLOAD,
    sf_boolean,
    sf_integer,
    upload_headers,
)
from service.api.upload import boundary_of
from service.errors import (
    EntenteError,
    IdempotencyKeyInFlightError,
    InvalidInputError,
    NotFoundError,
    UploadCompletedError,
)
from service.models import Approval, Artifact
from service.node import Node
from service.schemas import ApprovalOut, ArtifactOut
from service.tokens import Principal, Role
from service.web import NodeDep

__all__ = ["router"]

router = APIRouter(prefix="/v1", tags=["artifacts"])

Publisher = Annotated[Principal, Depends(require_roles(Role.PUBLISHER))]
UploadId = Annotated[str, Path(max_length=40, pattern=r"^upl_[0-9a-f]{32}$")]

_STATE_HEADERS = {
    name: {"description": why, "schema": {"type": "string"}}
    for name, why in (
        ("Upload-Offset", "Bytes stored: where the next append starts"),
        ("Upload-Complete", "?1 once the last append came, else ?0"),
        ("Upload-Limit", "max-size (bytes of the whole body) and max-age (seconds)"),
    )
}
APPEND_BODY = {
    "requestBody": {
        "required": True,
        "content": {PARTIAL_UPLOAD: {"schema": {"type": "string", "format": "binary"}}},
    }
}


def _state_response(node: Node, found: uploads.UploadState) -> Response:
    headers = upload_headers(found, max_size=_upload_limit(node), now=node.now())
    return Response(status_code=204, headers=headers)


@router.head(
    "/uploads/{upload_id}",
    status_code=204,
    summary="A resumable upload's offset (Upload-Offset) and state",
    responses={
        204: {"description": "The upload's state", "headers": _STATE_HEADERS},
        **_problems(401, 403, 404, 422),
    },
)
def upload_offset(upload_id: UploadId, node: NodeDep, principal: Publisher) -> Response:
    return _state_response(node, uploads.state(node, upload_id, principal=principal))


@router.patch(
    "/uploads/{upload_id}",
    status_code=204,
    response_model=None,
    summary="Append to a resumable upload; the last append carries out the share",
    openapi_extra=APPEND_BODY,
    responses={
        201: {"model": ArtifactOut, "description": "The last append: the share's answer"},
        202: {
            "model": ApprovalOut,
            "description": "The last append: waiting for a second "
            "approver, as POST /v1/artifacts would",
        },
        204: {"description": "Appended; more is to come", "headers": _STATE_HEADERS},
        409: {
            "description": "mismatching-upload-offset (with expected-offset and the right "
            "Upload-Offset), idempotency-key-in-flight (the share still runs), or the "
            "share's own conflicts",
            **PROBLEM,
        },
        **_problems(400, 401, 403, 404, 408, 413, 422, 429),
    },
)
async def append_upload(
    upload_id: UploadId, request: Request, node: NodeDep, principal: Publisher
) -> Any:
    ctype = (request.headers.get("content-type") or "").split(";")[0].strip().lower()
    if ctype != PARTIAL_UPLOAD:
        raise InvalidInputError(
            f"an append's body is Content-Type: {PARTIAL_UPLOAD}",
            reason="unsupported-media-type",
        )
    offset = sf_integer(request, "Upload-Offset")
    complete = sf_boolean(request, "Upload-Complete")
    if offset is None or complete is None:
        raise InvalidInputError("an append sends Upload-Offset and Upload-Complete")
    held = await run_in_threadpool(uploads.state, node, upload_id, principal=principal)
    if held.complete:  # its share was carried out (or is being): answer it again, if known
        return await run_in_threadpool(_answer_again, node, held, principal)
    limit = _upload_limit(node)
    body = StreamedBody(request, block=node.settings.upload_prefetch_bytes)
    found = await body.run(
        functools.partial(
            uploads.append, node, upload_id, principal=principal, offset=offset,
            pull=body.pull, complete=complete, max_size=limit, interruptions=INTERRUPTIONS,
        )
    )  # fmt: skip
    if not found.complete:
        return _state_response(node, found)
    try:
        claimed = await run_in_threadpool(
            idempotency.claim, node, principal=principal, key=_key(upload_id), route=COMPLETE_ROUTE
        )
        if isinstance(claimed, idempotency.Replay):  # pragma: no cover - a key no client sends
            return replay(claimed, _fingerprint(principal, upload_id))
        claimed.fingerprint = _fingerprint(principal, upload_id)
        await anyio.to_thread.run_sync(
            carry_out, claimed, _share_stored, node, found, principal, claimed,
            limiter=body_limiter(request),
        )  # fmt: skip
    except EntenteError as exc:
        # Unavailable here (503), or the completion's key held by a retry of this very append
        # (409): the client may send the last append again. A refusal, or anything else, ends
        # the upload as it ends a plain share.
        again = exc.status >= 500 or isinstance(exc, IdempotencyKeyInFlightError)
        done = uploads.reopen if again else uploads.discard
        await anyio.to_thread.run_sync(done, node, upload_id)
        raise
    except Exception:
        await anyio.to_thread.run_sync(uploads.discard, node, upload_id)
        raise
    await anyio.to_thread.run_sync(uploads.finish, node, upload_id)
    return answer(claimed.result)


COMPLETE_ROUTE = "PATCH /v1/uploads/{upload_id}"


def _key(upload_id: str) -> str:
    """The idempotency key under which a completed upload's answer is kept. It holds a tab,
    which no ``Idempotency-Key`` (an RFC 8941 string: printable ASCII and spaces) can: a
    client's key for another share could otherwise take it first, and leave the upload
    complete, never carried out, its bytes kept."""
    return f"upload\t{upload_id}"


def _fingerprint(principal: Principal, upload_id: str) -> str:
    return idempotency.fingerprint(
        principal=principal, route=COMPLETE_ROUTE, params={"upload_id": upload_id},
        body_sha256=hashlib.sha256(upload_id.encode()).hexdigest(),
    )  # fmt: skip


def _answer_again(node: Node, found: uploads.UploadState, principal: Principal) -> Response:
    """The answer of a completed upload's share, again (its client lost it), marked
    ``Idempotent-Replayed``; a 409 while that share still runs, a 400 ``completed-upload``
    once it is forgotten."""
    claimed = idempotency.claim(node, principal=principal, key=_key(found.id), route=COMPLETE_ROUTE)
    if isinstance(claimed, idempotency.Replay):
        return replay(claimed, _fingerprint(principal, found.id))
    claimed.release()
    claimed.stop()
    raise UploadCompletedError(f"the upload {found.id} is complete: nothing more is taken")


def _share_stored(
    node: Node, found: uploads.UploadState, principal: Principal, claim: idempotency.Claim
) -> Artifact | Approval:
    """The stored body, carried out as ``POST /v1/artifacts`` (``_share_sync``) would, its
    answer kept under ``claim`` in the share's own transaction."""
    chunks = uploads.plaintext(node, found.id)
    try:
        pull = lambda: next(chunks, b"")  # noqa: E731
        return _share_sync(node, pull, boundary_of(found.content_type), principal, claim)
    finally:
        chunks.close()


@router.delete(
    "/uploads/{upload_id}",
    status_code=204,
    summary="Cancel a resumable upload (its stored bytes are deleted)",
    responses=_problems(401, 403, 404, 422),
)
def cancel_upload(upload_id: UploadId, node: NodeDep, principal: Publisher) -> Response:
    if not uploads.discard(node, upload_id, principal=principal):
        raise NotFoundError("no such upload (or it expired, or another token created it)")
    return Response(status_code=204)
