"""Signed agreements: officer certificates and agreement envelopes signed by every party.

An agreement between institutes is signed by the *approving officer* of each party, not by the
node: an operator with the node's keys alone cannot make the node accept new terms. Two
documents make that checkable by anyone who has pinned the parties' nodes:

* An **officer certificate** (DSSE, ``application/vnd.entente.officer+json``): "this key set
  speaks for node X on agreements", naming the officer and role, with a validity window, signed by
  the node's own key set (``entente agreement certify``). A partner checks it against the node keys
  it pinned (by fingerprint, out of band), so an officer key is never trusted on first use.
* An **agreement envelope** (DSSE, ``application/vnd.entente.agreement+json``): the agreement's
  canonical JSON (``policies._agreement``) with one signature entry per key of each signing
  officer's key set (Ed25519 and ML-DSA-65: agreements must stay verifiable for decades).

A :class:`SignedAgreement` is what parties exchange: the envelope plus the officer certificates
needed to check it. :func:`check_signatures` returns which parties have signed; a bad signature by
a certified officer, or a certificate that does not verify, is an error (never "not signed").

This module does not read agreements' terms (``policies._agreement``) or decide which node keys to
trust (the caller passes them).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from crypto import strict_json
from crypto.dsse import Envelope, sign_envelope, verify_envelope
from crypto.errors import MalformedError, VerificationError, VerificationUnavailableError
from crypto.keys import SigningKey, VerifyKey
from crypto.keyset import KeySet, SignerSet, signers_of
from crypto.mldsa import MLDSAVerifyKey
from crypto.rfc3339 import format_seconds, parse_aware
from crypto.vocab import is_node_id

__all__ = [
    "AGREEMENT_PAYLOAD_TYPE",
    "OFFICER_PAYLOAD_TYPE",
    "OfficerCertificate",
    "SignedAgreement",
    "certify_officer",
    "check_signatures",
    "draft_agreement",
    "sign_agreement",
    "verify_officer",
]

AGREEMENT_PAYLOAD_TYPE = "application/vnd.entente.agreement+json"
OFFICER_PAYLOAD_TYPE = "application/vnd.entente.officer+json"
OFFICER_TYPE = "https://entente.dev/officer/v1"
BUNDLE_FORMAT = "entente.signed-agreement/v1"
MAX_OFFICERS = 32  # certificates carried by one signed agreement
_OFFICER_FIELDS = {"_type", "node_id", "name", "role", "ed25519", "mldsa", "issued", "expires"}


def _text(data: dict[str, Any], field: str, limit: int = 200) -> str:
    value = data.get(field)
    if not isinstance(value, str) or not value.strip() or len(value) > limit:
        raise MalformedError(f"officer certificate field {field!r} must be a non-empty string")
    return value


def _b64(value: object, field: str) -> bytes:
    if not isinstance(value, str) or len(value) > 4096:
        raise MalformedError(f"officer certificate field {field!r} must be base64")
    try:
        return base64.b64decode(value, validate=True)
    except binascii.Error:
        raise MalformedError(f"officer certificate field {field!r} is not base64") from None


@dataclass(frozen=True)
class OfficerCertificate:
    """A node's statement that ``keys`` belong to its officer ``name`` (``role``)."""

    node_id: str
    name: str
    role: str
    keys: KeySet
    issued: datetime
    expires: datetime

    def __post_init__(self) -> None:
        if not is_node_id(self.node_id):
            raise MalformedError("officer certificate node_id is not a node id")
        if self.expires <= self.issued:
            raise MalformedError("officer certificate expires before it was issued")

    @property
    def fingerprint(self) -> str:
        return self.keys.fingerprint

    def valid_at(self, when: datetime) -> bool:
        return self.issued <= when < self.expires

    def to_json(self) -> dict[str, Any]:
        mldsa = self.keys.mldsa
        return {
            "_type": OFFICER_TYPE,
            "node_id": self.node_id,
            "name": self.name,
            "role": self.role,
            "ed25519": base64.b64encode(self.keys.ed25519.raw).decode("ascii"),
            "mldsa": None if mldsa is None else base64.b64encode(mldsa.raw).decode("ascii"),
            "issued": format_seconds(self.issued),
            "expires": format_seconds(self.expires),
        }

    @classmethod
    def from_json(cls, data: object) -> OfficerCertificate:
        if not isinstance(data, dict):
            raise MalformedError("an officer certificate is a JSON object")
        unknown = set(data) - _OFFICER_FIELDS
        if unknown:
            raise MalformedError(f"unknown officer certificate field(s): {sorted(unknown)}")
        if data.get("_type") != OFFICER_TYPE:
            raise MalformedError("not an Entente officer certificate (wrong _type)")
        node_id = _text(data, "node_id", 63)
        mldsa = data.get("mldsa")
        return cls(
            node_id=node_id,
            name=_text(data, "name"),
            role=_text(data, "role"),
            keys=KeySet(
                VerifyKey(_b64(data.get("ed25519"), "ed25519")),
                None if mldsa is None else MLDSAVerifyKey(_b64(mldsa, "mldsa")),
            ),
            issued=parse_aware(data.get("issued"), "officer certificate 'issued'"),
            expires=parse_aware(data.get("expires"), "officer certificate 'expires'"),
        )


def certify_officer(certificate: OfficerCertificate, *, node: SigningKey | SignerSet) -> Envelope:
    """Sign ``certificate`` with the node's key set (the node vouches for its officer)."""
    payload = json.dumps(certificate.to_json(), sort_keys=True, separators=(",", ":")).encode()
    return sign_envelope(OFFICER_PAYLOAD_TYPE, payload, signers_of(node))


