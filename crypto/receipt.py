"""Signed receipts: a node's statement that it accepted an artifact or a notice.

A receipt is a DSSE envelope (payloadType ``application/vnd.entente.receipt+json``) signed by
the receiving node's Ed25519 key (and, once it has one, its ML-DSA-65 key: a hybrid envelope,
see ``crypto.keyset``) over a JSON document naming what was received (``kind``: delivery,
revocation, access, or deletion: a holder's statement that it deleted its copy, the holder as
``receiver``), the artifact id and plaintext SHA-256, the receiver, the sender and the time. The
sender stores it as evidence of delivery: unlike an HTTP signature it can be checked again
later, by anyone holding the receiver's public key.

This module does not decide which keys to trust, nor store receipts.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from crypto import strict_json
from crypto.dsse import Envelope, sign_envelope, verify_envelope
from crypto.errors import MalformedError, VerificationError
from crypto.keys import SigningKey, Verifier
from crypto.keyset import KeySet, SignerSet, signers_of
from crypto.rfc3339 import format_seconds

__all__ = ["RECEIPT_PAYLOAD_TYPE", "Receipt", "sign_receipt", "verify_receipt"]

RECEIPT_PAYLOAD_TYPE = "application/vnd.entente.receipt+json"
RECEIPT_TYPE = "https://entente.dev/receipt/v1"
KINDS = frozenset({"delivery", "revocation", "access", "deletion"})


@dataclass(frozen=True)
class Receipt:
    kind: str
    artifact_id: str
    sha256: str
    receiver: str
    sender: str
    received_at: datetime
    notice_id: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "_type": RECEIPT_TYPE,
            "kind": self.kind,
            "artifact_id": self.artifact_id,
            "sha256": self.sha256,
            "receiver": self.receiver,
            "sender": self.sender,
            "received_at": format_seconds(self.received_at),
            "notice_id": self.notice_id,
        }

    @classmethod
    def from_json(cls, data: object) -> Receipt:
        if not isinstance(data, dict) or data.get("_type") != RECEIPT_TYPE:
            raise MalformedError("not an Entente receipt")
        try:
            kind = data["kind"]
            if kind not in KINDS:
                raise MalformedError(f"unknown receipt kind {str(kind)[:32]!r}")
            notice = data.get("notice_id")
            if notice is not None and not isinstance(notice, int):
                raise MalformedError("receipt notice_id must be an integer")
            received = datetime.fromisoformat(str(data["received_at"]).replace("Z", "+00:00"))
            return cls(
                kind=str(kind),
                artifact_id=str(data["artifact_id"]),
                sha256=str(data["sha256"]),
                receiver=str(data["receiver"]),
                sender=str(data["sender"]),
                received_at=received.astimezone(UTC),
                notice_id=notice,
            )
        except (KeyError, ValueError) as exc:
            raise MalformedError(f"malformed receipt: {exc}") from None


def sign_receipt(receipt: Receipt, *, key: SigningKey | SignerSet) -> Envelope:
    """The receipt as a DSSE envelope signed by the receiver's key, or every key of its set."""
    payload = json.dumps(receipt.to_json(), sort_keys=True, separators=(",", ":")).encode()
    return sign_envelope(RECEIPT_PAYLOAD_TYPE, payload, signers_of(key))


def verify_receipt(
    envelope: Envelope,
    *,
    trusted: Mapping[str, Verifier] | None = None,
    keysets: Sequence[KeySet] | None = None,
    expect_kind: str,
    artifact_id: str,
    sha256: str,
    receiver: str,
    sender: str,
) -> Receipt:
    """Verify a receipt's signature and that it acknowledges exactly what was sent.

    ``keysets`` are the receiver's key sets (every key of one must have signed); ``trusted``,
    the older form, maps fingerprints to keys of which any one signature suffices.
    """
    if keysets is not None and trusted is None:
        payload, _ = verify_envelope(envelope, keysets=keysets, payload_type=RECEIPT_PAYLOAD_TYPE)
    elif trusted is not None and keysets is None:
        payload, _ = verify_envelope(envelope, trusted=trusted, payload_type=RECEIPT_PAYLOAD_TYPE)
    else:
        raise ValueError("verify_receipt takes either keysets= or trusted=")
    try:
        receipt = Receipt.from_json(strict_json.loads(payload))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise MalformedError("the receipt payload is not JSON") from None
    expected = (expect_kind, artifact_id, sha256, receiver, sender)
    got = (receipt.kind, receipt.artifact_id, receipt.sha256, receipt.receiver, receipt.sender)
    if got != expected:
        raise VerificationError("the receipt does not acknowledge what was sent")
    return receipt
