"""Witnessing: this node as a C2SP tlog-witness for its partners' logs, and the submission of
this node's own checkpoints to its partners' witnesses.

Witness side (:func:`add_checkpoint`, c2sp.org/tlog-witness ``add-checkpoint``): a partner sends
``old <size>``, a consistency proof and its newly signed checkpoint. The witness checks the log's
signature against the partner's pinned key, checks the proof from the last checkpoint it cosigned
for that log (atomically: the state row is locked), persists the new checkpoint and answers with
its tlog-cosignature v1 line. A checkpoint that contradicts what it cosigned before (a different
root at the same size, or a failed consistency proof) is refused and kept whole, with the
checkpoint it contradicts, in ``witness_evidence``.

Held checkpoints (:func:`held_checkpoint`): the witness serves, to anyone who asks, the latest
checkpoint it cosigned for a log, with a fresh cosignature: an auditor compares a log with it and
so cannot be shown a truncated or rewritten history (``entente audit verify``). It carries only
the log's size and root hash, which witnesses exist to publish.

Log side (:func:`submit_checkpoint`, :func:`submission_step`): after each new checkpoint, send it
to every pinned partner's witness through a :class:`WitnessTransport`, verify the returned
cosignatures against the partner's pinned key, and store them; they are appended to the checkpoint
served at ``/audit/v1/checkpoint``.

The node's single Ed25519 key signs as the log (signature type 0x01, key name
``entente.dev/audit/<node id>``) and cosigns as a witness (type 0x04, key name
``entente.dev/witness/<node id>``). The two signed messages cannot be confused: a cosigned
message starts ``cosignature/v1\\ntime <n>\\n`` and its second line is not a decimal tree size.

Routine cosignatures are not audit events: each would grow the witness's log, whose checkpoint
the partner would cosign in turn, growing the partner's log, and so on forever. The first
cosignature of a partner's log and every refusal are audited.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol

import httpx
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session, select

from crypto import httpsig
from crypto.errors import CryptoError, MalformedError, VerificationError
from crypto.keys import VerifyKey
from crypto.merkle import EMPTY_ROOT, verify_consistency
from crypto.note import (
    SIG_COSIGNATURE_V1,
    AddCheckpointRequest,
    Checkpoint,
    Cosigner,
    Note,
    NoteVerifier,
    cosign_checkpoint,
    open_checkpoint,
    parse_note,
    parse_signature_lines,
    verify_cosignature,
)
from service.audit import record
from service.audit_models import (
    AuditCosignature,
    AuditWitnessSubmission,
    WitnessEvidence,
    WitnessLog,
)
from service.errors import (
    ConflictError,
    EntenteError,
    ForbiddenError,
    InvalidInputError,
    NotFoundError,
    PartnerUnavailableError,
)
from service.models import Partner
from service.partners import partner_verify_keys
from service.transparency import (
    consistency_proof,
    latest_checkpoint,
    log_origin,
    node_id_from_origin,
    witness_name,
)

if TYPE_CHECKING:
    from service.node import Node

__all__ = [
    "ADD_CHECKPOINT_MAX_BYTES",
    "TLOG_SIZE_MEDIA_TYPE",
    "BadRequestError",
    "SignedWitnessTransport",
    "SubmitOutcome",
    "WitnessReply",
    "WitnessSizeConflictError",
    "WitnessTransport",
    "add_checkpoint",
    "held_checkpoint",
    "partner_witness_verifier",
    "submission_step",
    "submit_checkpoint",
    "witness_cosigner",
]

log = logging.getLogger("entente.witness")

ADD_CHECKPOINT_MAX_BYTES = 140 * 1024  # bytes: a 128 KiB note plus 64 proof lines
TLOG_SIZE_MEDIA_TYPE = "text/x.tlog.size"  # tlog-witness: the 409 body's content type
ADD_CHECKPOINT_PATH = "/federation/v1/add-checkpoint"


class BadRequestError(InvalidInputError):
    """tlog-witness: an old size above the checkpoint size is a 400."""

    kind = "bad-request"
    status = 400
    title = "Bad request"


class WitnessSizeConflictError(ConflictError):
    """tlog-witness: the old size is not the size this witness last cosigned (409, and the body
    is that size in decimal, ``text/x.tlog.size``)."""

    def __init__(self, message: str, *, latest_size: int) -> None:
        super().__init__(message, latest_size=latest_size)
        self.latest_size = latest_size


def witness_cosigner(node: Node) -> Cosigner:
    """The node's Ed25519 key as a tlog-cosignature v1 witness key."""
    return Cosigner(witness_name(node.node_id), node.keys.signing)


