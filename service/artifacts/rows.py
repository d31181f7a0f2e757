"""The rows an artifact leaves in the database: its id (``new_artifact_id``, from
``service.artifacts.parties``), the artifact row itself (with the manifest's policy
references), and the outbox row and delivery head for each partner.

Shared by a share at this node (``service.artifacts.share``) and a delivery received from a
partner (``service.federation.receive``), so that both write the same columns the same way.

This module decides nothing and commits nothing: callers own the transaction.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session, col, select

from crypto.dsse import Envelope
from crypto.sealed import (
    Manifest,
    disclosure,
    disclosure_digest,
)
from policies import Decision
from service.artifacts.parties import new_artifact_id
from service.artifacts.sealing import Party, sealing_of
from service.evaluations import summary_from_manifest
from service.models import Artifact, Outbox

__all__ = [
    "Recipient",
    "artifact_row",
    "delivery_head",
    "held_and_locked",
    "json_list",
    "lock_with_onward_copies",
    "new_artifact_id",
]


Recipient = Party  # what sharing needs of a pinned partner: its id and its age recipients


def json_list(text: str) -> list[Any]:
    value = json.loads(text)
    return value if isinstance(value, list) else []


_ARTIFACTS = Artifact.__table__  # type: ignore[attr-defined]
_OUTBOX = Outbox.__table__  # type: ignore[attr-defined]


def _policy_refs(
    decisions: Sequence[tuple[Recipient, Decision]],
    onward_approved: Sequence[str],
    onward: dict[str, Any] | None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(this node's record of the decisions, what the manifest signs).

    The manifest commits to each recipient's decision (and, on an onward share, this node's
    onward decision for it) with a salted SHA-256 (``crypto.sealed.disclosure``); each
    recipient is shown only its own disclosure, with its delivery. The record keeps every
    decision and every disclosure, for this node's users and its deliveries."""
    entries = {
        p.node_id: {
            "partner": p.node_id, "effect": d.effect, "policy": d.policy_ref,
            "rules": [r.to_json() for r in d.rules],
            "obligations": [o.to_json() for o in d.obligations],
        }
        for p, d in decisions
    }  # fmt: skip
    onward_for = {
        e.get("onward_to"): e
        for e in (onward or {}).get("decisions", [])
        if isinstance(e, dict) and isinstance(e.get("onward_to"), str)
    }
    disclosures = {
        partner: disclosure(
            partner, entry, onward=onward_for.get(partner), salt=secrets.token_bytes(16)
        )
        for partner, entry in entries.items()
    }
    signed: dict[str, Any] = {
        "decisions": [
            {"partner": partner, "sha256": disclosure_digest(d)}
            for partner, d in disclosures.items()
        ]
    }
    kept: dict[str, Any] = {"decisions": list(entries.values()), "disclosures": disclosures}
    if onward_approved:
        signed["onward_approved"] = kept["onward_approved"] = sorted(set(onward_approved))
    if onward is not None:
        signed["onward"] = {
            "upstream": onward.get("upstream"),
            "origin": onward.get("origin"),
            "disclosure": onward.get("disclosure"),
        }
        kept["onward"] = onward
    return kept, signed


def delivery_head(row: Artifact, partner: str) -> bytes:
    """The first line of a delivery of ``row`` to ``partner``: the manifest, with what the
    manifest commits to for that partner (its disclosure) when there is one; the manifest
    alone for an artifact shared before commitments."""
    envelope = json.loads(row.manifest)
    shown = json.loads(row.policy_ref or "{}").get("disclosures", {}).get(partner)
    head = envelope if shown is None else {"manifest": envelope, "disclosure": shown}
    return json.dumps(head, separators=(",", ":")).encode()


