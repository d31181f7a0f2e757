"""``/v1``: the institute's own users share, list, read and revoke artifacts, see partners and sync.

Roles: ``publisher`` shares and revokes; ``reader`` reads content; every role may list metadata.
Uploads stream: the multipart body is parsed as it arrives and the file part flows straight into
SHA-256 + age encryption, so neither memory nor disk ever holds the plaintext. Both routes that
share take an ``Idempotency-Key`` (``service.api.idempotent``): the whole body is hashed as it
streams, and the key is settled in the share's own transaction.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Callable
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field, ValidationError
from pydantic.json_schema import models_json_schema
from starlette.concurrency import run_in_threadpool

from crypto import strict_json
from service import idempotency
from service.api import resumable
from service.api.bodies import StreamedBody, json_body, parse_json, read_body, refuse_declared
from service.api.deps import require_roles
from service.api.idempotent import HashedPull, answer, carry_out, drain, idempotency_key, replay
from service.api.upload import MultipartReader, Part, boundary_of
from service.artifacts import approvals, listing
from service.artifacts import read as reading
from service.artifacts import revoke as revoking
from service.artifacts import share as sharing
from service.errors import InvalidInputError, TooLargeError
from service.federation import onward as onward_domain
from service.federation import status as sync_status
from service.files import DOWNLOAD_TYPES, content_disposition, media_type_for
from service.models import Approval, Artifact
from service.node import Node
from service.partners import list_partners
from service.schemas import (
    ApprovalOut,
    ArtifactOut,
    ArtifactPage,
    NodeId,
    PartnerOut,
    ShareMetadata,
    SyncPartnerOut,
    approval_out,
    artifact_out,
)
from service.tokens import Principal, Role
from service.web import NodeDep

router = APIRouter(prefix="/v1", tags=["artifacts"])

ANY_ROLE = (Role.PUBLISHER, Role.READER, Role.AUDITOR, Role.ADMIN)
Publisher = Annotated[Principal, Depends(require_roles(Role.PUBLISHER))]
Reader = Annotated[Principal, Depends(require_roles(Role.READER))]
Anyone = Annotated[Principal, Depends(require_roles(*ANY_ROLE))]
Revoker = Annotated[Principal, Depends(require_roles(Role.PUBLISHER, Role.ADMIN))]
Operator = Annotated[Principal, Depends(require_roles(Role.ADMIN, Role.PUBLISHER, Role.AUDITOR))]

PROBLEM = {"content": {"application/problem+json": {"schema": {"type": "object"}}}}


def _problems(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {code: {"description": "Problem document (RFC 9457)", **PROBLEM} for code in codes}


UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["metadata", "file"],
                    "properties": {
                        "metadata": {
                            "$ref": "#/components/schemas/ShareRequest",
                            "description": "What leaves unencrypted, in the signed manifest: a "
                            "JSON object (this part comes first)",
                        },
                        "file": {"type": "string", "format": "binary"},
                    },
                },
                "encoding": {"metadata": {"contentType": "application/json"}},
            }
        },
    }
}


class _Limited:
    """The file part, refused as soon as it passes the configured size limit; ``ended`` runs
    once, when it has been read to its end."""

    def __init__(self, part: Part, limit: int, ended: Callable[[], None] | None = None) -> None:
        self._part = part
        self._limit = limit
        self._seen = 0
        self._ended = ended

    def read(self, n: int = -1, /) -> bytes:
        data = self._part.read(n)
        self._seen += len(data)
        if self._seen > self._limit:
            raise TooLargeError(
                f"the artifact is larger than ENTENTE_MAX_ARTIFACT_BYTES ({self._limit} bytes)"
            )
        if not data and n != 0 and self._ended is not None:
            ended, self._ended = self._ended, None
            ended()
        return data


UPLOAD_ROUTE = "POST /v1/artifacts"
ONWARD_ROUTE = "POST /v1/artifacts/{artifact_id}/share"


def _result(row: Artifact | Approval) -> idempotency.Result:
    """What a share answers, for its idempotency key: 201 and the artifact, or 202 and the
    pending action (two-person control)."""
    if isinstance(row, Approval):
        body = approval_out(row).model_dump_json().encode()
        return idempotency.Result(202, body, f"/v1/approvals/{row.id}")
    return idempotency.Result(201, artifact_out(row).model_dump_json().encode())


def _upload_fingerprint(principal: Principal, pull: HashedPull) -> str:
    return idempotency.fingerprint(
        principal=principal, route=UPLOAD_ROUTE, params={}, body_sha256=pull.hexdigest()
    )


def _upload_limit(node: Node) -> int:
    """Bytes of a whole upload: the file, its metadata and the multipart framing."""
    settings = node.settings
    return settings.max_artifact_bytes + settings.max_metadata_bytes + (64 << 10)


def _share_sync(
    node: Node,
    pull: Any,
    boundary: bytes,
    principal: Principal,
    claim: idempotency.Claim | None = None,
) -> Artifact | Approval:
    """Parse and carry out an upload; with ``claim`` (``pull`` is then a :class:`HashedPull`),
    read the body to its end once the file is read, and settle the key with the share."""
    settings = node.settings
    reader = MultipartReader(pull, boundary, max_body=_upload_limit(node))
    first = reader.next_part()
    if first is None or first.name != "metadata":
        raise InvalidInputError("the first multipart part must be 'metadata' (a JSON object)")
    raw = first.read_all(settings.max_metadata_bytes)
    try:
        strict_json.loads(raw)
    except strict_json.StrictJSONError as exc:
        raise InvalidInputError(f"metadata: not valid JSON: {exc.msg}", field="metadata") from None
    try:
        meta = ShareRequest.model_validate_json(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "metadata"
        raise InvalidInputError(f"metadata.{where}: {err['msg']}", field=where) from None
    terms = meta.terms()
    decisions = sharing.decide_share(node, terms, principal=principal)
    second = reader.next_part()
    if second is None or second.name != "file":
        raise InvalidInputError("the second multipart part must be 'file'")
    ended = None
    if claim is not None and isinstance(pull, HashedPull):

        def ended() -> None:  # the whole body, read (and hashed) to its end: the fingerprint
            while reader.next_part() is not None:
                pass
            claim.fingerprint = _upload_fingerprint(principal, pull)

    # Two-person control: sealed and stored, not shared, until a second person approves.
    if settings.needs_second_approver(terms.tlp):
        return approvals.request_share(
            node, node.blobs, terms, _Limited(second, settings.max_artifact_bytes, ended),
            principal=principal, decisions=decisions, onward_approved=meta.onward_approved,
            also=claim.recorder(_result) if claim is not None else None,
        )  # fmt: skip
    return sharing.share_artifact(
        node, node.blobs, terms, _Limited(second, settings.max_artifact_bytes, ended),
        principal=principal, decisions=decisions, onward_approved=meta.onward_approved,
        also=claim.recorder(_result) if claim is not None else None,
    )  # fmt: skip


@router.post(
    "/artifacts",
    status_code=201,
    response_model=ArtifactOut,
    summary="Share an artifact with partners (streaming multipart upload)",
    openapi_extra={**UPLOAD_BODY, **resumable.CREATE_DESCRIPTION},
    responses={
        202: {
            "model": ApprovalOut,
            "description": "Stored, not shared: the share's TLP needs a second approver "
            "(ENTENTE_TWO_PERSON_TLP); approve it with POST /v1/approvals/{id}/approve",
        },
        **_problems(400, 401, 403, 409, 413, 422, 429),
    },
)
async def create_artifact(request: Request, node: NodeDep, principal: Publisher) -> Any:
    if resumable.incomplete(request):  # Upload-Complete: ?0 (service.api.uploads)
        return await resumable.create_upload(request, node, principal, limit=_upload_limit(node))
    boundary = boundary_of(request.headers.get("content-type"))
    key = idempotency_key(request)
    refuse_declared(request, _upload_limit(node), "the upload")
    body = StreamedBody(request, block=node.settings.upload_prefetch_bytes)
    if key is not None:
        return await _upload_with_key(node, body, boundary, principal, key)
    row = await body.run(_share_sync, node, body.pull, boundary, principal)
    if isinstance(row, Approval):
        return JSONResponse(
            approval_out(row).model_dump(mode="json"),
            status_code=202,
            headers={"Location": f"/v1/approvals/{row.id}"},
        )
    return artifact_out(row)


async def _upload_with_key(
    node: Node, body: StreamedBody, boundary: bytes, principal: Principal, key: str
) -> Response:
    """An upload with an ``Idempotency-Key``: its first result, or that of the key's first
    request once this body is known to be the same (hashed as it streams, never held)."""
    found = await run_in_threadpool(
        idempotency.claim, node, principal=principal, key=key, route=UPLOAD_ROUTE
    )
    hashed = HashedPull(body.pull)
    if isinstance(found, idempotency.Replay):
        await body.run(drain, hashed, _upload_limit(node))
        return replay(found, _upload_fingerprint(principal, hashed))
    await body.run(carry_out, found, _share_sync, node, hashed, boundary, principal, found)
    return answer(found.result)


def _distinct(values: list[str]) -> list[str]:
    if len(set(values)) != len(values):
        raise ValueError("values must not repeat")
    return values


class ShareRequest(ShareMetadata):
    """``metadata`` of ``POST /v1/artifacts``: ShareMetadata, plus the third nodes the publisher
    approves in advance for onward sharing (the originator approval an ``onward`` obligation
    may require). Recorded in the signed manifest; it grants nothing a policy does not allow."""

    onward_approved: Annotated[
        list[NodeId], Field(default_factory=list, max_length=64), AfterValidator(_distinct)
    ]


def share_request_schemas() -> dict[str, Any]:
    """The JSON Schemas of the ``metadata`` part (``ShareRequest`` and what it refers to), for
    the OpenAPI document's components: FastAPI sees the multipart body only as
    ``openapi_extra``, so it would not list them itself."""
    _, top = models_json_schema(
        [(ShareRequest, "validation")], ref_template="#/components/schemas/{model}"
    )
    return dict(top.get("$defs", {}))


class OnwardShareIn(BaseModel):
    """``POST /v1/artifacts/{id}/share``: the third nodes to pass a received artifact on to."""

    model_config = ConfigDict(extra="forbid")

    partners: Annotated[list[NodeId], Field(min_length=1, max_length=64), AfterValidator(_distinct)]


@router.post(
    "/artifacts/{artifact_id}/share",
    status_code=201,
    response_model=ArtifactOut,
    summary="Pass a received artifact on to third nodes (onward sharing, policy-checked)",
    openapi_extra=json_body(OnwardShareIn),
    responses={
        202: {
            "model": ApprovalOut,
            "description": "Not shared yet: the artifact's TLP needs a second approver",
        },
        **_problems(400, 401, 403, 404, 409, 410, 413, 422),
    },
)
async def share_onward(
    artifact_id: str, request: Request, node: NodeDep, principal: Publisher
) -> Any:
    key = idempotency_key(request)
    raw = await read_body(request, limit=node.settings.max_json_body_bytes)
    body = parse_json(raw, OnwardShareIn)
    if key is not None:
        fingerprint = idempotency.fingerprint(
            principal=principal, route=ONWARD_ROUTE, params={"artifact_id": artifact_id},
            body_sha256=hashlib.sha256(raw).hexdigest(),
        )  # fmt: skip
        found = await run_in_threadpool(
            idempotency.claim, node, principal=principal, key=key, route=ONWARD_ROUTE
        )
        if isinstance(found, idempotency.Replay):
            return replay(found, fingerprint)
        found.fingerprint = fingerprint
        await run_in_threadpool(
            carry_out, found, _onward_sync, node, artifact_id, body.partners, principal, found
        )
        return answer(found.result)
    row = await run_in_threadpool(_onward_sync, node, artifact_id, body.partners, principal)
    if isinstance(row, Approval):
        return JSONResponse(
            approval_out(row).model_dump(mode="json"),
            status_code=202,
            headers={"Location": f"/v1/approvals/{row.id}"},
        )
    return artifact_out(row)


def _onward_sync(
    node: Node,
    artifact_id: str,
    targets: list[str],
    principal: Principal,
    claim: idempotency.Claim | None = None,
) -> Artifact | Approval:
    also = claim.recorder(_result) if claim is not None else None
    with node.db.session() as session:
        held = listing.get_artifact(session, artifact_id)
    if node.settings.needs_second_approver(held.tlp):
        # Two-person control: carried out (every check included) when a second person approves.
        summary = {"upstream": held.id, "origin": held.origin, "title": held.title,
                   "tlp": held.tlp, "partners": list(targets)}  # fmt: skip
        return approvals.request_action(
            node, action="share.onward", principal=principal, summary=summary, also=also
        )
    return onward_domain.share_onward(
        node, artifact_id, targets=targets, principal=principal, also=also
    )


LIST_PARAMETERS = frozenset(
    [
        "direction",
        "partner",
        "tlp",
        "topic",
        "purpose",
        "task",
        "model",
        "title",
        "since",
        "until",
        "cursor",
        "limit",
    ]
)


@router.get(
    "/artifacts",
    summary="List artifacts sent and received",
    responses=_problems(401, 403, 422),
)
def list_artifacts(
    request: Request,
    node: NodeDep,
    principal: Anyone,
    direction: Literal["sent", "received"] | None = None,
    partner: Annotated[str | None, Query(max_length=63)] = None,
    tlp: Annotated[str | None, Query(max_length=32)] = None,
    topic: Annotated[str | None, Query(max_length=120)] = None,
    purpose: Annotated[str | None, Query(max_length=120)] = None,
    task: Annotated[str | None, Query(max_length=200, description="Evaluation task")] = None,
    model: Annotated[str | None, Query(max_length=200, description="Evaluated model")] = None,
    title: Annotated[
        str | None, Query(min_length=1, max_length=200, description="Text in the title, any case")
    ] = None,
    since: Annotated[
        AwareDatetime | None, Query(description="Recorded at or after (RFC 3339, with a zone)")
    ] = None,
    until: Annotated[
        AwareDatetime | None, Query(description="Recorded before (RFC 3339, with a zone)")
    ] = None,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
    limit: Annotated[int | None, Query(ge=1)] = None,
) -> ArtifactPage:
    unknown = sorted(set(request.query_params) - LIST_PARAMETERS)
    if unknown:
        raise InvalidInputError(
            f"unknown query parameter {unknown[0][:40]!r}: the listing takes "
            f"{', '.join(sorted(LIST_PARAMETERS))}"
        )
    size = min(limit or node.settings.page_size_default, node.settings.page_size_max)
    with node.db.session() as session:
        keep = listing.ArtifactFilter(
            direction=direction, partner=partner, tlp=tlp, topic=topic, purpose=purpose,
            task=task, model=model, title=title, since=since, until=until,
        )  # fmt: skip
        rows, next_cursor = listing.list_artifacts(session, keep, cursor=cursor, limit=size)
    return ArtifactPage(items=[artifact_out(r) for r in rows], next_cursor=next_cursor)


@router.get(
    "/artifacts/{artifact_id}",
    summary="An artifact's metadata, signed manifest and delivery state",
    responses=_problems(401, 403, 404, 410),
)
def get_artifact(artifact_id: str, node: NodeDep, principal: Anyone) -> ArtifactOut:
    with node.db.session() as session:
        row = listing.get_artifact(session, artifact_id)
        deliveries = listing.deliveries_for(session, row.id)
    return artifact_out(row, full=True, deliveries=deliveries)


@router.get(
    "/artifacts/{artifact_id}/content",
    summary="Decrypt and stream an artifact's plaintext (audited)",
    response_class=StreamingResponse,
    responses={
        200: {"content": {t: {} for t in DOWNLOAD_TYPES}, "description": "The plaintext"},
        **_problems(401, 403, 404, 409, 410, 502),
    },
)
def get_content(artifact_id: str, node: NodeDep, principal: Reader) -> StreamingResponse:
    stream = reading.open_for_read(node, node.blobs, artifact_id, principal=principal)
    row = stream.artifact
    # The first chunk is decrypted before the answer starts, so that stored ciphertext failing
    # verification there is a problem document (502), not a connection cut short.
    first = next(stream.chunks, b"")
    return StreamingResponse(
        itertools.chain((first,), stream.chunks),
        media_type=media_type_for(row.filename),
        headers={
            "Content-Length": str(row.size),
            "Digest-SHA256": row.sha256,
            "Content-Disposition": content_disposition(row.filename or f"{row.id}.bin"),
            "Cache-Control": "no-store",
            # a partner's bytes on this node's origin: never sniffed, never run
            "X-Content-Type-Options": "nosniff",
            "Content-Security-Policy": "sandbox; default-src 'none'",
        },
    )


@router.post(
    "/artifacts/{artifact_id}/revoke",
    summary="Revoke an artifact this node shared; partners hide and delete it",
    responses=_problems(401, 403, 404, 410),
)
def revoke(
    artifact_id: str,
    node: NodeDep,
    principal: Revoker,
    reason: Annotated[str, Query(max_length=500)] = "",
) -> ArtifactOut:
    row = revoking.revoke_artifact(node, artifact_id, principal=principal, reason=reason)
    return artifact_out(row)


@router.get(
    "/partners", summary="Pinned partners and their active policies", responses=_problems(401, 403)
)
def partners(node: NodeDep, principal: Anyone) -> list[PartnerOut]:
    with node.db.session() as session:
        rows = list_partners(session)
    out = []
    for p in rows:
        policy = node.policies.current.get(p.node_id)
        out.append(
            PartnerOut(
                node_id=p.node_id,
                name=p.name,
                url=p.url,
                fingerprint=p.fingerprint,
                descriptor_expires=p.descriptor_expires,
                policy=(
                    {
                        **policy.policy_ref,
                        "mou": policy.mou,
                        "valid_from": policy.valid_from.isoformat(),
                        "valid_until": policy.valid_until.isoformat(),
                    }
                    if policy
                    else None
                ),
            )
        )
    return out


@router.get("/sync", summary="Delivery state per partner", responses=_problems(401, 403))
def sync_state(node: NodeDep, principal: Operator) -> list[SyncPartnerOut]:
    with node.db.session() as session:
        return sync_status.sync_state(session)