def partner_log_verifier(partner: Partner) -> NoteVerifier:
    return NoteVerifier(
        log_origin(partner.node_id), VerifyKey(base64.b64decode(partner.signing_key))
    )


def partner_witness_verifier(partner: Partner) -> NoteVerifier:
    """The pinned partner's key as the verifier of its cosignatures on our checkpoints."""
    return NoteVerifier(
        witness_name(partner.node_id),
        VerifyKey(base64.b64decode(partner.signing_key)),
        SIG_COSIGNATURE_V1,
    )


# ---------------------------------------------------------------------------------------------
# Witness side


def _lock_state(session: Session, *, origin: str, partner: str, now: datetime) -> WitnessLog:
    """The witness state row for ``origin``, created if missing and locked for this transaction:
    checking the old size and storing the new checkpoint must be atomic (tlog-witness)."""
    table = WitnessLog.__table__  # type: ignore[attr-defined]
    values = {"origin": origin, "partner": partner, "size": 0, "root": EMPTY_ROOT}
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert(table) if dialect == "postgresql" else sqlite.insert(table)
    # On SQLite this write is the transaction's first statement: it takes the writer lock.
    session.execute(insert.values(**values).on_conflict_do_nothing(index_elements=["origin"]))
    query = select(WitnessLog).where(WitnessLog.origin == origin)
    if dialect == "postgresql":
        query = query.with_for_update()
    state = session.exec(query.execution_options(populate_existing=True)).one()
    return state


def _refuse(
    session: Session,
    error: EntenteError,
    *,
    partner: str,
    now: datetime,
    origin: str | None = None,
    evidence: WitnessEvidence | None = None,
) -> EntenteError:
    """Audit a refusal (and keep its evidence) durably, then hand back the error to raise.

    Commits the caller's session: the refusal must be on record even though the request fails.
    """
    if evidence is not None and not _evidence_kept(session, evidence):
        session.add(evidence)
    record(
        session,
        kind="witness.refused",
        actor=f"partner:{partner}",
        partner=partner,
        decision="deny",
        detail={
            "origin": origin,
            "reason": error.message,
            "status": error.status,
            "evidence": evidence is not None,
        },
        now=now,
    )
    session.commit()
    return error


def _evidence_kept(session: Session, evidence: WitnessEvidence) -> bool:
    """Whether this conflicting checkpoint is on record already (read under the state lock)."""
    query = select(WitnessEvidence.id).where(
        WitnessEvidence.origin == evidence.origin,
        WitnessEvidence.size == evidence.size,
        WitnessEvidence.root == evidence.root,
    )
    return session.exec(query.limit(1)).first() is not None


