"""How a share is sealed: post-quantum when every party can read it so, classic otherwise.

A file mixing hybrid (ML-KEM-768 + X25519) and X25519 recipients would be only as strong as the
X25519 ones, so age refuses the mix: a share is sealed to hybrid recipients only when this node
and every partner it goes to advertise one, else to X25519 recipients only
(``crypto.sealing.choose_recipients``). The policy decides with that kind as a fact of the
request, in the policy's words (``post-quantum`` or ``classic``; a rule may need
``sealing: post-quantum``), so a share that cannot meet its terms is denied before anything is
sealed. An onward share never lowers the protection its origin chose.

This module decides nothing else and touches nothing: it names the kind of sealing in the
policy's words. Turning parties into recipients (:func:`recipients_for`, re-exported here) is in
``service.artifacts.parties``, which does not import ``policies``.
"""

from __future__ import annotations

from collections.abc import Iterable

from crypto.sealed import Manifest
from crypto.sealing import SEALING_HYBRID
from policies import SEALING_KINDS
from service.artifacts.parties import Party, recipients_for

__all__ = [
    "CLASSIC",
    "POST_QUANTUM",
    "Party",
    "recipients_for",
    "sealing_for",
    "sealing_of",
]

POST_QUANTUM, CLASSIC = SEALING_KINDS


def _policy_word(kind: str) -> str:
    return POST_QUANTUM if kind == SEALING_HYBRID else CLASSIC


def sealing_for(parties: Iterable[Party]) -> str:
    """``post-quantum`` when every party has a hybrid recipient, else ``classic``."""
    return POST_QUANTUM if all(p.pq_recipient for p in parties) else CLASSIC


def sealing_of(manifest: Manifest) -> str:
    """How a signed manifest's ciphertext is sealed, in the policy's words."""
    return _policy_word(manifest.sealing)