def verify_officer(
    envelope: Envelope, *, node_keysets: Callable[[str], Sequence[KeySet]], now: datetime
) -> OfficerCertificate:
    """Parse ``envelope`` and check it is signed by the named node's keys and valid at ``now``.

    ``node_keysets(node_id)`` returns the key sets the caller trusts for that node (its pinned
    current keys and those it retired); none is :class:`VerificationUnavailableError`.
    """
    if envelope.payload_type != OFFICER_PAYLOAD_TYPE:
        raise MalformedError("not an officer certificate (wrong payloadType)")
    try:
        data = strict_json.loads(envelope.payload)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise MalformedError("the officer certificate is not valid JSON") from None
    cert = OfficerCertificate.from_json(data)
    keysets = node_keysets(cert.node_id)
    if not keysets:
        raise VerificationUnavailableError(
            f"no pinned keys for {cert.node_id!r}: its officer {cert.name!r} cannot be checked"
        )
    try:
        verify_envelope(envelope, keysets=list(keysets), payload_type=OFFICER_PAYLOAD_TYPE)
    except (VerificationError, VerificationUnavailableError) as exc:
        raise VerificationError(
            f"the certificate of officer {cert.name!r} is not signed by {cert.node_id}'s keys "
            f"({exc})"
        ) from None
    if not cert.valid_at(now):
        raise VerificationError(
            f"the certificate of officer {cert.name!r} of {cert.node_id} is not valid at "
            f"{format_seconds(now)} (valid {format_seconds(cert.issued)} to "
            f"{format_seconds(cert.expires)})"
        )
    return cert


@dataclass(frozen=True)
class SignedAgreement:
    """An agreement envelope and the officer certificates that speak for its signers."""

    envelope: Envelope
    officers: tuple[Envelope, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "format": BUNDLE_FORMAT,
            "agreement": self.envelope.to_json(),
            "officers": [o.to_json() for o in self.officers],
        }

    def to_bytes(self) -> bytes:
        return (json.dumps(self.to_json(), indent=2, sort_keys=True) + "\n").encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> SignedAgreement:
        try:
            data = strict_json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise MalformedError("a signed agreement is a JSON document") from None
        if not isinstance(data, dict) or data.get("format") != BUNDLE_FORMAT:
            raise MalformedError(f"not a signed agreement (format is not {BUNDLE_FORMAT!r})")
        if set(data) - {"format", "agreement", "officers"}:
            raise MalformedError("a signed agreement has only format, agreement and officers")
        officers = data.get("officers", [])
        if not isinstance(officers, list) or len(officers) > MAX_OFFICERS:
            raise MalformedError(f"officers must be a list of at most {MAX_OFFICERS} certificates")
        envelope = Envelope.from_json(
            data.get("agreement"), max_signatures=2 * MAX_OFFICERS, unsigned=True
        )
        if envelope.payload_type != AGREEMENT_PAYLOAD_TYPE:
            raise MalformedError("not an agreement envelope (wrong payloadType)")
        return cls(envelope, tuple(Envelope.from_json(o) for o in officers))

    def with_signature(
        self, officer: SignerSet, certificate: Envelope | None = None
    ) -> SignedAgreement:
        """This agreement with ``officer``'s signatures added (and its certificate, if new)."""
        extra = sign_agreement(self.envelope.payload, officer).signatures
        mine = {keyid for keyid, _ in extra}
        kept = tuple(s for s in self.envelope.signatures if s[0] not in mine)
        envelope = Envelope(self.envelope.payload_type, self.envelope.payload, kept + extra)
        officers = self.officers
        if certificate is not None and certificate.to_bytes() not in {
            o.to_bytes() for o in officers
        }:
            officers = (*officers, certificate)
        return SignedAgreement(envelope, officers)


def draft_agreement(payload: bytes) -> SignedAgreement:
    """An agreement no one has signed yet, for the parties' officers to sign in turn."""
    return SignedAgreement(Envelope(AGREEMENT_PAYLOAD_TYPE, payload, ()))


def sign_agreement(payload: bytes, officer: SignerSet) -> Envelope:
    """An agreement envelope over ``payload`` signed by every key of ``officer``."""
    return sign_envelope(AGREEMENT_PAYLOAD_TYPE, payload, officer.signers)


def check_signatures(
    signed: SignedAgreement,
    *,
    parties: Iterable[str],
    node_keysets: Callable[[str], Sequence[KeySet]],
    now: datetime,
) -> dict[str, OfficerCertificate]:
    """Which ``parties`` signed: party -> the certificate of the officer whose keys all signed.

    Each certificate must verify against its node's keys (:func:`verify_officer`) and name one of
    ``parties``; a certified officer's bad signature is a :class:`VerificationError`. A party
    missing from the result has not signed (yet): the agreement is only proposed.
    """
    wanted = set(parties)
    by_party: dict[str, list[OfficerCertificate]] = {}
    for envelope in signed.officers:
        cert = verify_officer(envelope, node_keysets=node_keysets, now=now)
        if cert.node_id not in wanted:
            raise VerificationError(
                f"officer {cert.name!r} speaks for {cert.node_id}, which is not a party"
            )
        by_party.setdefault(cert.node_id, []).append(cert)
    signed_by: dict[str, OfficerCertificate] = {}
    for party, certs in sorted(by_party.items()):
        for cert in certs:
            try:
                verify_envelope(
                    signed.envelope, keysets=[cert.keys], payload_type=AGREEMENT_PAYLOAD_TYPE
                )
            except VerificationUnavailableError:
                continue  # this officer has not signed
            except VerificationError as exc:
                raise VerificationError(
                    f"the signature of {party}'s officer {cert.name!r} does not verify ({exc})"
                ) from None
            signed_by[party] = cert
            break
    return signed_by
