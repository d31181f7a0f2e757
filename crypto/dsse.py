"""DSSE v1 envelopes (Dead Simple Signing Envelope) signed with Ed25519 and ML-DSA-65.

Implements the DSSE protocol v1.0.2: the signature covers
``PAE(type, body) = "DSSEv1" SP LEN(type) SP type SP LEN(body) SP body``, never the JSON. The
envelope is ``{"payload", "payloadType", "signatures": [{"keyid", "sig"}]}`` with standard base64.
A ``keyid`` is the signing key's fingerprint (hex SHA-256 of its raw public key) whatever the
algorithm, so a hybrid envelope simply carries two entries: the Ed25519 and the ML-DSA-65 one.

Two ways to verify:

* ``keysets=`` (the rule for signatures that must last): an envelope verifies for a
  :class:`~crypto.keyset.KeySet` only when *every* key of the set signed it; a bad signature by
  any key of any given set rejects the envelope; a signature by a key of no set is ignored (DSSE
  verifiers ignore unknown signatures). Returns the sets that verified, so several Ed25519 keys
  of one node trusted at once (rotation) never add up to a "threshold".
* ``trusted=`` (the original form, kept for callers that have not moved): a mapping of
  fingerprint to key; a signature by an unknown key is ignored, and the envelope verifies when at
  least ``threshold`` distinct trusted keys signed it.

This module does not decide which keys to trust, nor what the payload means.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, overload

from crypto import strict_json
from crypto.errors import MalformedError, VerificationError, VerificationUnavailableError
from crypto.keys import Signer, Verifier
from crypto.keyset import KeySet

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
    def from_json(
        cls, data: object, *, max_signatures: int = MAX_SIGNATURES, unsigned: bool = False
    ) -> Envelope:
        """Parse an envelope; ``unsigned`` admits one with no signature yet (a draft that
        several parties will sign: ``crypto.agreement``), never a verified one."""
        if not isinstance(data, dict):
            raise MalformedError("a DSSE envelope is a JSON object")
        payload_type = data.get("payloadType")
        payload = data.get("payload")
        sigs = data.get("signatures")
        if not isinstance(payload_type, str) or not isinstance(payload, str):
            raise MalformedError("a DSSE envelope needs string payloadType and payload")
        if not isinstance(sigs, list) or not (sigs or unsigned):
            raise MalformedError("a DSSE envelope needs a non-empty signatures list")
        if len(sigs) > max_signatures:
            raise MalformedError(f"a DSSE envelope may carry at most {max_signatures} signatures")
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


def sign_envelope(payload_type: str, payload: bytes, signers: Iterable[Signer]) -> Envelope:
    """Sign ``payload`` with every key in ``signers`` (at least one, any algorithm)."""
    message = pae(payload_type, payload)
    signatures = tuple((key.fingerprint, key.sign(message)) for key in signers)
    if not signatures:
        raise ValueError("an envelope needs at least one signer")
    return Envelope(payload_type, payload, signatures)


@overload
def verify_envelope(
    envelope: Envelope,
    *,
    payload_type: str,
    keysets: Sequence[KeySet],
) -> tuple[bytes, tuple[KeySet, ...]]: ...


@overload
def verify_envelope(
    envelope: Envelope,
    *,
    payload_type: str,
    trusted: Mapping[str, Verifier],
    threshold: int = 1,
) -> tuple[bytes, frozenset[str]]: ...


def verify_envelope(
    envelope: Envelope,
    *,
    payload_type: str,
    trusted: Mapping[str, Verifier] | None = None,
    threshold: int = 1,
    keysets: Sequence[KeySet] | None = None,
) -> tuple[bytes, frozenset[str]] | tuple[bytes, tuple[KeySet, ...]]:
    """Verify ``envelope`` against ``keysets`` or against ``trusted`` keys (fingerprint -> key).

    With ``keysets``: returns the payload and the key sets for which every key signed (in the
    order given). With ``trusted``: returns the payload and the fingerprints whose signatures
    verified. Raises :class:`VerificationUnavailableError` when no signature names a key given,
    and :class:`VerificationError` when the payload type is wrong, a key set's key signed badly,
    no key set is complete, or fewer than ``threshold`` distinct trusted keys signed.
    """
    if (keysets is None) == (trusted is None):
        raise ValueError("verify_envelope takes either keysets= or trusted=")
    if envelope.payload_type != payload_type:
        raise VerificationError(
            f"unexpected DSSE payloadType {envelope.payload_type!r} (wanted {payload_type!r})"
        )
    message = pae(envelope.payload_type, envelope.payload)
    if keysets is not None:
        return envelope.payload, _verify_keysets(envelope, message, keysets)
    return envelope.payload, _verify_trusted(envelope, message, trusted or {}, threshold)


def _verify_trusted(
    envelope: Envelope, message: bytes, trusted: Mapping[str, Verifier], threshold: int
) -> frozenset[str]:
    if threshold < 1:
        raise ValueError("threshold must be at least 1")
    known = [(keyid, sig) for keyid, sig in envelope.signatures if keyid in trusted]
    if not known:
        raise VerificationUnavailableError("no signature by a trusted key")
    good = frozenset(keyid for keyid, sig in known if trusted[keyid].is_valid(sig, message))
    if len(good) < threshold:
        raise VerificationError("DSSE signature does not verify")
    return good


def _verify_keysets(
    envelope: Envelope, message: bytes, keysets: Sequence[KeySet]
) -> tuple[KeySet, ...]:
    if not keysets:
        raise ValueError("verifying needs at least one key set")  # never "trivially valid"
    keys: dict[str, Verifier] = {key.fingerprint: key for ks in keysets for key in ks.keys}
    signed: set[str] = set()
    for keyid, sig in envelope.signatures:
        key = keys.get(keyid)
        if key is None:
            continue  # DSSE: a signature by an unknown key is ignored
        if not key.is_valid(sig, message):
            raise VerificationError("DSSE signature does not verify")
        signed.add(keyid)
    if not signed:
        raise VerificationUnavailableError("no signature by a trusted key")
    complete = tuple(ks for ks in keysets if all(k.fingerprint in signed for k in ks.keys))
    if not complete:
        raise VerificationError("the envelope is not signed by every key of a trusted key set")
    return complete
