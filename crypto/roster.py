"""Network rosters: the members of a network, their descriptors and fingerprints, signed by them.

A node joining a network of N would otherwise compare N-1 fingerprints out of band and run
N-1 ``entente partner add``. A roster (``entente.roster/v1``, canonical JSON in a DSSE envelope,
``application/vnd.entente.roster+json``) lists every member's signed descriptor and fingerprint;
members sign it with their node key sets (Ed25519 + ML-DSA-65). A node imports it
(``service.roster``) when either

* enough members it already pins signed it (the threshold; existing members accept a new
  version without any step out of band), or
* it pins none yet (it is joining) and its operator gives the roster's SHA-256, compared out of
  band: one value instead of N-1 fingerprints.

Each member's descriptor is still checked against the fingerprint the roster names (and so
against the signatures on the roster): nothing is trusted on first use. A new version names the
digest of the version it replaces (``previous``); removing a member is a version without it.

This module parses, signs and checks signatures; it does not decide whom to pin.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from crypto import strict_json
from crypto.descriptor import NodeDescriptor, verify_descriptor
from crypto.dsse import Envelope, sign_envelope, verify_envelope
from crypto.errors import MalformedError, VerificationError, VerificationUnavailableError
from crypto.keyset import KeySet, SignerSet
from crypto.vocab import is_node_id, is_term

__all__ = [
    "ROSTER_PAYLOAD_TYPE",
    "Member",
    "Roster",
    "roster_signers",
    "sign_roster",
]

ROSTER_FORMAT = "entente.roster/v1"
ROSTER_PAYLOAD_TYPE = "application/vnd.entente.roster+json"
MAX_MEMBERS = 256
_FIELDS = {"format", "network", "version", "issued", "previous", "members"}


@dataclass(frozen=True)
class Member:
    """One member: its node id, fingerprint and signed descriptor (DSSE envelope JSON)."""

    node_id: str
    fingerprint: str
    descriptor: dict[str, Any]

    def verified(self, now: datetime) -> NodeDescriptor:
        """The member's descriptor, checked against its fingerprint and signatures."""
        descriptor = verify_descriptor(
            Envelope.from_json(self.descriptor), now=now, expected_fingerprint=self.fingerprint
        )
        if descriptor.node_id != self.node_id:
            raise VerificationError(
                f"the roster names {self.node_id} but its descriptor is {descriptor.node_id}'s"
            )
        return descriptor


@dataclass(frozen=True)
class Roster:
    """A network's members at one version (what members sign)."""

    network: str
    version: int
    issued: datetime
    members: tuple[Member, ...]
    previous: str | None = None  # SHA-256 of the version it replaces

    def __post_init__(self) -> None:
        if not is_term(self.network) or "/" in self.network:
            raise MalformedError("a roster's network is lowercase letters, digits and '-'")
        if self.version < 1 or (self.version == 1) != (self.previous is None):
            raise MalformedError("version 1 replaces nothing; every later version names one")
        ids = [m.node_id for m in self.members]
        if not 0 < len(ids) <= MAX_MEMBERS or len(set(ids)) != len(ids):
            raise MalformedError(f"a roster lists 1 to {MAX_MEMBERS} different members")
        for m in self.members:
            if not is_node_id(m.node_id) or len(m.fingerprint) != 64:
                raise MalformedError(f"roster member {m.node_id!r}: bad node id or fingerprint")

    def member(self, node_id: str) -> Member | None:
        return next((m for m in self.members if m.node_id == node_id), None)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": ROSTER_FORMAT,
            "network": self.network,
            "version": self.version,
            "issued": self.issued.astimezone(UTC).replace(microsecond=0).isoformat(),
            "previous": self.previous,
            "members": [
                {"node_id": m.node_id, "fingerprint": m.fingerprint, "descriptor": m.descriptor}
                for m in sorted(self.members, key=lambda m: m.node_id)
            ],
        }

    def payload(self) -> bytes:
        return json.dumps(self.to_json(), sort_keys=True, separators=(",", ":")).encode()

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.payload()).hexdigest()

    @classmethod
    def from_envelope(cls, envelope: Envelope) -> Roster:
        """Parse a roster envelope's payload, which must be in canonical form."""
        if envelope.payload_type != ROSTER_PAYLOAD_TYPE:
            raise MalformedError("not a roster (wrong payloadType)")
        try:
            data = strict_json.loads(envelope.payload)
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise MalformedError("the roster is not JSON") from None
        roster = cls.from_json(data)
        if roster.payload() != envelope.payload:
            raise MalformedError("the roster's signed bytes are not in canonical form")
        return roster

    @classmethod
    def from_json(cls, data: object) -> Roster:
        if not isinstance(data, dict) or data.get("format") != ROSTER_FORMAT:
            raise MalformedError(f"not a roster (format is not {ROSTER_FORMAT!r})")
        if set(data) - _FIELDS:
            raise MalformedError(f"unknown roster field(s): {sorted(set(data) - _FIELDS)}")
        members = data.get("members")
        if not isinstance(members, list) or len(members) > MAX_MEMBERS:
            raise MalformedError("a roster's members are a list")
        parsed = []
        for m in members:
            if not isinstance(m, dict) or set(m) != {"node_id", "fingerprint", "descriptor"}:
                raise MalformedError("a roster member has node_id, fingerprint and descriptor")
            if not isinstance(m["node_id"], str) or not isinstance(m["fingerprint"], str):
                raise MalformedError("a roster member's node_id and fingerprint are strings")
            if not isinstance(m["descriptor"], dict):
                raise MalformedError("a roster member's descriptor is a DSSE envelope")
            parsed.append(Member(m["node_id"], m["fingerprint"], m["descriptor"]))
        network, version = data.get("network"), data.get("version")
        previous, issued = data.get("previous"), data.get("issued")
        if not isinstance(network, str) or not isinstance(version, int):
            raise MalformedError("a roster names its network and version")
        if previous is not None and not isinstance(previous, str):
            raise MalformedError("a roster's previous is a SHA-256 or null")
        try:
            when = datetime.fromisoformat(str(issued))
        except ValueError:
            raise MalformedError("a roster's issued is an RFC 3339 time") from None
        if when.tzinfo is None:
            raise MalformedError("a roster's issued time carries a time zone")
        return cls(network, version, when, tuple(parsed), previous)


def sign_roster(roster: Roster, signer: SignerSet, *, onto: Envelope | None = None) -> Envelope:
    """``roster`` signed by ``signer`` (adding to the signatures already on ``onto``)."""
    payload = roster.payload()
    if onto is not None and onto.payload != payload:
        raise ValueError("the envelope carries another roster")
    mine = sign_envelope(ROSTER_PAYLOAD_TYPE, payload, signer.signers).signatures
    keep = tuple(s for s in (onto.signatures if onto else ()) if s[0] not in {k for k, _ in mine})
    return Envelope(ROSTER_PAYLOAD_TYPE, payload, keep + mine)


def roster_signers(envelope: Envelope, keysets: Mapping[str, Sequence[KeySet]]) -> list[str]:
    """Which nodes of ``keysets`` (node id -> its key sets) signed ``envelope`` with every key of
    one of their sets. A bad signature by a known key rejects the roster."""
    out = []
    for node_id, sets in sorted(keysets.items()):
        if not sets:
            continue
        try:
            verify_envelope(envelope, keysets=list(sets), payload_type=ROSTER_PAYLOAD_TYPE)
        except VerificationUnavailableError:
            continue  # it has not signed
        out.append(node_id)
    return out
