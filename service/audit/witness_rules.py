"""The tlog-witness ``add-checkpoint`` rules (c2sp.org/tlog-witness) as a pure checker.

It takes facts (the request body, the authenticated submitter, the pinned partner whose log the
checkpoint names, the size and root this witness cosigned last) and returns a verdict: the parsed
:class:`Submission`, or a :class:`Refusal` that names the error to answer with, whether to audit
it, and, for a checkpoint that contradicts what was cosigned, why to keep it as evidence.

This module reads no database, writes no audit entry and commits nothing: the witness
(``service.audit.witness``) looks the facts up, locks the state, and records the outcome once.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass

from crypto.errors import CryptoError, MalformedError, VerificationError
from crypto.keys import VerifyKey
from crypto.merkle import verify_consistency
from crypto.note import AddCheckpointRequest, Checkpoint, NoteVerifier, open_checkpoint, parse_note
from service.audit.entries import log_origin
from service.audit.errors import BadRequestError, WitnessSizeConflictError
from service.errors import (
    ConflictError,
    EntenteError,
    ForbiddenError,
    InvalidInputError,
    NotFoundError,
)
from service.models import Partner

__all__ = [
    "Refusal",
    "Submission",
    "check_against_cosigned",
    "check_signed",
    "check_submitter",
    "parse_submission",
    "partner_log_verifier",
]


@dataclass(frozen=True)
class Submission:
    """A well-formed ``add-checkpoint`` request: ``old <size>``, the proof, the signed note."""

    body: bytes
    request: AddCheckpointRequest
    checkpoint: Checkpoint

    @property
    def origin(self) -> str:
        return self.checkpoint.origin


@dataclass(frozen=True)
class Refusal:
    """Why not to cosign. ``origin`` goes into the audit entry (None before the body parsed);
    ``evidence`` is set when the checkpoint contradicts what this witness cosigned (the reason,
    to keep the checkpoint whole). A stale old size is not misbehaviour (the 409 tells the log
    the size to retry from): its error is ``quiet``, and the witness does not audit it."""

    error: EntenteError
    origin: str | None = None
    evidence: str | None = None


def partner_log_verifier(partner: Partner) -> NoteVerifier:
    """The partner's log key: the checkpoint key its descriptor advertises, or its signing key
    for a partner whose descriptor has none."""
    key = partner.checkpoint_key or partner.signing_key
    return NoteVerifier(log_origin(partner.node_id), VerifyKey(base64.b64decode(key)))


def parse_submission(body: bytes) -> Submission | Refusal:
    """tlog-witness: the body is "old N", proof lines, a blank line, the signed checkpoint."""
    try:
        request = AddCheckpointRequest.parse(body)
        checkpoint = Checkpoint.parse(parse_note(request.checkpoint).text)
    except MalformedError as exc:
        return Refusal(InvalidInputError(f"malformed add-checkpoint request: {exc}"))
    return Submission(body, request, checkpoint)


def check_submitter(
    submission: Submission, *, submitter: str, log_owner: Partner | None
) -> Partner | Refusal:
    """Whether the authenticated ``submitter`` may submit this checkpoint: ``log_owner`` is the
    pinned partner whose log the origin names (None when no pinned partner has that log).
    Returns that partner when it may, else the refusal."""
    origin = submission.origin
    # "If the checkpoint origin is unknown, the witness MUST respond with 404".
    if log_owner is None:
        return Refusal(
            NotFoundError(f"this witness does not follow a log with origin {origin[:200]!r}"),
            origin=origin[:200],
        )
    if log_owner.node_id != submitter:
        return Refusal(
            ForbiddenError(f"partner {submitter} may submit only its own log's checkpoints"),
            origin=origin,
        )
    refusal = check_signed(
        submission, partner_log_verifier(log_owner), whose="the partner's pinned key"
    )
    return log_owner if refusal is None else refusal


def check_signed(submission: Submission, log: NoteVerifier, *, whose: str) -> Refusal | None:
    """Whether the checkpoint is signed by ``log`` (the key of the log its origin names,
    ``whose`` in the refusal) and its old size is at most its size."""
    origin = submission.origin
    # "If none of the signatures verify against a trusted public key ... 403".
    try:
        open_checkpoint(submission.request.checkpoint, log=log)
    except CryptoError:
        return Refusal(ForbiddenError(f"the checkpoint is not signed by {whose}"), origin=origin)
    # "The old size MUST be equal to or lower than the checkpoint size" (else 400).
    old, size = submission.request.old_size, submission.checkpoint.size
    if old > size:
        return Refusal(
            BadRequestError(f"old size {old} is above the checkpoint size {size}"), origin=origin
        )
    return None


def check_against_cosigned(
    submission: Submission, *, cosigned_size: int, cosigned_root: bytes
) -> Refusal | None:
    """Whether the checkpoint extends the one this witness cosigned last for its log."""
    request, checkpoint, origin = submission.request, submission.checkpoint, submission.origin
    # "The witness MUST check that the old size matches the size of the latest checkpoint it
    # cosigned ... If it doesn't match ... 409", body: that size.
    if request.old_size != cosigned_size:
        return Refusal(
            WitnessSizeConflictError(
                f"this witness last cosigned size {cosigned_size}, not {request.old_size}",
                latest_size=cosigned_size,
            ),
            origin=origin,
        )
    if request.old_size == 0:
        # "The proof MUST be empty if the old size is zero."
        if request.proof:
            return Refusal(
                InvalidInputError("a consistency proof from size 0 must be empty"), origin=origin
            )
    elif request.old_size == checkpoint.size:
        if request.proof:
            return Refusal(
                InvalidInputError("a consistency proof between equal sizes must be empty"),
                origin=origin,
            )
        # "If the old size matches the checkpoint size, ... the root hashes [must be]
        # identical. If they don't match, ... 409".
        if checkpoint.root_hash != cosigned_root:
            reason = f"a different root hash for size {checkpoint.size}, which was cosigned"
            return Refusal(
                ConflictError(f"conflicting checkpoint: {reason}"), origin=origin, evidence=reason
            )
    else:
        # "The consistency proof lines MUST encode a Merkle Consistency Proof from the old size
        # to the checkpoint size ... If [it] doesn't verify, ... 422."
        try:
            verify_consistency(
                size1=request.old_size,
                size2=checkpoint.size,
                root1=cosigned_root,
                root2=checkpoint.root_hash,
                proof=request.proof,
            )
        except (VerificationError, MalformedError) as exc:
            reason = f"not consistent with the cosigned size {cosigned_size}: {exc}"
            return Refusal(
                InvalidInputError(f"inconsistent checkpoint: {reason}"),
                origin=origin,
                evidence=reason,
            )
    return None
