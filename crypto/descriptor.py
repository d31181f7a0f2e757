"""Node descriptors: who a node is, where it listens, and which keys speak for it.

A descriptor is a JSON document (node id, name, URL, Ed25519 signing key, age recipients,
validity) in a DSSE envelope signed by the keys it carries. Operators pin a partner by its
*fingerprint* (``crypto.keys.fingerprint_of``: hex SHA-256 of the raw Ed25519 public key), compared
out of band. A rotated descriptor carries ``previous`` (the old Ed25519 key's fingerprint) and must
be signed by the old key set as well as the new one.

Two optional fields came with post-quantum signatures; a descriptor without them is an older
node's and still parses and verifies (Ed25519 alone), and a node that has neither writes neither,
so partners that have not upgraded still read its descriptor:

* ``mldsa_key``: base64 of the node's 1952-byte ML-DSA-65 public key. With it, the descriptor's
  signing keys are a :class:`~crypto.keyset.KeySet` (Ed25519 and ML-DSA-65) and the descriptor
  must be signed by both (self-signature by every signing key it carries).
* ``checkpoint_key``: base64 of the Ed25519 key that signs the node's audit-log checkpoints and
  nothing else (C2SP signed-note: a key signs one kind of message; its note key name is the log's
  origin, see ``crypto.note``). It must differ from ``signing_key``, and it does not sign the
  descriptor, which vouches for it.

This module parses and verifies; it does not decide whom to trust or store anything.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from crypto import strict_json
from crypto.dsse import Envelope, sign_envelope, verify_envelope
from crypto.errors import MalformedError, VerificationError, VerificationUnavailableError
from crypto.keys import Signer, SigningKey, VerifyKey
from crypto.keyset import KeySet, SignerSet, signers_of
from crypto.mldsa import MLDSAVerifyKey
from crypto.rfc3339 import format_seconds, parse_aware
from crypto.vocab import is_node_id

__all__ = [
    "DESCRIPTOR_PAYLOAD_TYPE",
    "NodeDescriptor",
    "sign_descriptor",
    "verify_descriptor",
]

DESCRIPTOR_PAYLOAD_TYPE = "application/vnd.entente.node-descriptor+json"
DESCRIPTOR_TYPE = "https://entente.dev/node-descriptor/v1"
_FIELDS = {
    "_type",
    "node_id",
    "name",
    "url",
    "signing_key",
    "fingerprint",
    "age_recipient",
    "pq_recipient",
    "created",
    "expires",
    "previous",
    "mldsa_key",
    "checkpoint_key",
}
_OPTIONAL_KEY_FIELDS = ("mldsa_key", "checkpoint_key")  # written only when present


def _parse_ts(value: object, field: str) -> datetime:
    return parse_aware(value, f"descriptor field {field!r}")


def _str(data: dict[str, Any], field: str, *, max_len: int = 512) -> str:
    value = data.get(field)
    if not isinstance(value, str) or not value or len(value) > max_len:
        raise MalformedError(f"descriptor field {field!r} must be a non-empty string")
    return value


@dataclass(frozen=True)
class NodeDescriptor:
    node_id: str
    name: str
    url: str
    signing_key: VerifyKey
    age_recipient: str
    created: datetime
    expires: datetime
    pq_recipient: str | None = None
    previous: str | None = None  # fingerprint of the key this one replaces
    mldsa_key: MLDSAVerifyKey | None = None
    checkpoint_key: VerifyKey | None = None  # signs audit-log checkpoints only

    def __post_init__(self) -> None:
        if self.checkpoint_key is not None and self.checkpoint_key == self.signing_key:
            raise MalformedError("the checkpoint key must not be the node's signing key")

    @property
    def fingerprint(self) -> str:
        return self.signing_key.fingerprint

    @property
    def keyset(self) -> KeySet:
        """The keys that must all sign for this node: Ed25519 and, if advertised, ML-DSA-65."""
        return KeySet(self.signing_key, self.mldsa_key)

    def to_json(self) -> dict[str, Any]:
        keys = {"mldsa_key": self.mldsa_key, "checkpoint_key": self.checkpoint_key}
        optional = {
            name: base64.b64encode(key.raw).decode("ascii")
            for name, key in keys.items()
            if key is not None
        }
        return optional | {
            "_type": DESCRIPTOR_TYPE,
            "node_id": self.node_id,
            "name": self.name,
            "url": self.url,
            "signing_key": base64.b64encode(self.signing_key.raw).decode("ascii"),
            "fingerprint": self.fingerprint,
            "age_recipient": self.age_recipient,
            "pq_recipient": self.pq_recipient,
            "created": format_seconds(self.created),
            "expires": format_seconds(self.expires),
            "previous": self.previous,
        }

    @classmethod
    def from_json(cls, data: object) -> NodeDescriptor:
        if not isinstance(data, dict):
            raise MalformedError("a node descriptor is a JSON object")
        unknown = set(data) - _FIELDS
        if unknown:
            raise MalformedError(f"unknown descriptor field(s): {', '.join(sorted(unknown))}")
        if data.get("_type") != DESCRIPTOR_TYPE:
            raise MalformedError("not an Entente node descriptor (wrong _type)")
        node_id = _str(data, "node_id", max_len=63)
        if not is_node_id(node_id):
            raise MalformedError("descriptor node_id must be lowercase letters, digits and '-'")
        url = _str(data, "url", max_len=2048)
        if not url.startswith(("https://", "http://")):
            raise MalformedError("descriptor url must be an http(s) URL")
        try:
            raw_key = base64.b64decode(_str(data, "signing_key"), validate=True)
        except binascii.Error:
            raise MalformedError("descriptor signing_key is not base64") from None
        key = VerifyKey(raw_key)
        mldsa_raw, checkpoint_raw = (_optional_b64(data, name) for name in _OPTIONAL_KEY_FIELDS)
        if data.get("fingerprint") != key.fingerprint:
            raise MalformedError("descriptor fingerprint does not match its signing key")
        pq = data.get("pq_recipient")
        previous = data.get("previous")
        if pq is not None and not isinstance(pq, str):
            raise MalformedError("descriptor pq_recipient must be a string or null")
        if previous is not None and not isinstance(previous, str):
            raise MalformedError("descriptor previous must be a fingerprint or null")
        created = _parse_ts(data.get("created"), "created")
        expires = _parse_ts(data.get("expires"), "expires")
        if expires <= created:
            raise MalformedError("descriptor expires before it was created")
        return cls(
            node_id=node_id,
            name=_str(data, "name", max_len=200),
            url=url.rstrip("/"),
            signing_key=key,
            age_recipient=_str(data, "age_recipient", max_len=4096),
            created=created,
            expires=expires,
            pq_recipient=pq,
            previous=previous,
            mldsa_key=None if mldsa_raw is None else MLDSAVerifyKey(mldsa_raw),
            checkpoint_key=None if checkpoint_raw is None else VerifyKey(checkpoint_raw),
        )


def _optional_b64(data: dict[str, Any], field: str) -> bytes | None:
    value = data.get(field)
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > 4096:
        raise MalformedError(f"descriptor field {field!r} must be base64 or null")
    try:
        return base64.b64decode(value, validate=True)
    except binascii.Error:
        raise MalformedError(f"descriptor field {field!r} is not base64") from None


def _public_set(key: SigningKey | SignerSet) -> KeySet:
    return KeySet(key.public) if isinstance(key, SigningKey) else key.public


def sign_descriptor(
    descriptor: NodeDescriptor,
    *,
    key: SigningKey | SignerSet,
    previous_key: SigningKey | SignerSet | None = None,
) -> Envelope:
    """Sign ``descriptor`` with every signing key it carries (and, on rotation, every key of the
    set it replaces). ``key`` is a lone Ed25519 key only for a descriptor without ``mldsa_key``."""
    if _public_set(key) != descriptor.keyset:
        raise ValueError("a descriptor is signed by every key it carries, and only by those")
    if (previous_key is None) != (descriptor.previous is None):
        raise ValueError("a rotated descriptor names its previous key and is signed by it")
    if previous_key is not None and previous_key.fingerprint != descriptor.previous:
        raise ValueError("previous_key does not match descriptor.previous")
    payload = json.dumps(descriptor.to_json(), sort_keys=True, separators=(",", ":")).encode()
    signers: dict[str, Signer] = {s.fingerprint: s for s in signers_of(key)}
    if previous_key is not None:  # a key kept across the rotation signs once
        signers.update((s.fingerprint, s) for s in signers_of(previous_key))
    return sign_envelope(DESCRIPTOR_PAYLOAD_TYPE, payload, signers.values())


def verify_descriptor(
    envelope: Envelope,
    *,
    now: datetime,
    expected_fingerprint: str | None = None,
    previous: VerifyKey | KeySet | None = None,
) -> NodeDescriptor:
    """Parse and verify a descriptor envelope.

    1. The payload parses strictly as a descriptor.
    2. It is signed by every signing key it carries (self-signature): Ed25519, and ML-DSA-65
       when it has ``mldsa_key``.
    3. If ``expected_fingerprint`` is given (pinning), the Ed25519 key's fingerprint equals it.
    4. If ``previous`` is given (rotation), the descriptor names it (its Ed25519 key) and every
       key of it signed too (a lone ``VerifyKey`` is a set without an ML-DSA key).
    5. ``now`` lies within [created - 5 min, expires).
    """
    if envelope.payload_type != DESCRIPTOR_PAYLOAD_TYPE:
        raise MalformedError("not a node descriptor envelope (wrong payloadType)")
    try:
        data = strict_json.loads(envelope.payload)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise MalformedError("the descriptor payload is not valid JSON") from None
    descriptor = NodeDescriptor.from_json(data)  # (1)
    key = descriptor.signing_key
    verify_envelope(  # (2)
        envelope, keysets=[descriptor.keyset], payload_type=DESCRIPTOR_PAYLOAD_TYPE
    )
    if expected_fingerprint is not None and key.fingerprint != expected_fingerprint:  # (3)
        raise VerificationError(
            f"fingerprint mismatch: the descriptor's key is {key.fingerprint}, "
            f"expected {expected_fingerprint}"
        )
    if previous is not None:  # (4)
        previous_set = KeySet(previous) if isinstance(previous, VerifyKey) else previous
        if descriptor.previous != previous_set.fingerprint:
            raise VerificationError("the rotated descriptor does not name the pinned key")
        try:
            verify_envelope(envelope, keysets=[previous_set], payload_type=DESCRIPTOR_PAYLOAD_TYPE)
        except VerificationUnavailableError:
            raise VerificationError(
                "the rotated descriptor is not signed by the pinned key"
            ) from None
    skew = 300
    if now.timestamp() + skew < descriptor.created.timestamp():  # (5)
        raise VerificationError("the descriptor is not valid yet (created in the future)")
    if now >= descriptor.expires:
        raise VerificationError(f"the descriptor expired at {format_seconds(descriptor.expires)}")
    return descriptor
