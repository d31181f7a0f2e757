"""``/v1``: the institute's own users share, list, read and revoke artifacts, see partners and sync.

Roles: ``publisher`` shares and revokes; ``reader`` reads content; every role may list metadata.
Uploads stream: the multipart body is parsed as it arrives and the file part flows straight into
SHA-256 + age encryption, so neither memory nor disk ever holds the plaintext.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

import anyio
import anyio.from_thread
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import ValidationError
from sqlmodel import col, func, select

from service import artifacts as domain
from service.api.deps import NodeDep, require_roles
from service.errors import InvalidInputError, TooLargeError
from service.models import Artifact, Outbox, Partner
from service.node import Node
from service.partners import list_partners
from service.schemas import (
    ArtifactOut,
    ArtifactPage,
    DeliveryOut,
    PartnerOut,
    ShareMetadata,
    SyncPartnerOut,
)
from service.tokens import Principal, Role
from service.upload import MultipartReader, Part, boundary_of

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
                            "type": "string",
                            "description": "JSON object: ShareMetadata (must come first)",
                        },
                        "file": {"type": "string", "format": "binary"},
                    },
                },
                "encoding": {"metadata": {"contentType": "application/json"}},
            }
        },
    }
}


def _out(
    row: Artifact, *, full: bool = False, deliveries: list[Outbox] | None = None
) -> ArtifactOut:
    return ArtifactOut(
        id=row.id,
        direction=row.direction,
        origin=row.origin,
        sender=row.sender,
        title=row.title,
        tlp=row.tlp,
        topics=json.loads(row.topics),
        purposes=json.loads(row.purposes),
        recipients=json.loads(row.recipients),
        created_at=row.created_at,
        recorded_at=row.recorded_at,
        embargo_until=row.embargo_until,
        expires_at=row.expires_at,
        size=row.size,
        sha256=row.sha256,
        revoked_at=row.revoked_at,
        obligations=json.loads(row.obligations),
        policy=json.loads(row.policy_ref),
        manifest=json.loads(row.manifest) if full else None,
        deliveries=[
            DeliveryOut(
                partner=d.partner,
                state=d.state,
                attempts=d.attempts,
                last_error=d.last_error,
                delivered_at=d.delivered_at,
            )
            for d in deliveries
        ]
        if deliveries is not None
        else None,
    )


class _Limited:
    """The file part, refused as soon as it passes the configured size limit."""

    def __init__(self, part: Part, limit: int) -> None:
        self._part = part
        self._limit = limit
        self._seen = 0

    def read(self, n: int = -1, /) -> bytes:
        data = self._part.read(n)
        self._seen += len(data)
        if self._seen > self._limit:
            raise TooLargeError(
                f"the artifact is larger than ENTENTE_MAX_ARTIFACT_BYTES ({self._limit} bytes)"
            )
        return data


def _share_sync(node: Node, pull: Any, boundary: bytes, principal: Principal) -> Artifact:
    settings = node.settings
    reader = MultipartReader(
        pull,
        boundary,
        max_body=settings.max_artifact_bytes + settings.max_metadata_bytes + (64 << 10),
    )
    first = reader.next_part()
    if first is None or first.name != "metadata":
        raise InvalidInputError("the first multipart part must be 'metadata' (a JSON object)")
    raw = first.read_all(settings.max_metadata_bytes)
    try:
        meta = ShareMetadata.model_validate_json(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "metadata"
        raise InvalidInputError(f"metadata.{where}: {err['msg']}", field=where) from None
    decisions = domain.decide_share(node, meta, principal=principal)
    second = reader.next_part()
    if second is None or second.name != "file":
        raise InvalidInputError("the second multipart part must be 'file'")
    return domain.share_artifact(
        node,
        node.blobs,
        meta,
        _Limited(second, settings.max_artifact_bytes),
        principal=principal,
        decisions=decisions,
    )


@router.post(
    "/artifacts",
    status_code=201,
    summary="Share an artifact with partners (streaming multipart upload)",
    openapi_extra=UPLOAD_BODY,
    responses=_problems(400, 401, 403, 413, 422),
)
async def create_artifact(request: Request, node: NodeDep, principal: Publisher) -> ArtifactOut:
    boundary = boundary_of(request.headers.get("content-type"))
    chunks: AsyncIterator[bytes] = request.stream().__aiter__()

    async def next_chunk() -> bytes:
        try:
            return await chunks.__anext__()
        except StopAsyncIteration:
            return b""

    def pull() -> bytes:
        return anyio.from_thread.run(next_chunk)

    row = await anyio.to_thread.run_sync(_share_sync, node, pull, boundary, principal)
    return _out(row)


@router.get(
    "/artifacts",
    summary="List artifacts sent and received",
    responses=_problems(401, 403, 422),
)
def list_artifacts(
    node: NodeDep,
    principal: Anyone,
    direction: Literal["sent", "received"] | None = None,
    partner: Annotated[str | None, Query(max_length=63)] = None,
    tlp: Annotated[str | None, Query(max_length=32)] = None,
    topic: Annotated[str | None, Query(max_length=120)] = None,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
    limit: Annotated[int | None, Query(ge=1)] = None,
) -> ArtifactPage:
    size = min(limit or node.settings.page_size_default, node.settings.page_size_max)
    with node.db.session() as session:
        rows, next_cursor = domain.list_artifacts(
            session,
            direction=direction,
            partner=partner,
            tlp=tlp,
            topic=topic,
            cursor=cursor,
            limit=size,
        )
    return ArtifactPage(items=[_out(r) for r in rows], next_cursor=next_cursor)


@router.get(
    "/artifacts/{artifact_id}",
    summary="An artifact's metadata, signed manifest and delivery state",
    responses=_problems(401, 403, 404),
)
def get_artifact(artifact_id: str, node: NodeDep, principal: Anyone) -> ArtifactOut:
    with node.db.session() as session:
        row = domain.get_artifact(session, artifact_id)
        deliveries = domain.deliveries_for(session, row.id)
    return _out(row, full=True, deliveries=deliveries)


@router.get(
    "/artifacts/{artifact_id}/content",
    summary="Decrypt and stream an artifact's plaintext (audited)",
    response_class=StreamingResponse,
    responses={
        200: {"content": {"application/octet-stream": {}}, "description": "The plaintext"},
        **_problems(401, 403, 404, 409),
    },
)
def get_content(artifact_id: str, node: NodeDep, principal: Reader) -> StreamingResponse:
    stream = domain.open_for_read(node, node.blobs, artifact_id, principal=principal)
    row = stream.artifact
    return StreamingResponse(
        stream.chunks,
        media_type="application/octet-stream",
        headers={
            "Content-Length": str(row.size),
            "Digest-SHA256": row.sha256,
            "Content-Disposition": f'attachment; filename="{row.id}.bin"',
            "Cache-Control": "no-store",
        },
    )


@router.post(
    "/artifacts/{artifact_id}/revoke",
    summary="Revoke an artifact this node shared; partners hide and delete it",
    responses=_problems(401, 403, 404),
)
def revoke(
    artifact_id: str,
    node: NodeDep,
    principal: Revoker,
    reason: Annotated[str, Query(max_length=500)] = "",
) -> ArtifactOut:
    row = domain.revoke_artifact(node, artifact_id, principal=principal, reason=reason)
    return _out(row)


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
        partners_ = [
            p.node_id for p in session.exec(select(Partner).order_by(col(Partner.node_id)))
        ]
        counts: dict[tuple[str, str], int] = {}
        for partner, state, n in session.exec(
            select(Outbox.partner, Outbox.state, func.count()).group_by(
                col(Outbox.partner), col(Outbox.state)
            )
        ):
            counts[(partner, state)] = n
        out = []
        for partner in sorted(set(partners_) | {p for p, _ in counts}):
            last_error = session.exec(
                select(Outbox.last_error)
                .where(Outbox.partner == partner, col(Outbox.last_error).is_not(None))
                .order_by(col(Outbox.id).desc())
                .limit(1)
            ).first()
            last_contact = session.exec(
                select(func.max(Outbox.delivered_at)).where(Outbox.partner == partner)
            ).first()
            failing = session.exec(
                select(func.count()).where(
                    Outbox.partner == partner, Outbox.state == "pending", col(Outbox.attempts) > 0
                )
            ).one()
            out.append(
                SyncPartnerOut(
                    partner=partner,
                    pending=counts.get((partner, "pending"), 0),
                    delivered=counts.get((partner, "delivered"), 0),
                    failing=failing + counts.get((partner, "failed"), 0),
                    last_error=last_error,
                    last_contact=last_contact,
                )
            )
    return out