def add_checkpoint(
    session: Session,
    *,
    origin_partner: str,
    request_body: bytes,
    cosigner: Cosigner,
    now: datetime,
) -> str:
    """Handle a tlog-witness ``add-checkpoint`` request from the authenticated partner
    ``origin_partner``; return the cosignature line (with its newline).

    Raises :class:`InvalidInputError` (422) for a malformed body or a consistency proof that
    does not verify, :class:`NotFoundError` (404) for an unknown log, :class:`ForbiddenError`
    (403) for a checkpoint not signed by the partner's pinned key, :class:`BadRequestError`
    (400) when the old size exceeds the checkpoint size, :class:`WitnessSizeConflictError`
    (409) when the old size is not what this witness cosigned last, and :class:`ConflictError`
    (409) for a different root at the cosigned size. Refusals are committed to the audit log
    before raising; contradicting checkpoints are kept in ``witness_evidence``.
    """
    # tlog-witness: the body is "old N", proof lines, a blank line, the signed checkpoint.
    try:
        request = AddCheckpointRequest.parse(request_body)
        checkpoint = Checkpoint.parse(parse_note(request.checkpoint).text)
    except MalformedError as exc:
        raise _refuse(
            session,
            InvalidInputError(f"malformed add-checkpoint request: {exc}"),
            partner=origin_partner,
            now=now,
        ) from None
    origin = checkpoint.origin
    # "If the checkpoint origin is unknown, the witness MUST respond with 404".
    log_owner = node_id_from_origin(origin)
    partner = session.get(Partner, log_owner) if log_owner else None
    if partner is None:
        raise _refuse(
            session,
            NotFoundError(f"this witness does not follow a log with origin {origin[:200]!r}"),
            partner=origin_partner,
            now=now,
            origin=origin[:200],
        )
    if partner.node_id != origin_partner:
        raise _refuse(
            session,
            ForbiddenError(f"partner {origin_partner} may submit only its own log's checkpoints"),
            partner=origin_partner,
            now=now,
            origin=origin,
        )
    # "If none of the signatures verify against a trusted public key ... 403".
    try:
        open_checkpoint(request.checkpoint, log=partner_log_verifier(partner))
    except CryptoError:
        raise _refuse(
            session,
            ForbiddenError("the checkpoint is not signed by the partner's pinned key"),
            partner=origin_partner,
            now=now,
            origin=origin,
        ) from None
    # "The old size MUST be equal to or lower than the checkpoint size" (else 400).
    if request.old_size > checkpoint.size:
        raise _refuse(
            session,
            BadRequestError(
                f"old size {request.old_size} is above the checkpoint size {checkpoint.size}"
            ),
            partner=origin_partner,
            now=now,
            origin=origin,
        )

    state = _lock_state(session, origin=origin, partner=partner.node_id, now=now)
    first = state.note is None

    def evidence(reason: str) -> WitnessEvidence:
        return WitnessEvidence(
            origin=origin,
            partner=partner.node_id,
            received_at=now,
            reason=reason,
            old_size=request.old_size,
            size=checkpoint.size,
            root=checkpoint.root_hash,
            request=request_body,
            cosigned_size=state.size,
            cosigned_root=bytes(state.root),
            cosigned_note=state.note,
        )

    # "The witness MUST check that the old size matches the size of the latest checkpoint it
    # cosigned ... If it doesn't match ... 409", body: that size.
    if request.old_size != state.size:
        session.commit()  # release the lock; a stale client is not misbehaviour
        raise WitnessSizeConflictError(
            f"this witness last cosigned size {state.size}, not {request.old_size}",
            latest_size=state.size,
        )
    if request.old_size == 0:
        # "The proof MUST be empty if the old size is zero."
        if request.proof:
            raise _refuse(
                session,
                InvalidInputError("a consistency proof from size 0 must be empty"),
                partner=origin_partner,
                now=now,
                origin=origin,
            )
    elif request.old_size == checkpoint.size:
        if request.proof:
            raise _refuse(
                session,
                InvalidInputError("a consistency proof between equal sizes must be empty"),
                partner=origin_partner,
                now=now,
                origin=origin,
            )
        # "If the old size matches the checkpoint size, ... the root hashes [must be]
        # identical. If they don't match, ... 409".
        if checkpoint.root_hash != bytes(state.root):
            reason = f"a different root hash for size {checkpoint.size}, which was cosigned"
            raise _refuse(
                session,
                ConflictError(f"conflicting checkpoint: {reason}"),
                partner=origin_partner,
                now=now,
                origin=origin,
                evidence=evidence(reason),
            )
    else:
        # "The consistency proof lines MUST encode a Merkle Consistency Proof from the old size
        # to the checkpoint size ... If [it] doesn't verify, ... 422."
        try:
            verify_consistency(
                size1=request.old_size,
                size2=checkpoint.size,
                root1=bytes(state.root),
                root2=checkpoint.root_hash,
                proof=request.proof,
            )
        except (VerificationError, MalformedError) as exc:
            reason = f"not consistent with the cosigned size {state.size}: {exc}"
            raise _refuse(
                session,
                InvalidInputError(f"inconsistent checkpoint: {reason}"),
                partner=origin_partner,
                now=now,
                origin=origin,
                evidence=evidence(reason),
            ) from None

    # "The witness MUST update its record of the latest cosigned checkpoint" and persist it
    # before responding (the caller's transaction commits before the response is sent).
    state.size = checkpoint.size
    state.root = checkpoint.root_hash
    state.note = request.checkpoint.decode("utf-8")
    state.cosigned_at = now
    session.add(state)
    if first:
        record(
            session,
            kind="witness.cosigned",
            actor=f"partner:{origin_partner}",
            partner=partner.node_id,
            decision="allow",
            detail={
                "origin": origin,
                "size": checkpoint.size,
                "root": base64.b64encode(checkpoint.root_hash).decode("ascii"),
                "first": True,
            },
            now=now,
        )
    signature = cosign_checkpoint(checkpoint, cosigner=cosigner, timestamp=int(now.timestamp()))
    return signature.line()


