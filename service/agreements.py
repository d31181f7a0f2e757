"""Signed agreements at a node: which parties' officers signed, checked against pinned keys.

A policy version (``service.policy_store``) may hold signed agreements (``*.agreement.json``,
``crypto.agreement.SignedAgreement``) beside unsigned local files. :class:`AgreementKeys` checks
each: the officer certificates against the node keys this node pinned for each party (its own
keys for itself, ``partner_keys`` for partners, retired keys included, since a certificate signed
before a rotation stays true), then the officers' signatures over the agreement.

Two strictnesses, one rule each:

* publishing (a reload, ``entente agreement adopt``): any signature or certificate that does not
  verify is an error and nothing is published;
* reading a committed version back (another replica, a restart): an agreement that no longer
  verifies (its partner was removed, say) enforces nothing and is reported, instead of stopping
  the node; its terms are never used unchecked.

The terms themselves are ``policies._agreement``; this module only establishes who signed.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from crypto.agreement import SignedAgreement, check_signatures
from crypto.errors import CryptoError
from crypto.keyset import KeySet
from policies._agreement import Agreement
from policies._assemble import Held
from policies.errors import PolicyLoadError
from service.db import Database
from service.partners import partner_keys

__all__ = ["AGREEMENT_SUFFIX", "AgreementKeys", "is_agreement_file", "read_signed"]

log = logging.getLogger(__name__)

AGREEMENT_SUFFIX = ".agreement.json"


def is_agreement_file(name: str) -> bool:
    return name.endswith(AGREEMENT_SUFFIX)


def read_signed(name: str, raw: bytes) -> tuple[SignedAgreement, Agreement]:
    """Parse a signed agreement file (no signature checked); a bad file is a PolicyLoadError."""
    try:
        signed = SignedAgreement.from_bytes(raw)
    except CryptoError as exc:
        raise PolicyLoadError(name, [(0, str(exc))]) from None
    try:
        agreement = Agreement.from_payload(signed.envelope.payload)
    except PolicyLoadError as exc:
        raise PolicyLoadError(name, list(exc.problems)) from None
    return signed, agreement


@dataclass(frozen=True)
class AgreementKeys:
    """Who this node is and whose node keys it trusts, to check agreements' signatures."""

    node_id: str
    own_keysets: Sequence[KeySet]  # current and retired
    db: Database
    require_signed: bool = False

    def keysets(self, party: str) -> Sequence[KeySet]:
        if party == self.node_id:
            return self.own_keysets
        with self.db.session() as session:
            return partner_keys(session, party).all_sets

    def held(self, name: str, raw: bytes, *, now: datetime, strict: bool) -> Held | None:
        """The agreement in ``raw`` with the parties whose officers signed it.

        ``strict`` (publishing): a signature that does not verify raises PolicyLoadError.
        Otherwise (reading back) it is logged and the agreement is left out (None).
        """
        signed, agreement = read_signed(name, raw)
        try:
            signers = check_signatures(
                signed, parties=agreement.parties, node_keysets=self.keysets, now=now
            )
        except CryptoError as exc:
            if strict:
                raise PolicyLoadError(name, [(0, f"signatures do not verify: {exc}")]) from None
            log.error("agreement %s no longer verifies (%s): it enforces nothing", name, exc)
            return None
        return Held(name, agreement, frozenset(signers))
