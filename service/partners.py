"""Pinning partner nodes: import a descriptor, confirm its fingerprint, keep its keys.

Nothing is trusted on first use. ``add_partner`` verifies the descriptor's self-signature and
validity and refuses it unless its key's fingerprint equals the one the operator confirmed out of
band. Re-pinning an existing node id needs ``replace=True``. Every change is an audit event.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from urllib.parse import urlsplit

from sqlmodel import Session, select

from crypto import strict_json
from crypto.descriptor import NodeDescriptor, verify_descriptor
from crypto.dsse import Envelope
from crypto.errors import CryptoError, MalformedError
from crypto.keys import VerifyKey, normalize_fingerprint
from crypto.keyset import KeySet
from crypto.mldsa import MLDSAVerifyKey
from service.audit.log import record
from service.errors import ConflictError, NotFoundError, PartnerError
from service.models import Partner, PartnerKey

__all__ = [
    "PartnerKeys",
    "add_partner",
    "get_partner",
    "list_partners",
    "partner_keys",
    "partner_keysets",
    "partner_verify_keys",
    "remove_partner",
    "rotate_partner",
]


def _parse(raw: bytes) -> Envelope:
    try:
        return Envelope.from_bytes(raw)
    except MalformedError as exc:
        raise PartnerError(f"not a node descriptor: {exc}") from None


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _store(
    session: Session, descriptor: NodeDescriptor, envelope: Envelope, now: datetime
) -> Partner:
    raw_key = _b64(descriptor.signing_key.raw)
    mldsa = None if descriptor.mldsa_key is None else _b64(descriptor.mldsa_key.raw)
    row = session.get(Partner, descriptor.node_id) or Partner(
        node_id=descriptor.node_id,
        name=descriptor.name,
        url=descriptor.url,
        fingerprint=descriptor.fingerprint,
        signing_key=raw_key,
        age_recipient=descriptor.age_recipient,
        descriptor="",
        descriptor_expires=descriptor.expires,
        added_at=now,
        updated_at=now,
    )
    row.name = descriptor.name
    row.url = descriptor.url
    row.fingerprint = descriptor.fingerprint
    row.signing_key = raw_key
    row.age_recipient = descriptor.age_recipient
    row.pq_recipient = descriptor.pq_recipient
    row.mldsa_key = mldsa
    row.checkpoint_key = (
        None if descriptor.checkpoint_key is None else _b64(descriptor.checkpoint_key.raw)
    )
    row.descriptor = envelope.to_bytes().decode("utf-8")
    row.descriptor_expires = descriptor.expires
    row.updated_at = now
    session.add(row)
    known = session.get(PartnerKey, descriptor.fingerprint)
    if known is not None and known.mldsa_key is None and mldsa is not None:
        known.mldsa_key = mldsa  # a partner that adds ML-DSA beside its key (never drops it)
        session.add(known)
    if known is None:
        session.add(
            PartnerKey(
                fingerprint=descriptor.fingerprint,
                node_id=descriptor.node_id,
                public_key=raw_key,
                mldsa_key=mldsa,
                added_at=now,
            )
        )
    return row


def _check_no_downgrade(current: Partner, descriptor: NodeDescriptor) -> None:
    """A descriptor under the same Ed25519 key may not drop or change the ML-DSA key the partner
    advertised: that would let whoever forges Ed25519 alone (a quantum adversary) replace the
    second signature. Changing it takes a rotation signed by the whole pinned set."""
    if current.mldsa_key is None:
        return
    advertised = None if descriptor.mldsa_key is None else _b64(descriptor.mldsa_key.raw)
    if advertised != current.mldsa_key:
        raise PartnerError(
            f"descriptor rejected: {current.node_id} advertised an ML-DSA key, and a descriptor "
            "under the same signing key may not drop or change it (rotate the keys instead)"
        )


def check_descriptor(
    descriptor_bytes: bytes, *, fingerprint: str, own_node_id: str, now: datetime
) -> NodeDescriptor:
    """The partner's verified descriptor, if its key has ``fingerprint`` (nothing stored)."""
    try:
        expected = normalize_fingerprint(fingerprint)
    except MalformedError as exc:
        raise PartnerError(str(exc)) from None
    try:
        descriptor = verify_descriptor(
            _parse(descriptor_bytes), now=now, expected_fingerprint=expected
        )
    except CryptoError as exc:
        raise PartnerError(f"descriptor rejected: {exc}") from None
    if descriptor.node_id == own_node_id:
        raise PartnerError("that descriptor is this node's own; a node cannot partner itself")
    return descriptor


