"""Noticing that this node's log is behind its witnesses, and keeping it from forking.

A node restored from an older snapshot (``entente restore``) has a log that ends where the
snapshot ended, while its partners' witnesses hold a newer checkpoint they cosigned. Signing any
new checkpoint then forks the log: at a size the witnesses cosigned it would carry another root,
and above it no consistency proof from what they hold can exist (the entries in between are
gone). So the node must notice and stop signing, and say so.

How it notices (:func:`check_witnesses`): it asks each witness of its log for the latest
checkpoint it cosigned (``GET /witness/v1/checkpoint``, as ``entente audit verify`` does) and
believes only what it can check: a checkpoint signed by this log's own key and cosigned by the
witness's pinned key. A size above the log's head, or another root at a size the log has, is
recorded per witness in ``audit_rollbacks`` (state ``behind``, the served checkpoint kept as
evidence), audited once as ``audit.rollback_detected`` and logged as an error. It asks at every
start (the sequencer's first round) and whenever a witness's ``add-checkpoint`` answer names a
size above the log (``service.audit.submission``). ``entente restore`` asks at once and leaves an
``unconfirmed`` row for each witness it could not reach, so that the restored node signs nothing
before it has heard from every one of them.

How it stops (:func:`signing_blocked`): while any row exists the sequencer signs no checkpoint;
entries keep being recorded, unsequenced. An ``unconfirmed`` row goes once its witness answers
with nothing newer than the log; a ``behind`` row stays: the operator's way out is a newer
backup (docs/backup.md). A partner cannot stop the log by claiming a size: only a checkpoint
this log's key signed counts.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

import httpx
import sqlalchemy as sa
from sqlmodel import Session, select

from crypto.errors import CryptoError
from crypto.note import NoteVerifier, open_checkpoint
from service.audit.entries import log_origin, log_signer
from service.audit.log import record
from service.audit.models import AuditCheckpoint, AuditRollback
from service.audit.sources import ask_witness
from service.audit.tree import _head_size
from service.audit.witness import partner_witness_verifier
from service.audit.witness_choice import choose_witnesses
from service.db import Database
from service.models import Partner

if TYPE_CHECKING:
    from service.node import Node

__all__ = [
    "WitnessCheck",
    "check_node",
    "check_unconfirmed",
    "check_witnesses",
    "mark_unconfirmed",
    "rollback_rows",
    "signing_blocked",
    "witness_ids",
]

log = logging.getLogger("entente.audit")

_rollbacks = AuditRollback.__table__  # type: ignore[attr-defined]
_checkpoints = AuditCheckpoint.__table__  # type: ignore[attr-defined]


@dataclass(frozen=True)
class WitnessCheck:
    """What one witness's view of this log says."""

    witness: str
    state: str  # consistent | behind | unreachable | unverifiable
    held_size: int | None = None
    detail: str = ""
    note: bytes | None = None


def signing_blocked(session: Session) -> AuditRollback | None:
    """A row that stops the sequencer (any), or None."""
    return session.exec(select(AuditRollback).limit(1)).first()


def rollback_rows(session: Session) -> list[AuditRollback]:
    return list(session.exec(select(AuditRollback).order_by(AuditRollback.witness)))


def witness_ids(session: Session, node_id: str, count: int) -> list[str]:
    """The partners asked to witness ``node_id``'s log (``service.audit.witness_choice``)."""
    partners = [p.node_id for p in session.exec(select(Partner).order_by(Partner.node_id))]
    return choose_witnesses(log_origin(node_id), partners, count)


def mark_unconfirmed(session: Session, witnesses: Sequence[str], *, now: datetime) -> None:
    """After a restore: every witness is unconfirmed until it answers (the caller commits)."""
    size = _head_size(session)
    for witness in witnesses:
        if session.get(AuditRollback, witness) is None:
            session.add(
                AuditRollback(
                    witness=witness, state="unconfirmed", local_size=size, detected_at=now
                )
            )


def _judge(
    partner: Partner, note: bytes | None, error: str | None, *, log_key: NoteVerifier, now: int
) -> tuple[str, int | None, str]:
    """(state, held size, detail) of one witness's answer, before looking at the log."""
    if note is None:
        if error == "it holds no checkpoint of this log":
            return "consistent", 0, error
        return "unreachable", None, error or "no answer"
    try:
        opened = open_checkpoint(
            note, log=log_key, witnesses=[partner_witness_verifier(partner)], now=now
        )
    except CryptoError as exc:
        return "unverifiable", None, f"its checkpoint does not verify with this log's key: {exc}"
    if not opened.cosignatures:
        return "unverifiable", None, "its checkpoint carries no cosignature by its pinned key"
    return (
        "consistent",
        opened.checkpoint.size,
        base64.b64encode(opened.checkpoint.root_hash).decode(),
    )


