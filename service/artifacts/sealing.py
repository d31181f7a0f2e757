"""How a share is sealed: post-quantum when every party can read it so, classic otherwise.

A file mixing hybrid (ML-KEM-768 + X25519) and X25519 recipients would be only as strong as the
X25519 ones, so age refuses the mix: a share is sealed to hybrid recipients only when this node
and every partner it goes to advertise one, else to X25519 recipients only
(``crypto.sealing.choose_recipients``). The policy decides with that kind as a fact of the
request, in the policy's words (``post-quantum`` or ``classic``; a rule may need
``sealing: post-quantum``), so a share that cannot meet its terms is denied before anything is
sealed. An onward share never lowers the protection its origin chose.

This module decides nothing else and touches nothing: it turns parties into recipients and
names a manifest's kind in the policy's words.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol

from crypto.sealed import Manifest, ManifestRecipient
from crypto.sealing import SEALING_HYBRID, RecipientKeys, choose_recipients
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


class Party(Protocol):
    """A party to a share: its node id and its age recipients (hybrid when it has one)."""

    @property
    def node_id(self) -> str: ...
    @property
    def age_recipient(self) -> str: ...
    @property
    def pq_recipient(self) -> str | None: ...


def _policy_word(kind: str) -> str:
    return POST_QUANTUM if kind == SEALING_HYBRID else CLASSIC


def sealing_for(parties: Iterable[Party]) -> str:
    """``post-quantum`` when every party has a hybrid recipient, else ``classic``."""
    return POST_QUANTUM if all(p.pq_recipient for p in parties) else CLASSIC


def recipients_for(parties: Sequence[Party]) -> list[ManifestRecipient]:
    """The manifest recipients of ``parties``: all hybrid when every party has one, else all
    X25519 (the kind :func:`sealing_for` names)."""
    choice = choose_recipients(
        RecipientKeys(p.node_id, p.age_recipient, p.pq_recipient or None) for p in parties
    )
    return [ManifestRecipient(node_id, recipient) for node_id, recipient in choice.recipients]


def sealing_of(manifest: Manifest) -> str:
    """How a signed manifest's ciphertext is sealed, in the policy's words."""
    return _policy_word(manifest.sealing)
