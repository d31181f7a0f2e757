"""The log side of witnessing: submitting this node's checkpoints to its witnesses.

After each new checkpoint (:func:`submit_checkpoint`, :func:`submission_step`), send it to every
chosen partner's witness through a :class:`WitnessTransport` (signed federation requests), and
to every witness of ``ENTENTE_EXTERNAL_WITNESSES_FILE`` through the plain C2SP request
(``service.audit.witness_external``); verify the returned cosignatures against the partner's
pinned key or the external witness's configured key, and store them; they are appended to the
checkpoint served at ``/audit/v1/checkpoint``.

This module does not act as a witness for partners' logs (``service.audit.witness``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol

from sqlmodel import Session, select

from crypto.errors import CryptoError, MalformedError
from crypto.note import (
    AddCheckpointRequest,
    Checkpoint,
    Note,
    NoteVerifier,
    parse_note,
    parse_signature_lines,
    verify_cosignature,
)
from service.audit.checkpoints import latest_checkpoint
from service.audit.entries import log_origin
from service.audit.errors import WitnessConfigError
from service.audit.models import (
    AuditCosignature,
    AuditWitnessSubmission,
)
from service.audit.rollback import check_node
from service.audit.tree import consistency_proof
from service.audit.witness import (
    ADD_CHECKPOINT_MAX_BYTES,
    ADD_CHECKPOINT_PATH,
    TLOG_SIZE_MEDIA_TYPE,
    partner_witness_verifier,
)
from service.audit.witness_choice import choose_witnesses
from service.audit.witness_external import (
    PlainWitnessTransport,
    WitnessReply,
    external_witnesses,
    is_external,
)
from service.db import insert_if_missing
from service.errors import (
    DatabaseError,
    NotFoundError,
    PartnerUnavailableError,
)
from service.models import Partner

if TYPE_CHECKING:
    from service.federation.client import PartnerClient
    from service.node import Node


__all__ = [
    "SignedWitnessTransport",
    "SubmitOutcome",
    "WitnessReply",
    "WitnessTransport",
    "all_witnesses",
    "submission_step",
    "submit_checkpoint",
    "witnesses_in_use",
]

log = logging.getLogger("entente.witness")

# ---------------------------------------------------------------------------------------------
# Log side: submitting our checkpoints to partners' witnesses


class WitnessTransport(Protocol):
    """Sends an add-checkpoint body to a partner's witness; transport failures become
    :class:`PartnerUnavailableError`. The production transport signs the request (RFC 9421)."""

    async def add_checkpoint(
        self, *, partner_id: str, partner_url: str, body: bytes
    ) -> WitnessReply: ...


class SignedWitnessTransport:
    """A :class:`WitnessTransport` speaking the federation protocol through the node's one
    signed partner client (:class:`service.federation.client.PartnerClient`): the request is
    RFC 9421-signed with this node's key, and a ``200`` or ``409`` size answer is believed only
    with a valid signature by the partner's pinned key over a matching body. The client is
    synchronous; each call runs on a worker thread.
    """

    def __init__(self, client: PartnerClient) -> None:
        self._client = client

    async def add_checkpoint(
        self, *, partner_id: str, partner_url: str, body: bytes
    ) -> WitnessReply:
        reply = await asyncio.to_thread(
            self._client.post_raw,
            partner_id,
            partner_url.rstrip("/") + ADD_CHECKPOINT_PATH,
            body,
            content_type="text/plain; charset=utf-8",
            limit=ADD_CHECKPOINT_MAX_BYTES,
            signed_when=lambda status, media_type: (
                status == 200 or media_type == TLOG_SIZE_MEDIA_TYPE
            ),
        )
        return WitnessReply(reply.status, reply.content_type, reply.body)


@dataclass(frozen=True)
class SubmitOutcome:
    partner: str
    state: str  # cosigned | up-to-date | not-due | retry | behind | failed
    size: int
    detail: str = ""


@dataclass(frozen=True)
class _Prepared:
    partner_url: str
    size: int
    body: bytes
    checkpoint: Checkpoint
    verifier: NoteVerifier


def _submission_row(session: Session, partner: str, now: datetime) -> AuditWitnessSubmission:
    """The submission state for ``partner``, created if missing. Replicas of one node on one
    database each run this worker, so two may create it at once: the insert yields to a row
    another has inserted (a duplicate-key error before, logged as a failed submission)."""
    row = session.get(AuditWitnessSubmission, partner)
    if row is None:
        table = AuditWitnessSubmission.__table__  # type: ignore[attr-defined]
        values = {"partner": partner, "cosigned_size": 0, "attempts": 0,
                  "next_attempt_at": now, "updated_at": now}  # fmt: skip
        insert_if_missing(session, table, values, ["partner"])
        row = session.get(AuditWitnessSubmission, partner, populate_existing=True)
        if row is None:  # neither inserted here nor by another replica: the database lost it
            raise DatabaseError(f"the witness submission state of {partner} was not stored")
    return row


def _witness(session: Session, node: Node, witness_id: str) -> tuple[str, NoteVerifier] | None:
    """Where a witness takes submissions, and its cosigner key: a pinned partner's, or one of
    ``ENTENTE_EXTERNAL_WITNESSES_FILE``."""
    if is_external(witness_id):
        for external in external_witnesses(node.settings.external_witnesses_file):
            if external.key == witness_id:
                return external.url, external.verifier
        return None
    partner = session.get(Partner, witness_id)
    return None if partner is None else (partner.url, partner_witness_verifier(partner))


def _prepare(node: Node, partner_id: str) -> _Prepared | SubmitOutcome:
    now = node.now()
    with node.db.session() as session:
        witness = _witness(session, node, partner_id)
        if witness is None:
            return SubmitOutcome(partner_id, "failed", 0, "not a pinned partner or a witness")
        try:
            latest = latest_checkpoint(session)
        except NotFoundError:
            return SubmitOutcome(partner_id, "not-due", 0, "no checkpoint yet")
        row = _submission_row(session, partner_id, now)
        have = session.get(AuditCosignature, (latest.size, partner_id)) is not None
        if row.cosigned_size == latest.size and have:
            return SubmitOutcome(partner_id, "up-to-date", latest.size)
        if row.next_attempt_at > now:
            return SubmitOutcome(partner_id, "not-due", latest.size)
        old = row.cosigned_size
        if old > latest.size:
            message = (
                f"the witness holds size {old} for this log, above our latest checkpoint "
                f"{latest.size}: our log was rolled back or forked"
            )
            log.error("partner %s: %s", partner_id, message)
            _failed(row, message, now, node)
            return SubmitOutcome(partner_id, "failed", latest.size, message)
        proof = (
            consistency_proof(session, old=old, new=latest.size) if 0 < old < latest.size else []
        )
        # Submit the log's own signature only; cosignatures are the witnesses' business.
        own = parse_note(latest.note)
        note = Note(own.text, own.signatures[:1]).to_bytes()
        body = AddCheckpointRequest(old, tuple(proof), note).to_bytes()
        return _Prepared(witness[0], latest.size, body, Checkpoint.parse(own.text), witness[1])


def _failed(row: AuditWitnessSubmission, message: str, now: datetime, node: Node) -> None:
    row.attempts += 1
    row.last_error = message[:1000]
    base = node.settings.retry_base_seconds
    delay = min(node.settings.retry_max_seconds, base * (2 ** min(row.attempts, 30)))
    row.next_attempt_at = now + timedelta(seconds=delay)
    row.updated_at = now


def _conclude(
    node: Node, partner_id: str, prepared: _Prepared, reply: WitnessReply
) -> SubmitOutcome:
    now = node.now()
    with node.db.session() as session:
        row = _submission_row(session, partner_id, now)
        if reply.status == 200:
            try:
                signatures = parse_signature_lines(reply.body.decode("utf-8"))
            except (UnicodeDecodeError, MalformedError) as exc:
                _failed(row, f"the witness answered an unreadable body: {exc}", now, node)
                return SubmitOutcome(partner_id, "failed", prepared.size, row.last_error or "")
            verifier = prepared.verifier
            stored = 0
            for sig in signatures:
                # tlog-witness: "The client MUST ignore any cosignatures from unknown keys."
                if (sig.name, sig.key_id) != (verifier.name, verifier.key_id):
                    continue
                try:
                    timestamp = verify_cosignature(
                        prepared.checkpoint,
                        sig,
                        verifier=verifier,
                        now=int(now.timestamp()),
                        max_future_skew=node.settings.clock_skew_seconds,
                    )
                except CryptoError as exc:
                    _failed(row, f"the witness's cosignature does not verify: {exc}", now, node)
                    return SubmitOutcome(partner_id, "failed", prepared.size, row.last_error or "")
                existing = session.get(AuditCosignature, (prepared.size, partner_id))
                if existing is None:
                    session.add(
                        AuditCosignature(
                            checkpoint_size=prepared.size,
                            witness=partner_id,
                            line=sig.line(),
                            timestamp=timestamp,
                            received_at=now,
                        )
                    )
                stored += 1
                break
            if not stored:
                _failed(row, "the witness returned no cosignature by its pinned key", now, node)
                return SubmitOutcome(partner_id, "failed", prepared.size, row.last_error or "")
            row.cosigned_size = prepared.size
            row.attempts = 0
            row.last_error = None
            row.next_attempt_at = now
            row.updated_at = now
            return SubmitOutcome(partner_id, "cosigned", prepared.size)
        if reply.status == 409 and reply.content_type == TLOG_SIZE_MEDIA_TYPE:
            # The witness holds another size for our log: learn it and retry from there.
            text = reply.body.decode("ascii", "replace").strip()
            if text.isdigit() and len(text) <= 19:
                held = int(text)
                row.cosigned_size = held
                row.last_error = f"the witness holds size {held}"
                row.next_attempt_at = now
                row.updated_at = now
                # Above our latest checkpoint: our log is behind it (service.audit.rollback).
                state = "behind" if held > prepared.size else "retry"
                return SubmitOutcome(partner_id, state, prepared.size, row.last_error)
        detail = reply.body[:300].decode("utf-8", "replace")
        if reply.status == 0:
            _failed(row, detail, now, node)
        else:
            _failed(row, f"the witness refused ({reply.status}): {detail}", now, node)
        log.warning("partner %s refused checkpoint %d: %s", partner_id, prepared.size, detail)
        return SubmitOutcome(partner_id, "failed", prepared.size, row.last_error or "")


async def _submit_once(node: Node, transport: WitnessTransport, partner_id: str) -> SubmitOutcome:
    prepared = await asyncio.to_thread(_prepare, node, partner_id)
    if isinstance(prepared, SubmitOutcome):
        return prepared
    try:
        reply = await transport.add_checkpoint(
            partner_id=partner_id, partner_url=prepared.partner_url, body=prepared.body
        )
    except PartnerUnavailableError as exc:
        reply = WitnessReply(0, "", exc.message.encode("utf-8"))
    return await asyncio.to_thread(_conclude, node, partner_id, prepared, reply)


async def submit_checkpoint(
    node: Node, transport: WitnessTransport, partner_id: str
) -> SubmitOutcome:
    """Send our latest checkpoint to one partner's witness (retrying once after a 409 that
    tells us the size it holds) and store its cosignature."""
    outcome = await _submit_once(node, transport, partner_id)
    if outcome.state == "retry":
        outcome = await _submit_once(node, transport, partner_id)
    elif outcome.state == "behind" and not is_external(partner_id):
        # The number alone proves nothing (any partner could claim one): ask for the checkpoint
        # it holds, which counts only if this log's key signed it. (An external witness's
        # claim only moves where the next proof starts from.)
        await asyncio.to_thread(check_node, node, only=[partner_id])
    return outcome


def chosen_witnesses(node: Node) -> list[str]:
    """The partners asked to witness this node's log (``service.audit.witness_choice``)."""
    return choose_witnesses(
        log_origin(node.node_id), _all_partner_ids(node), node.settings.witness_count
    )


