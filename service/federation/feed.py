"""The feed a node offers each partner: every delivery queued for that partner, by cursor.

A partner that was down or partitioned reads the feed after its last cursor and fetches what it
does not have, so delivery completes even if every push failed. The cursor is the outbox row id.
Revoked and deleted artifacts are left out (their revocation travels as a notice).

Small ciphertexts of deliveries not yet acknowledged ride along inline (``payload``, base64), up
to a byte budget per page, so a catch-up after a partition costs one request per page rather
than one per artifact; anything else is fetched from ``artifacts/{id}/payload``. Every item
names its ciphertext's SHA-256 and size (``ciphertext_sha256``, ``ciphertext_size``), so that a
partner whose download broke off can keep what it got and ask for the rest (``Range: bytes=N-``,
:func:`payload_start`; ``service.federation.partial``), and check the whole before using it.
"""

from __future__ import annotations

import base64
import json
import re
from typing import Any

import sqlalchemy as sa
from sqlmodel import col, select

from service.errors import NotFoundError, RangeNotSatisfiableError
from service.models import Artifact, Outbox
from service.node import Node

__all__ = ["INLINE_MAX_BYTES", "PAGE_INLINE_BUDGET", "page", "payload_for", "payload_start"]

INLINE_MAX_BYTES = 64 << 10  # bytes: larger ciphertexts are always fetched separately
PAGE_INLINE_BUDGET = 4 << 20  # bytes of inline ciphertext in one page


def page(node: Node, *, partner: str, after: int, limit: int) -> dict[str, Any]:
    with node.db.session() as session:
        rows = session.exec(
            select(Outbox, Artifact)
            .join(
                Artifact,
                sa.and_(
                    col(Artifact.id) == col(Outbox.artifact_id),
                    col(Artifact.origin) == col(Outbox.artifact_origin),
                ),
            )
            .where(
                Outbox.partner == partner,
                Outbox.kind == "deliver",
                col(Outbox.id) > after,
            )
            .order_by(col(Outbox.id))
            .limit(limit)
        ).all()
    items = []
    budget = PAGE_INLINE_BUDGET
    for out, art in rows:
        if art.revoked_at is not None or art.deleted_at is not None or art.blob is None:
            continue
        item: dict[str, Any] = {
            "cursor": out.id,
            "artifact_id": art.id,
            "manifest": json.loads(art.manifest),
            "ciphertext_sha256": art.blob,
            "ciphertext_size": art.ciphertext_size,
        }
        shown = json.loads(art.policy_ref or "{}").get("disclosures", {}).get(partner)
        if shown is not None:  # what the manifest commits to for this partner, for it only
            item["disclosure"] = shown
        if out.state != "delivered" and art.ciphertext_size <= min(INLINE_MAX_BYTES, budget):
            try:
                with node.blobs.open(art.blob) as fh:
                    data = fh.read(INLINE_MAX_BYTES + 1)
            except NotFoundError:
                data = b""
            if data and len(data) <= INLINE_MAX_BYTES:
                item["payload"] = base64.b64encode(data).decode("ascii")
                budget -= len(data)
        items.append(item)
    last = rows[-1][0].id if rows else after
    return {"items": items, "next": last, "more": len(rows) == limit}


def payload_for(node: Node, *, partner: str, artifact_id: str) -> tuple[str, int]:
    """The blob and size of an artifact shared with ``partner``; 404 for anything else."""
    with node.db.session() as session:
        row = session.exec(
            select(Artifact)
            .join(
                Outbox,
                sa.and_(
                    col(Outbox.artifact_id) == col(Artifact.id),
                    col(Outbox.artifact_origin) == col(Artifact.origin),
                ),
            )
            .where(
                Artifact.id == artifact_id,
                Artifact.origin == node.node_id,
                Outbox.partner == partner,
                Outbox.kind == "deliver",
            )
        ).first()
    if row is None or row.blob is None or row.revoked_at is not None or row.deleted_at is not None:
        raise NotFoundError(f"no artifact {artifact_id!r} for {partner}")
    return row.blob, row.ciphertext_size


_RANGE_FROM = re.compile(r"bytes=(\d{1,19})-")


def payload_start(range_header: str | None, size: int) -> int | None:
    """Where a payload answer starts for the request's ``Range``: ``None`` for the whole (no
    ``Range``, or one this node does not serve, which RFC 9110 14.2 lets it ignore), else the
    first byte of ``bytes=N-``; :class:`RangeNotSatisfiableError` when ``N`` is not before the
    end."""
    if range_header is None:
        return None
    found = _RANGE_FROM.fullmatch(range_header.strip())
    if found is None:
        return None
    start = int(found.group(1))
    if start >= size:
        raise RangeNotSatisfiableError(
            f"the payload has {size} bytes; the range starts at byte {start}", size=size
        )
    return start