def artifact_row(
    m: Manifest,
    envelope: Envelope,
    *,
    ciphertext_size: int,
    blob: str | None,
    direction: str,
    sender: str,
    now: datetime,
    obligations: list[dict[str, Any]],
) -> dict[str, Any]:
    """Every column of a new artifact row, sent or received (a Core insert applies no model
    defaults); a received row's receipt and upstream columns are the receiver's to fill.
    An evaluation summary is kept (and its task and model indexed) only if it passes the
    schema (``service.evaluations``); the manifest holds it either way."""
    summary = summary_from_manifest(m.evaluation)
    return {
        "id": m.artifact_id,
        "direction": direction,
        "origin": m.origin,
        "sender": sender,
        "title": m.title,
        "tlp": m.tlp,
        "sealing": sealing_of(m),
        "topics": json.dumps(list(m.topics)),
        "purposes": json.dumps(list(m.purposes)),
        "recipients": json.dumps([r.node_id for r in m.recipients]),
        "created_at": m.created,
        "recorded_at": now,
        "embargo_until": m.embargo_until,
        "expires_at": m.expires_at,
        "size": m.size,
        "sha256": m.sha256,
        "blob": blob,
        "ciphertext_size": ciphertext_size,
        "header_sha256": m.age_header_sha256,
        "manifest": envelope.to_bytes().decode("utf-8"),
        "policy_ref": json.dumps(m.policy),
        "obligations": json.dumps(obligations),
        "revoked_at": None,
        "revocation_reason": None,
        "deleted_at": None,
        "receipt": None,
        "upstream_id": None,
        "upstream_from": None,
        "upstream_origin": None,
        "filename": m.filename,
        "evaluation": None if summary is None else summary.model_dump_json(),
        "eval_task": None if summary is None else summary.task,
        "eval_model": None if summary is None else summary.model,
    }


def _outbox_values(*, partner: str, artifact_id: str, origin: str, now: datetime) -> dict[str, Any]:
    """Every column of a new delivery row but its id (assigned by the database)."""
    return {
        "partner": partner,
        "kind": "deliver",
        "artifact_id": artifact_id,
        "artifact_origin": origin,
        "payload": "{}",
        "state": "pending",
        "attempts": 0,
        "created_at": now,
        "next_attempt_at": now,
        "lease_owner": None,
        "lease_until": None,
        "last_error": None,
        "delivered_at": None,
        "receipt": None,
    }


def lock_with_onward_copies(
    session: Session, node_id: str, artifact_id: str, origin: str, copies: sa.ColumnElement[bool]
) -> tuple[Artifact | None, list[Artifact]]:
    """The artifact ``(artifact_id, origin)`` and this node's onward copies of it that meet
    ``copies``, each row locked (``FOR UPDATE``, PostgreSQL) in key order ``(id, origin)``
    before any is written, and read as locked. Whatever else changes several of these rows in
    one transaction (a retention round on another replica, a revocation, a deletion) takes them
    in the same order, so that no two hold a row the other waits for."""
    this = sa.and_(col(Artifact.id) == artifact_id, col(Artifact.origin) == origin)
    onward = sa.and_(
        col(Artifact.upstream_id) == artifact_id,
        col(Artifact.upstream_from) == origin,
        col(Artifact.origin) == node_id,
        copies,
    )
    row: Artifact | None = None
    found: list[Artifact] = []
    seen: set[tuple[str, str]] = set()
    # Again once the rows are locked: an onward copy committed meanwhile (its transaction held
    # the artifact's lock, ``onward.share_onward``) is found and locked too, never missed.
    while keys := sorted(
        set(session.exec(select(Artifact.id, Artifact.origin).where(this | onward)).all()) - seen
    ):
        for ident, owner in keys:
            seen.add((ident, owner))
            key = sa.and_(col(Artifact.id) == ident, col(Artifact.origin) == owner)
            locked = session.exec(
                select(Artifact)
                .where(key)
                .with_for_update()
                .execution_options(populate_existing=True)
            ).one_or_none()
            if locked is None:
                continue
            if (ident, owner) == (artifact_id, origin):
                row = locked
            else:
                found.append(locked)
    return row, found


def held_and_locked(conn: sa.Connection, artifact_id: str, origin: str) -> bool:
    """Lock ``(artifact_id, origin)`` (``FOR UPDATE``, PostgreSQL; SQLite's writer holds its
    lock already) and say whether this node still holds it, not revoked: an onward copy's
    transaction asks it of its upstream, so that a revocation either comes first and is seen
    here, or waits for the copy and finds it (:func:`lock_with_onward_copies`)."""
    table = Artifact.__table__  # type: ignore[attr-defined]
    found = conn.execute(
        sa.select(table.c.revoked_at, table.c.blob)
        .where(table.c.id == artifact_id, table.c.origin == origin)
        .with_for_update()
    ).first()
    return found is not None and found.revoked_at is None and found.blob is not None