def held_checkpoint(session: Session, *, origin: str, cosigner: Cosigner, now: datetime) -> bytes:
    """The latest checkpoint this witness cosigned for ``origin``, as the log signed it, with
    this witness's cosignature dated ``now`` (it still vouches for it: tlog-cosignature v1).

    Raises :class:`NotFoundError` for a log it does not follow or has not cosigned yet.
    """
    state = session.get(WitnessLog, origin[:200])
    if state is None or state.note is None:
        raise NotFoundError(f"this witness holds no cosigned checkpoint of {origin[:200]!r}")
    note = parse_note(state.note.encode("utf-8"))
    checkpoint = Checkpoint.parse(note.text)
    line = cosign_checkpoint(checkpoint, cosigner=cosigner, timestamp=int(now.timestamp()))
    return Note(note.text, (*note.signatures[:1], line)).to_bytes()


# ---------------------------------------------------------------------------------------------
# Log side: submitting our checkpoints to partners' witnesses


@dataclass(frozen=True)
class WitnessReply:
    status: int
    content_type: str
    body: bytes


class WitnessTransport(Protocol):
    """Sends an add-checkpoint body to a partner's witness; transport failures become
    :class:`PartnerUnavailableError`. The production transport signs the request (RFC 9421)."""

    async def add_checkpoint(
        self, *, partner_id: str, partner_url: str, body: bytes
    ) -> WitnessReply: ...