def all_witnesses(node: Node) -> list[str]:
    """Every witness asked to cosign this node's log: the chosen partners, then the external
    witnesses (``external:<key id>``)."""
    externals = external_witnesses(node.settings.external_witnesses_file)
    return [*chosen_witnesses(node), *(w.key for w in externals)]


def witnesses_in_use(node: Node) -> tuple[list[str], WitnessConfigError | None]:
    """The witnesses asked now: :func:`all_witnesses`, or only the chosen partners (and the
    error) when ``ENTENTE_EXTERNAL_WITNESSES_FILE`` broke since the node started (``serve``
    refuses to start with a broken one), so a bad edit never stops the partners' witnessing."""
    try:
        return all_witnesses(node), None
    except WitnessConfigError as exc:
        return chosen_witnesses(node), exc


def _all_partner_ids(node: Node) -> list[str]:
    with node.db.session() as session:
        return [p.node_id for p in session.exec(select(Partner).order_by(Partner.node_id))]


def submission_step(
    node: Node, transport: WitnessTransport, external: WitnessTransport | None = None
) -> Callable[[], Awaitable[float]]:
    """A worker step: submit the latest checkpoint to every witness, concurrently: the chosen
    partners through ``transport``, the external witnesses through ``external`` (plain C2SP
    requests)."""
    plain = external or PlainWitnessTransport(limit=ADD_CHECKPOINT_MAX_BYTES)

    async def step() -> float:
        partners, broken = await asyncio.to_thread(witnesses_in_use, node)
        if broken is not None:
            log.error("%s", broken.message)
        outcomes: list[Any] = await asyncio.gather(
            *(submit_checkpoint(node, plain if is_external(p) else transport, p) for p in partners),
            return_exceptions=True,
        )
        for partner, outcome in zip(partners, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                log.error("submitting a checkpoint to %s failed", partner, exc_info=outcome)
        settings = node.settings
        return settings.witness_interval_seconds or settings.checkpoint_interval_seconds

    return step
