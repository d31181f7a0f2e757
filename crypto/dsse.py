"""DSSE v1 envelopes (Dead Simple Signing Envelope) signed with Ed25519.

Implements the DSSE protocol v1.0.2: the signature covers
``PAE(type, body) = "DSSEv1" SP LEN(type) SP type SP LEN(body) SP body``, never the JSON. The
envelope is ``{"payload", "payloadType", "signatures": [{"keyid", "sig"}]}`` with standard base64.

Verification is against a caller-supplied set of trusted keys (keyed by fingerprint): a signature
whose key id is unknown is ignored, and an envelope that no trusted key has signed fails. This
module does not decide which keys to trust, nor what the payload means.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from crypto import strict_json
from crypto.errors import MalformedError, VerificationError, VerificationUnavailableError
from crypto.keys import SigningKey, VerifyKey

__all__ = ["Envelope", "pae", "sign_envelope", "verify_envelope"]

MAX_ENVELOPE_BYTES = 1 << 20  # 1 MiB: manifests and descriptors are small
MAX_SIGNATURES = 16


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE v1 Pre-Authentication Encoding."""
    t = payload_type.encode("utf-8")
    return b"DSSEv1 %d %s %d %s" % (len(t), t, len(payload), payload)


@dataclass(frozen=True)
class Envelope:
    """A parsed DSSE envelope. ``signatures`` is a tuple of (keyid, raw signature)."""

    payload_type: str
    payload: bytes
    signatures: tuple[tuple[str, bytes], ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "payload": base64.b64encode(self.payload).decode("ascii"),
            "payloadType": self.payload_type,
            "signatures": [
                {"keyid": keyid, "sig": base64.b64encode(sig).decode("ascii")}
                for keyid, sig in self.signatures
            ],
        }

    def to_bytes(self) -> bytes:
        return json.dumps(self.to_json(), indent=2, sort_keys=True).encode("utf-8") + b"\n"

    @classmethod
    def from_json(cls, data: object) -> Envelope:
        if not isinstance(data, dict):
            raise MalformedError("a DSSE envelope is a JSON object")
        payload_type = data.get("payloadType")
        payload = data.get("payload")
        sigs = data.get("signatures")
        if not isinstance(payload_type, str) or not isinstance(payload, str):
            raise MalformedError("a DSSE envelope needs string payloadType and payload")
        if not isinstance(sigs, list) or not sigs:
            raise MalformedError("a DSSE envelope needs a non-empty signatures list")
        if len(sigs) > MAX_SIGNATURES:
            raise MalformedError(f"a DSSE envelope may carry at most {MAX_SIGNATURES} signatures")
        parsed: list[tuple[str, bytes]] = []
        for sig in sigs:
            if not isinstance(sig, dict) or not isinstance(sig.get("sig"), str):
                raise MalformedError("each DSSE signature needs a string sig")
            keyid = sig.get("keyid", "")
            if not isinstance(keyid, str):
                raise MalformedError("a DSSE keyid is a string")
            parsed.append((keyid, _b64decode(sig["sig"])))
        return cls(payload_type, _b64decode(payload), tuple(parsed))

    @classmethod
    def from_bytes(cls, raw: bytes) -> Envelope:
        if len(raw) > MAX_ENVELOPE_BYTES:
            raise MalformedError("the DSSE envelope is too large")
        try:
            data = strict_json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise MalformedError("the DSSE envelope is not valid JSON") from exc
        return cls.from_json(data)


def _b64decode(text: str) -> bytes:
    """Standard or URL-safe base64, padded or not (DSSE allows each), in canonical form only.

    Non-canonical spellings (non-zero padding bits) decode to the same bytes as the canonical
    one; refusing them keeps an envelope from having several encodings that all verify.
    """
    padded = text + "=" * (-len(text) % 4)
    urlsafe = "-" in text or "_" in text
    try:
        raw = padded.encode("ascii")
        data = base64.urlsafe_b64decode(raw) if urlsafe else base64.b64decode(raw, validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError) as exc:
        raise MalformedError("invalid base64 in DSSE envelope") from exc
    again = base64.urlsafe_b64encode(data) if urlsafe else base64.b64encode(data)
    if again.rstrip(b"=") != raw.rstrip(b"="):
        raise MalformedError("non-canonical base64 in DSSE envelope")
    return data


def sign_envelope(payload_type: str, payload: bytes, signers: Iterable[SigningKey]) -> Envelope:
    """Sign ``payload`` with every key in ``signers`` (at least one)."""
    message = pae(payload_type, payload)
    signatures = tuple((key.fingerprint, key.sign(message)) for key in signers)
    if not signatures:
        raise ValueError("an envelope needs at least one signer")
    return Envelope(payload_type, payload, signatures)


def verify_envelope(
    envelope: Envelope,
    *,
    trusted: Mapping[str, VerifyKey],
    payload_type: str,
    threshold: int = 1,
) -> tuple[bytes, frozenset[str]]:
    """Verify ``envelope`` against ``trusted`` keys (fingerprint -> key).

    Returns the payload and the fingerprints whose signatures verified. Raises
    :class:`VerificationUnavailableError` when no signature names a trusted key, and
    :class:`VerificationError` when the payload type is wrong or fewer than ``threshold``
    distinct trusted keys signed it.
    """
    if threshold < 1:
        raise ValueError("threshold must be at least 1")
    if envelope.payload_type != payload_type:
        raise VerificationError(
            f"unexpected DSSE payloadType {envelope.payload_type!r} (wanted {payload_type!r})"
        )
    message = pae(envelope.payload_type, envelope.payload)
    known = [(keyid, sig) for keyid, sig in envelope.signatures if keyid in trusted]
    if not known:
        raise VerificationUnavailableError("no signature by a trusted key")
    good = frozenset(keyid for keyid, sig in known if trusted[keyid].is_valid(sig, message))
    if len(good) < threshold:
        raise VerificationError("DSSE signature does not verify")
    return envelope.payload, good