def add_partner(
    session: Session,
    *,
    descriptor_bytes: bytes,
    fingerprint: str,
    own_node_id: str,
    now: datetime,
    actor: str,
    replace: bool = False,
) -> Partner:
    """Pin the partner described by ``descriptor_bytes`` if its key has ``fingerprint``."""
    descriptor = check_descriptor(
        descriptor_bytes, fingerprint=fingerprint, own_node_id=own_node_id, now=now
    )
    envelope = _parse(descriptor_bytes)
    existing = session.get(Partner, descriptor.node_id)
    if existing is not None and not replace:
        raise ConflictError(
            f"partner {descriptor.node_id!r} is already pinned "
            f"(fingerprint {existing.fingerprint[:16]}…); use --replace to re-pin it"
        )
    if existing is not None:
        for key in session.exec(select(PartnerKey).where(PartnerKey.node_id == descriptor.node_id)):
            if key.fingerprint != descriptor.fingerprint and key.retired_at is None:
                key.retired_at = now
                session.add(key)
    row = _store(session, descriptor, envelope, now)
    record(
        session,
        kind="partner.replaced" if existing is not None else "partner.added",
        actor=actor,
        partner=descriptor.node_id,
        detail={"fingerprint": descriptor.fingerprint, "url": descriptor.url},
        now=now,
    )
    return row


def rotate_partner(
    session: Session, *, descriptor_bytes: bytes, now: datetime, actor: str
) -> Partner:
    """Accept a partner's rotated descriptor, signed by its pinned key and its new key."""
    envelope = _parse(descriptor_bytes)
    try:
        unverified = NodeDescriptor.from_json(strict_json.loads(envelope.payload))
    except (CryptoError, ValueError) as exc:
        raise PartnerError(f"descriptor rejected: {exc}") from None
    current = session.get(Partner, unverified.node_id)
    if current is None:
        raise NotFoundError(f"no pinned partner {unverified.node_id!r}")
    pinned_fingerprint = current.fingerprint  # ``_store`` updates ``current`` in place
    before = _announced(current)
    if unverified.fingerprint == current.fingerprint:
        try:
            descriptor = verify_descriptor(
                envelope, now=now, expected_fingerprint=current.fingerprint
            )
        except CryptoError as exc:
            raise PartnerError(f"descriptor rejected: {exc}") from None
        _check_no_downgrade(current, descriptor)
    else:
        pinned = _keyset(current.signing_key, current.mldsa_key)  # every pinned key signs it
        try:
            descriptor = verify_descriptor(envelope, now=now, previous=pinned)
        except CryptoError as exc:
            raise PartnerError(f"rotated descriptor rejected: {exc}") from None
        old = session.get(PartnerKey, current.fingerprint)
        if old is not None:
            # Retired when the partner rotated (the new descriptor's signed creation), or when
            # we learned of it if that is earlier: the old key signs nothing newer.
            old.retired_at = min(descriptor.created, now)
            session.add(old)
    _check_not_inward(current.url, descriptor.url)
    row = _store(session, descriptor, envelope, now)
    changed = {k: {"from": v, "to": _announced(row)[k]} for k, v in before.items()
               if _announced(row)[k] != v}  # fmt: skip
    if descriptor.fingerprint != pinned_fingerprint:
        record(
            session,
            kind="partner.key_rotated",
            actor=actor,
            partner=descriptor.node_id,
            detail={"fingerprint": descriptor.fingerprint, "previous": descriptor.previous,
                    "changed": changed},
            now=now,
        )  # fmt: skip
    elif changed:  # the same key: its address, name or encryption keys, on record
        record(
            session, kind="partner.updated", actor=actor, partner=descriptor.node_id,
            detail={"changed": changed}, now=now,
        )  # fmt: skip
    return row


def _announced(row: Partner) -> dict[str, str | None]:
    """What a partner's descriptor says of it besides its signing key: keys by their digest."""

    def digest(value: str | None) -> str | None:
        return None if value is None else hashlib.sha256(value.encode()).hexdigest()[:16]

    return {
        "url": row.url, "name": row.name, "age_recipient": digest(row.age_recipient),
        "pq_recipient": digest(row.pq_recipient), "checkpoint_key": digest(row.checkpoint_key),
        "mldsa_key": digest(row.mldsa_key),
    }  # fmt: skip


