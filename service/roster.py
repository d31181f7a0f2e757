"""Importing a network roster: pin every member in one step, each fingerprint still checked.

A roster (``crypto.roster``) is trusted by this node in one of two ways, never on first use:

* ``digest`` given: the operator compared the roster's SHA-256 out of band (a node joining a
  network pins nobody yet; one value replaces N-1 fingerprints);
* otherwise at least ``threshold`` members this node already pins signed it with their pinned
  keys (default: a majority of the pinned members the roster lists). Existing members take a new
  version, a member more or less, without any step out of band.

Then every member's descriptor is verified against the fingerprint the roster names. Members not
pinned are pinned (``partner.added``); pinned ones whose key differs are reported and left alone
(a key changes through the member's signed rotation, never through a roster); pinned partners
the roster no longer lists are unpinned only when asked (``remove_missing``). The import is one
transaction with its ``roster.imported`` audit entry: all of it happens, or none.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlmodel import Session

from crypto.dsse import Envelope
from crypto.errors import CryptoError
from crypto.keyset import KeySet
from crypto.roster import Roster, roster_signers
from service.audit.log import record
from service.errors import InvalidInputError, PartnerError
from service.partners import add_partner, list_partners, partner_keys, remove_partner

__all__ = ["MAX_ROSTER_BYTES", "RosterImport", "import_roster", "read_roster"]

MAX_ROSTER_BYTES = 8 << 20
MAX_SIGNATURES = 512


def read_roster(raw: bytes) -> tuple[Envelope, Roster]:
    """Parse a roster file (a DSSE envelope); a bad one is an InvalidInputError."""
    if len(raw) > MAX_ROSTER_BYTES:
        raise InvalidInputError("the roster is larger than 8 MiB", reason="roster")
    try:
        envelope = Envelope.from_json(json.loads(raw), max_signatures=MAX_SIGNATURES)
        return envelope, Roster.from_envelope(envelope)
    except (ValueError, CryptoError) as exc:
        raise InvalidInputError(f"not a valid roster: {exc}", reason="roster") from None


@dataclass
class RosterImport:
    network: str
    version: int
    sha256: str
    trusted_by: str  # "digest" or the members whose signatures counted
    added: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    differs: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def import_roster(
    session: Session,
    raw: bytes,
    *,
    node_id: str,
    own_keysets: Sequence[KeySet],
    now: datetime,
    actor: str,
    digest: str | None = None,
    threshold: int = 0,
    remove_missing: bool = False,
) -> RosterImport:
    envelope, roster = read_roster(raw)
    if roster.member(node_id) is None:
        raise PartnerError(f"{node_id} is not a member of the roster of {roster.network}")
    pinned = {p.node_id: p for p in list_partners(session)}
    members = {m.node_id for m in roster.members} - {node_id}
    known = sorted(members & set(pinned))
    if digest is not None:
        if digest.strip().lower() != roster.sha256:
            raise PartnerError(
                f"the roster's SHA-256 is {roster.sha256}, not the {digest.strip()} compared "
                "out of band: it is not the roster you were given"
            )
        trusted_by = "digest"
    else:
        if not known:
            raise PartnerError(
                "this node pins no member of the roster yet: give --digest, the roster's "
                "SHA-256 compared out of band with a member"
            )
        needed = threshold or len(known) // 2 + 1
        keysets = {m: partner_keys(session, m).all_sets for m in known}
        try:
            signed = roster_signers(envelope, keysets)
        except CryptoError as exc:
            raise PartnerError(f"the roster's signatures do not verify: {exc}") from None
        if len(signed) < needed:
            raise PartnerError(
                f"the roster is signed by {len(signed)} of the members this node pins "
                f"({', '.join(signed) or 'none'}), {needed} needed"
            )
        trusted_by = ", ".join(signed)
    out = RosterImport(roster.network, roster.version, roster.sha256, trusted_by)
    for member in sorted(roster.members, key=lambda m: m.node_id):
        if member.node_id == node_id:
            continue
        try:
            member.verified(now)
        except CryptoError as exc:
            raise PartnerError(f"roster member {member.node_id}: {exc}") from None
        current = pinned.get(member.node_id)
        if current is None:
            add_partner(
                session,
                descriptor_bytes=json.dumps(member.descriptor).encode(),
                fingerprint=member.fingerprint,
                own_node_id=node_id,
                now=now,
                actor=f"{actor} (roster {roster.network} v{roster.version})",
            )
            out.added.append(member.node_id)
        elif current.fingerprint == member.fingerprint:
            out.unchanged.append(member.node_id)
        else:
            out.differs.append(member.node_id)
    for gone in sorted(set(pinned) - members):
        if remove_missing:
            remove_partner(session, node_id=gone, now=now, actor=actor)
            out.removed.append(gone)
        else:
            out.missing.append(gone)
    record(session, kind="roster.imported", actor=actor, detail=out.to_json(), now=now)
    return out
