"""The header fields of resumable uploads, and the ``POST /v1/artifacts`` that creates one.

IETF httpbis draft *Resumable Uploads for HTTP* (draft-ietf-httpbis-resumable-upload):

- ``Upload-Complete`` (an RFC 8941 Boolean, ``?0`` or ``?1``): on ``POST /v1/artifacts``,
  ``?0`` makes the request create an upload resource with the part of the body it carries
  (:func:`create_upload`); ``?1``, or no field, is the share as it always was. On ``PATCH``
  it says whether the append is the last.
- ``Upload-Offset`` (an Integer): the bytes stored, answered by every upload route; an append
  sends the offset it starts from.
- ``Upload-Length`` (an Integer): the whole body's length, when the client knows it.
- ``Upload-Limit`` (a Dictionary): ``max-size`` (bytes of the whole body) and ``max-age``
  (seconds the upload waits for its next append).
- ``Upload-Draft-Interop-Version`` (an Integer): the draft's interop version, 8 (its section
  "Draft Version Identification"), on every answer; the Python client sends it too.

The server cannot send the draft's ``104 (Upload Resumption Supported)`` interim answer (ASGI
has none), so a client learns the upload's URL from the creation's final answer: a client that
wants every byte resumable creates the upload with an empty body, then appends it all.

Malformed fields are ``invalid-input`` problems. A creation that fails or is interrupted
discards its upload: its client never learnt the upload's URL. The routes on the upload
resource are ``service.api.uploads``.
"""

from __future__ import annotations

import functools
from datetime import datetime
from typing import Any

from fastapi import Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from service import uploads
from service.api.bodies import StreamedBody, refuse_declared
from service.api.idempotent import idempotency_key
from service.api.upload import boundary_of
from service.errors import InvalidInputError, RequestTimeoutError
from service.node import Node
from service.tokens import Principal

__all__ = [
    "CREATE_DESCRIPTION",
    "INTEROP_VERSION",
    "INTERRUPTIONS",
    "PARTIAL_UPLOAD",
    "create_upload",
    "incomplete",
    "sf_boolean",
    "sf_integer",
    "upload_headers",
]

PARTIAL_UPLOAD = "application/partial-upload"  # the media type of an append's body
INTEROP_VERSION = "8"  # Upload-Draft-Interop-Version this implementation follows
MAX_DIGITS = 15  # RFC 8941 3.3.1: an Integer has at most 15 digits
# What ends an append early without losing its bytes: the client went away, or stalled.
INTERRUPTIONS: tuple[type[BaseException], ...] = (ClientDisconnect, RequestTimeoutError)


# POST /v1/artifacts's OpenAPI description of the resumable path. (Its fields are not declared
# as parameters: the 201 of a creation has no body, which the route's schema, the artifact's,
# cannot say.)
CREATE_DESCRIPTION: dict[str, Any] = {
    "description": "Shares the file of a streamed multipart body. With the header "
    "`Upload-Complete: ?0` (and optionally `Upload-Length`, the whole body's bytes) it creates "
    "a resumable upload instead (draft-ietf-httpbis-resumable-upload): 201 without a body, with "
    "`Location: /v1/uploads/{id}`, `Upload-Offset` and `Upload-Limit`; the rest is appended "
    "with `PATCH /v1/uploads/{id}`, whose last append answers as this route would. "
    "`Upload-Complete: ?1`, or no such header, is this route as always."
}


def _malformed(name: str, want: str) -> InvalidInputError:
    return InvalidInputError(f"the {name} header must be {want}", field=name)


def _one(request: Request, name: str) -> str | None:
    values = request.headers.getlist(name)
    if len(values) > 1:
        raise _malformed(name, "sent once")
    return values[0].strip(" ") if values else None


def sf_boolean(request: Request, name: str) -> bool | None:
    """An RFC 8941 Boolean field (``?0``, ``?1``), or None when absent."""
    value = _one(request, name)
    if value is None:
        return None
    if value not in ("?0", "?1"):
        raise _malformed(name, "an RFC 8941 Boolean: ?0 or ?1")
    return value == "?1"


def sf_integer(request: Request, name: str) -> int | None:
    """An RFC 8941 Integer field that is not negative, or None when absent."""
    value = _one(request, name)
    if value is None:
        return None
    if not value.isascii() or not value.isdigit() or len(value) > MAX_DIGITS:
        raise _malformed(name, "a non-negative RFC 8941 Integer")
    return int(value)


def incomplete(request: Request) -> bool:
    """True for a ``POST /v1/artifacts`` that creates a resumable upload (``Upload-Complete:
    ?0``); False for a share as it always was (``?1`` or no field)."""
    return sf_boolean(request, "Upload-Complete") is False


def upload_headers(found: uploads.UploadState, *, max_size: int, now: datetime) -> dict[str, str]:
    """The fields every upload route answers with."""
    max_age = max(0, int((found.expires_at - now).total_seconds()))
    headers = {
        "Upload-Offset": str(found.received),
        "Upload-Complete": "?1" if found.complete else "?0",
        "Upload-Limit": f"max-size={max_size}, max-age={max_age}",
        "Upload-Draft-Interop-Version": INTEROP_VERSION,
        "Cache-Control": "no-store",
    }
    if found.length is not None:
        headers["Upload-Length"] = str(found.length)
    return headers


async def create_upload(request: Request, node: Node, principal: Principal, *, limit: int) -> Any:
    """``POST /v1/artifacts`` with ``Upload-Complete: ?0``: a new upload holding the part of
    the body this request carries; 201 with its ``Location`` and offset."""
    if idempotency_key(request) is not None:
        raise InvalidInputError(
            "a resumable upload takes no Idempotency-Key: its appends are already safe to "
            "retry at the offset HEAD answers"
        )
    content_type = request.headers.get("content-type") or ""
    boundary_of(content_type)  # the share it becomes must be multipart/form-data
    if len(content_type) > 300:
        raise InvalidInputError("the multipart Content-Type is longer than 300 characters")
    refuse_declared(request, limit, "the upload")
    created = await run_in_threadpool(
        functools.partial(
            uploads.create, node, principal=principal, content_type=content_type,
            length=sf_integer(request, "Upload-Length"), max_size=limit,
        )
    )  # fmt: skip
    body = StreamedBody(request, block=node.settings.upload_prefetch_bytes)
    try:
        found = await body.run(
            functools.partial(
                uploads.append, node, created.id, principal=principal, offset=0,
                pull=body.pull, complete=False, max_size=limit, interruptions=INTERRUPTIONS,
            )
        )  # fmt: skip
    except BaseException:  # the client never learns where the upload is: nothing to resume
        await run_in_threadpool(uploads.discard, node, created.id)
        raise
    headers = upload_headers(found, max_size=limit, now=node.now())
    headers["Location"] = f"/v1/uploads/{found.id}"
    return Response(status_code=201, headers=headers)