def _check_not_inward(old: str, new: str) -> None:
    """Refuse a descriptor that moves a partner from an outside address to one on this side
    (loopback, link-local, a private network): a partner cannot point this node's requests at
    its own network, or at a local webhook receiver, by signing a new address."""
    if _inward(new) and not _inward(old):
        raise PartnerError(
            f"descriptor rejected: it moves the partner from {old[:100]!r} to {new[:100]!r}, "
            "an address on this node's side (loopback, link-local or private): pin it again "
            "(entente partner add --replace) if that is right"
        )


def _inward(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return address.is_loopback or address.is_link_local or address.is_private


def list_partners(session: Session) -> list[Partner]:
    return list(session.exec(select(Partner).order_by(Partner.node_id)))


def get_partner(session: Session, node_id: str) -> Partner:
    row = session.get(Partner, node_id)
    if row is None:
        raise NotFoundError(f"no pinned partner {node_id!r}")
    return row


def remove_partner(session: Session, *, node_id: str, now: datetime, actor: str) -> None:
    row = get_partner(session, node_id)
    session.delete(row)
    record(
        session,
        kind="partner.removed",
        actor=actor,
        partner=node_id,
        detail={"fingerprint": row.fingerprint},
        now=now,
    )


def partner_verify_keys(session: Session, node_id: str) -> dict[str, VerifyKey]:
    """Every key (current and retired) the partner has signed with, by fingerprint.

    For what this node already verified and stored (re-reading its own records). Anything
    new from a partner is verified with :func:`partner_keys`, which knows when each key was
    retired."""
    rows = session.exec(select(PartnerKey).where(PartnerKey.node_id == node_id))
    return {r.fingerprint: VerifyKey(base64.b64decode(r.public_key)) for r in rows}


def _keyset(public_key: str, mldsa_key: str | None) -> KeySet:
    return KeySet(
        VerifyKey(base64.b64decode(public_key)),
        None if mldsa_key is None else MLDSAVerifyKey(base64.b64decode(mldsa_key)),
    )


def partner_keysets(session: Session, node_id: str) -> list[KeySet]:
    """Every key set (current and retired) the partner has signed with: what this node already
    verified and stored, re-read (see :func:`partner_verify_keys`)."""
    rows = session.exec(select(PartnerKey).where(PartnerKey.node_id == node_id))
    return [_keyset(r.public_key, r.mldsa_key) for r in rows]


@dataclass(frozen=True)
class PartnerKeys:
    """A partner's signing keys and their lifetimes: a key retired at T verifies only what
    it signed before T (manifests by their ``created``, receipts by their ``received_at``,
    responses by their signature's ``created``), never anything newer.

    The times are the signer's own claims: someone holding a stolen retired key can still
    backdate what they sign to before its retirement. That residual is bounded by the
    freshness checks where there are any (a response's ``created`` must be within the clock
    skew of now), and by the receiver's other checks (recipients, policy, onward terms)."""

    keys: Mapping[str, VerifyKey]  # fingerprint -> Ed25519 key, current and retired
    retired: Mapping[str, datetime]  # fingerprint -> when it was retired
    # Ed25519 fingerprint -> the whole set (with the ML-DSA key the partner advertised beside
    # it): what signs manifests, receipts and onward links, where every key of a set must sign
    keysets: Mapping[str, KeySet] = field(default_factory=dict)

    def valid_at(self, signed_at: datetime) -> dict[str, VerifyKey]:
        """The Ed25519 keys that could have signed something at ``signed_at`` (requests)."""
        return {
            fp: key
            for fp, key in self.keys.items()
            if fp not in self.retired or signed_at < self.retired[fp]
        }

    def sets_valid_at(self, signed_at: datetime) -> list[KeySet]:
        """The key sets that could have signed something at ``signed_at``."""
        return [
            ks
            for fp, ks in self.keysets.items()
            if fp not in self.retired or signed_at < self.retired[fp]
        ]

    @property
    def all_sets(self) -> list[KeySet]:
        return list(self.keysets.values())


def partner_keys(session: Session, node_id: str) -> PartnerKeys:
    rows = list(session.exec(select(PartnerKey).where(PartnerKey.node_id == node_id)))
    sets = {r.fingerprint: _keyset(r.public_key, r.mldsa_key) for r in rows}
    return PartnerKeys(
        keys={fp: ks.ed25519 for fp, ks in sets.items()},
        retired={r.fingerprint: r.retired_at for r in rows if r.retired_at is not None},
        keysets=sets,
    )
