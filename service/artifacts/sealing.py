"""How a share is sealed: post-quantum when every party can read it so, classic otherwise.

A file mixing hybrid (ML-KEM-768 + X25519) and X25519 recipients would be only as strong as the
X25519 ones, so age refuses the mix: a share is sealed to hybrid recipients only when this node
and every partner it goes to advertise one (``post-quantum``), else to X25519 recipients only
(``classic``). The policy then decides with that kind as a fact of the request (a rule may need
``sealing: post-quantum``), so a share that cannot meet its terms is denied before anything is
sealed. An onward share never lowers the protection its origin chose.

This module decides nothing else and touches nothing: it turns parties into recipients.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol

from crypto.sealed import Manifest, ManifestRecipient
from policies import SEALING_KINDS

__all__ = [
    "CLASSIC",
    "POST_QUANTUM",
    "Party",
    "recipients_for",
    "sealing_for",
    "sealing_of",
]

POST_QUANTUM, CLASSIC = SEALING_KINDS
_HYBRID_PREFIX = "age1pq1"


class Party(Protocol):
    """A party to a share: its node id and its age recipients (hybrid when it has one)."""

    @property
    def node_id(self) -> str: ...
    @property
    def age_recipient(self) -> str: ...
    @property
    def pq_recipient(self) -> str | None: ...


def sealing_for(parties: Iterable[Party]) -> str:
    """``post-quantum`` when every party has a hybrid recipient, else ``classic``."""
    return POST_QUANTUM if all(p.pq_recipient for p in parties) else CLASSIC


def recipients_for(parties: Sequence[Party], sealing: str) -> list[ManifestRecipient]:
    """The manifest recipients of ``parties`` for ``sealing`` (from :func:`sealing_for`)."""
    if sealing == POST_QUANTUM:
        return [ManifestRecipient(p.node_id, _hybrid(p)) for p in parties]
    return [ManifestRecipient(p.node_id, p.age_recipient) for p in parties]


def _hybrid(party: Party) -> str:
    if not party.pq_recipient:
        raise ValueError(f"{party.node_id} has no post-quantum recipient")
    return party.pq_recipient


def sealing_of(manifest: Manifest) -> str:
    """How a signed manifest's ciphertext is sealed, from the recipients it lists (the header
    digest it signs binds them): ``post-quantum`` when every one is hybrid."""
    recipients = manifest.recipients
    if recipients and all(r.recipient.startswith(_HYBRID_PREFIX) for r in recipients):
        return POST_QUANTUM
    return CLASSIC