def check_witnesses(
    db: Database,
    *,
    node_id: str,
    log_key: NoteVerifier,
    witness_count: int,
    now: datetime,
    only: Sequence[str] | None = None,
    actor: str = "node:witness-check",
    http: httpx.Client | None = None,
) -> list[WitnessCheck]:
    """Ask the log's witnesses (or ``only`` these) what they hold, record what it shows (see
    the module's docstring), and return one :class:`WitnessCheck` each.

    ``http``: the client to ask them with (default: one per witness). Blocking (HTTP to each
    witness, side by side, each answer bounded in size and to
    ``service.audit.sources.WITNESS_SECONDS``): run it in a thread."""
    origin = log_origin(node_id)
    with db.session() as session:
        chosen = witness_ids(session, node_id, witness_count)
        partners = [
            p
            for p in session.exec(select(Partner).where(Partner.node_id.in_(chosen)))  # type: ignore[attr-defined]
            if only is None or p.node_id in only
        ]
    if not partners:
        return []

    def ask(partner: Partner) -> tuple[Partner, bytes | None, str | None]:
        view = ask_witness(partner_witness_verifier(partner), partner.url, origin, client=http)
        return partner, view.note, view.error

    with ThreadPoolExecutor(max_workers=min(8, len(partners))) as pool:
        answers = list(pool.map(ask, partners))
    checks: list[WitnessCheck] = []
    with db.session() as session:
        size = _head_size(session)
        for partner, note, error in answers:
            state, held, detail = _judge(
                partner, note, error, log_key=log_key, now=int(now.timestamp())
            )
            if state == "consistent" and held:
                if held > size:
                    state = "behind"
                    detail = (
                        f"witness {partner.node_id} cosigned size {held} of this log, which has "
                        f"{size} entries: entries {size} to {held - 1} are missing here (a "
                        "restore from an older snapshot?)"
                    )
                else:
                    ours = session.execute(
                        sa.select(_checkpoints.c.root).where(_checkpoints.c.size == held)
                    ).scalar_one_or_none()
                    if ours is not None and base64.b64encode(bytes(ours)).decode() != detail:
                        state = "behind"
                        detail = (
                            f"witness {partner.node_id} cosigned size {held} of this log with "
                            "another root than this log's checkpoint of that size: the log "
                            "was forked"
                        )
            check = WitnessCheck(partner.node_id, state, held, detail, note)
            _record(session, check, local_size=size, now=now, actor=actor)
            checks.append(check)
    return checks


def _record(
    session: Session, check: WitnessCheck, *, local_size: int, now: datetime, actor: str
) -> None:
    row = session.get(AuditRollback, check.witness)
    if check.state == "consistent":
        if row is not None and row.state == "unconfirmed":
            session.delete(row)
            log.info("witness %s holds nothing newer than this log (%s)", check.witness, local_size)
        return
    if check.state != "behind":
        if row is not None and row.state == "unconfirmed":
            log.warning(
                "since the restore, witness %s has not confirmed this log (%s); no checkpoint "
                "is signed until it does",
                check.witness,
                check.detail,
            )
        return
    log.error(
        "AUDIT LOG ROLLED BACK: %s. Refusing to sign any checkpoint: it would fork the log at "
        "sizes the witness already cosigned. Restore a newer backup (docs/backup.md).",
        check.detail,
    )
    if row is not None and row.state == "behind" and row.held_size == check.held_size:
        return  # known already: audited once
    if row is None:
        row = AuditRollback(
            witness=check.witness, state="behind", local_size=local_size, detected_at=now
        )
    row.state = "behind"
    row.local_size = local_size
    row.held_size = check.held_size
    row.note = check.note.decode("utf-8", "replace") if check.note is not None else None
    row.detected_at = now
    session.add(row)
    record(
        session,
        kind="audit.rollback_detected",
        actor=actor,
        partner=check.witness,
        decision="deny",
        detail={
            "witness": check.witness,
            "held_size": check.held_size,
            "local_size": local_size,
            "reason": check.detail,
        },
        now=now,
    )


def check_unconfirmed(node: Node) -> list[WitnessCheck]:
    """Ask the witnesses not heard from since a restore (none: nothing to do, no request)."""
    with node.db.session() as session:
        rows = list(session.exec(select(AuditRollback).where(AuditRollback.state == "unconfirmed")))
        if not rows:
            return []
        chosen = set(witness_ids(session, node.node_id, node.settings.witness_count))
        waiting = []
        for row in rows:
            if row.witness in chosen:
                waiting.append(row.witness)
            else:  # unpinned since, or no longer one of the log's witnesses: not waited for
                session.delete(row)
    if not waiting:
        return []
    return check_node(node, only=waiting)


def check_node(node: Node, *, only: Sequence[str] | None = None) -> list[WitnessCheck]:
    """:func:`check_witnesses` for the running ``node`` (its log key, settings and clock)."""
    return check_witnesses(
        node.db,
        node_id=node.node_id,
        log_key=log_signer(node).verifier,
        witness_count=node.settings.witness_count,
        now=node.now(),
        only=only,
    )