class SignedWitnessTransport:
    """A :class:`WitnessTransport` speaking the federation protocol: the request is RFC 9421-signed
    with this node's key (``service.federation.signing``), and a ``200`` or ``409`` size answer is
    believed only with a valid signature by the partner's pinned key over a matching body.

    ``client`` (an ``httpx.AsyncClient``) is for tests (``httpx.ASGITransport`` to an in-process
    partner); by default the transport opens one client on first use and keeps it (its
    connections and TLS context) for every later submission, until :meth:`aclose`.
    """

    def __init__(self, node: Node, client: httpx.AsyncClient | None = None) -> None:
        self._node = node
        self._client = client
        self._own: httpx.AsyncClient | None = None  # the client this transport opened

    def _http(self) -> httpx.AsyncClient:
        if self._client is not None:
            return self._client
        if self._own is None:
            timeout = httpx.Timeout(self._node.settings.request_timeout_seconds, connect=5.0)
            self._own = httpx.AsyncClient(timeout=timeout)
        return self._own

    async def aclose(self) -> None:
        """Close the client this transport opened (a client passed in is the caller's)."""
        own, self._own = self._own, None
        if own is not None:
            await own.aclose()

    async def add_checkpoint(
        self, *, partner_id: str, partner_url: str, body: bytes
    ) -> WitnessReply:
        from service.federation.signing import (
            digest_value,
            sign_request_headers,
            verify_response_from,
        )

        node = self._node
        url = partner_url.rstrip("/") + ADD_CHECKPOINT_PATH
        headers = {"Content-Type": "text/plain; charset=utf-8"}
        headers.update(
            sign_request_headers(
                node,
                method="POST",
                url=url,
                headers=headers,
                content_digest=digest_value(hashlib.sha256(body).digest()),
            )
        )
        try:
            response = await self._http().post(url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            raise PartnerUnavailableError(
                f"partner {partner_id} witness unreachable: {type(exc).__name__}"
            ) from None
        content = response.content[:ADD_CHECKPOINT_MAX_BYTES]
        content_type = response.headers.get("content-type", "").split(";")[0].strip()
        if response.status_code == 200 or content_type == TLOG_SIZE_MEDIA_TYPE:
            keys = await asyncio.to_thread(_partner_keys, node, partner_id)
            try:
                verified = verify_response_from(
                    node,
                    partner_keys=keys,
                    request=httpsig.Request("POST", url, headers),
                    status=response.status_code,
                    headers=list(response.headers.multi_items()),
                )
                digester = httpsig.ContentDigester()
                digester.update(response.content)
                digester.verify(verified.content_digests)
            except CryptoError as exc:
                raise PartnerUnavailableError(
                    f"partner {partner_id} answered without a valid signature: {exc}"
                ) from None
        return WitnessReply(response.status_code, content_type, content)


def _partner_keys(node: Node, partner_id: str) -> dict[str, VerifyKey]:
    with node.db.session() as session:
        return partner_verify_keys(session, partner_id)


@dataclass(frozen=True)
class SubmitOutcome:
    partner: str
    state: str  # cosigned | up-to-date | not-due | retry | failed
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
    row = session.get(AuditWitnessSubmission, partner)
    if row is None:
        row = AuditWitnessSubmission(partner=partner, next_attempt_at=now, updated_at=now)
        session.add(row)
    return row


def _prepare(node: Node, partner_id: str) -> _Prepared | SubmitOutcome:
    now = node.now()
    with node.db.session() as session:
        partner = session.get(Partner, partner_id)
        if partner is None:
            return SubmitOutcome(partner_id, "failed", 0, "not a pinned partner")
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
        return _Prepared(
            partner.url,
            latest.size,
            body,
            Checkpoint.parse(own.text),
            partner_witness_verifier(partner),
        )


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
                return SubmitOutcome(partner_id, "retry", prepared.size, row.last_error)
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
    return outcome


def _partner_ids(node: Node) -> list[str]:
    with node.db.session() as session:
        return [p.node_id for p in session.exec(select(Partner).order_by(Partner.node_id))]


def submission_step(node: Node, transport: WitnessTransport) -> Callable[[], Awaitable[float]]:
    """A worker step: submit the latest checkpoint to every pinned partner, concurrently."""

    async def step() -> float:
        partners = await asyncio.to_thread(_partner_ids, node)
        outcomes: list[Any] = await asyncio.gather(
            *(submit_checkpoint(node, transport, p) for p in partners), return_exceptions=True
        )
        for partner, outcome in zip(partners, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                log.error("submitting a checkpoint to %s failed", partner, exc_info=outcome)
        return node.settings.checkpoint_interval_seconds

    return step
