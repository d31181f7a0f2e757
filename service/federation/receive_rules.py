"""The protocol rules of receiving an artifact, as pure functions of facts.

A delivery's first line (the manifest, and the decision disclosed to this node beside it) and
what the receiver knows about its sender (:class:`SenderFacts`: the sender's pinned keys, the
artifacts it revoked before they arrived, the age recipients this node published, its size
limit) go in; a verified :class:`Head` or the disclosure comes out, or the error that says why
the delivery is refused. The numbered steps are those of ``service.federation.receive``:

1. :func:`parse_head`: the line parses, the manifest is signed by the sender's pinned key (a
   retired key only for a manifest created before its retirement) and the sender is its origin;
   :func:`check_not_revoked`: the sender did not revoke it before it arrived (an onward chain is
   checked next, by ``service.federation.onward.verify_chain``, which looks up the upstream
   origins' keys);
2. :func:`check_recipient`: this node is a recipient under a recipient string it published, the
   decision disclosed to it is the one the manifest commits to, and the artifact is within the
   size limit;
4. :func:`check_repeat`: an artifact already stored under the id is the same one (then the
   receipt already issued is the answer), and not one that originated here.

Step 3 (the inbound policy) is the enforcement step's (``service.artifacts.enforce``) and step 5
(the ciphertext) the core's (``crypto.sealed.decrypt_verified``). This module opens no file,
database or socket and audits nothing: ``service.federation.receive`` (the shell) looks the
facts up, calls these rules, and records the outcome once, a refusal as ``receive.rejected``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from crypto import strict_json
from crypto.dsse import Envelope
from crypto.errors import CryptoError, MalformedError
from crypto.keyset import KeySet
from crypto.sealed import Manifest, committed_decisions, verify_disclosure, verify_manifest
from service.errors import ConflictError, InvalidInputError, TooLargeError

__all__ = [
    "MAX_HEAD_BYTES",
    "Head",
    "SenderFacts",
    "Stored",
    "check_not_revoked",
    "check_recipient",
    "check_repeat",
    "parse_head",
]

MAX_HEAD_BYTES = 2 << 20  # bytes of a delivery's first line (the route bounds it lower)


@dataclass(frozen=True, slots=True)
class SenderFacts:
    """What a receiver knows before a delivery from ``sender`` (looked up once per request)."""

    node_id: str  # this node
    sender: str
    keysets: Sequence[KeySet]  # the sender's pinned key sets, current and retired (every key
    # of one set must sign: Ed25519, and ML-DSA-65 once the sender advertised one)
    retired: Mapping[str, datetime]  # fingerprint -> when the sender retired that key
    revoked: frozenset[str]  # ids of the sender's artifacts revoked before they arrived
    recipients: frozenset[str]  # the age recipient strings this node published (current, retired)
    max_artifact_bytes: int  # bytes of plaintext


@dataclass(frozen=True, slots=True)
class Head:
    """A delivery's first line, its manifest verified (step 1)."""

    envelope: Envelope
    manifest: Manifest
    shown: object  # the disclosure sent beside the manifest (None when there is none)


@dataclass(frozen=True, slots=True)
class Stored:
    """What this node already stores under a delivered artifact's id (step 4)."""

    artifact_id: str
    sha256: str
    origin: str
    receipt: str | None  # None for an artifact that originated here


def _split_head(head: bytes) -> tuple[Envelope, object]:
    """A delivery's first line: the manifest envelope and the disclosure beside it, if any."""
    if len(head) > MAX_HEAD_BYTES:
        raise MalformedError("the delivery's first line is too large")
    try:
        data = strict_json.loads(head)
    except (ValueError, RecursionError):
        raise MalformedError("the delivery's first line is not JSON") from None
    if isinstance(data, dict) and set(data) == {"manifest", "disclosure"}:
        return Envelope.from_json(data["manifest"]), data["disclosure"]
    return Envelope.from_json(data), None


def parse_head(head: bytes, facts: SenderFacts) -> Head:
    """Step 1: ``head`` is the manifest (or ``{"manifest", "disclosure"}``), signed by the
    sender as its origin. Raises :class:`InvalidInputError` (``reason="manifest"``)."""
    try:
        envelope, shown = _split_head(head)
        manifest = verify_manifest(
            envelope,
            keysets=facts.keysets,
            origin=facts.sender,
            retired=facts.retired,  # a retired key signs nothing new
        )
    except CryptoError as exc:
        raise InvalidInputError(f"the manifest was refused: {exc}", reason="manifest") from None
    return Head(envelope, manifest, shown)


def check_not_revoked(manifest: Manifest, facts: SenderFacts) -> None:
    """Step 1: a revocation can overtake its delivery. Raises :class:`ConflictError`."""
    if manifest.artifact_id in facts.revoked:
        raise ConflictError(
            f"{facts.sender} revoked {manifest.artifact_id} before it arrived", reason="revoked"
        )


def check_recipient(manifest: Manifest, shown: object, facts: SenderFacts) -> dict[str, Any] | None:
    """Step 2: this node is a recipient under a recipient string it published, the decision
    shown to it is the one the manifest commits to for it (returned, or None when the manifest
    shows its decisions itself), and the artifact is within the size limit. Raises
    :class:`InvalidInputError` or :class:`TooLargeError`."""
    mine = [r for r in manifest.recipients if r.node_id == facts.node_id]
    if not mine or mine[0].recipient not in facts.recipients:
        raise InvalidInputError(
            "this node is not a recipient of the artifact", reason="not-a-recipient"
        )
    disclosed = None
    if facts.node_id in committed_decisions(manifest):
        try:
            disclosed = verify_disclosure(manifest, facts.node_id, shown)
        except CryptoError as exc:
            raise InvalidInputError(
                f"the decision disclosed to this node was refused: {exc}", reason="disclosure"
            ) from None
    limit = facts.max_artifact_bytes
    if manifest.size > limit:
        raise TooLargeError(
            f"the artifact is larger than this node accepts ({limit} bytes)", reason="too-large"
        )
    return disclosed


def check_repeat(stored: Stored, manifest: Manifest) -> str:
    """Step 4: a delivery of an artifact already stored is the same one again; returns the
    receipt already issued. Raises :class:`ConflictError` for other content under the id, or
    for this node's own artifact echoed back."""
    if stored.sha256 != manifest.sha256 or stored.origin != manifest.origin:
        raise ConflictError(
            f"artifact {stored.artifact_id} is already stored with other content",
            reason="conflict",
        )
    if stored.receipt is None:
        raise ConflictError(f"artifact {stored.artifact_id} originated here", reason="conflict")
    return stored.receipt
