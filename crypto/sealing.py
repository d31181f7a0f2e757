"""Sealing kinds: whether an artifact is sealed to X25519 or to hybrid post-quantum recipients.

age v1 has two kinds of public-key recipient Entente uses: X25519 (``age1...``) and the hybrid
MLKEM768-X25519 (``age1pq1...``), which stays confidential against an adversary who records the
ciphertext today and has a quantum computer later. age refuses to mix the two in one file (the
file would be only as strong as its classic recipients), so a share is sealed to one kind:

* ``"mlkem768x25519"`` when every recipient (the origin node itself included) has a hybrid
  recipient, and then to the hybrid recipients only;
* ``"x25519"`` otherwise.

:func:`choose_recipients` makes that choice from each node's pair of recipients;
:func:`sealing_kind` names the kind of a list of recipients and refuses a mix with
:class:`~crypto.errors.SealingKindError`. The manifest records the kind (``crypto.sealed``).

This module does not decide whether a policy *requires* post-quantum sealing for a partner or a
TLP label (that is the policy engine's, with the kind as input), nor encrypt anything.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from crypto import age
from crypto.errors import MalformedError, SealingKindError

__all__ = [
    "SEALING_HYBRID",
    "SEALING_KINDS",
    "SEALING_X25519",
    "RecipientKeys",
    "SealingChoice",
    "choose_recipients",
    "kind_of",
    "sealing_kind",
]

SEALING_X25519: Final = "x25519"
SEALING_HYBRID: Final = "mlkem768x25519"
SEALING_KINDS: Final = (SEALING_X25519, SEALING_HYBRID)


@functools.lru_cache(maxsize=1024)
def kind_of(recipient: str) -> str:
    """The sealing kind of one age recipient string (parsed strictly: Bech32 is costly, and the
    same strings recur on every share, hence the cache)."""
    parsed = age.parse_recipient(recipient)
    return SEALING_HYBRID if isinstance(parsed, age.HybridRecipient) else SEALING_X25519


def sealing_kind(recipients: Iterable[str]) -> str:
    """The one kind of every recipient in ``recipients``; :class:`SealingKindError` on a mix."""
    kinds = {kind_of(r) for r in recipients}
    if not kinds:
        raise MalformedError("sealing needs at least one recipient")
    if len(kinds) > 1:
        raise SealingKindError(
            "post-quantum (age1pq1…) and classic (age1…) recipients cannot be mixed in one "
            "sealed artifact: the file would be only as strong as its classic recipients; "
            "seal to the hybrid recipients of every node, or to the X25519 ones"
        )
    return kinds.pop()


@dataclass(frozen=True)
class RecipientKeys:
    """One node's age recipients: its X25519 one, and its hybrid one when it has one."""

    node_id: str
    x25519: str
    hybrid: str | None = None

    def __post_init__(self) -> None:
        if kind_of(self.x25519) != SEALING_X25519:
            raise SealingKindError(f"the X25519 recipient of {self.node_id} is not age1…")
        if self.hybrid is not None and kind_of(self.hybrid) != SEALING_HYBRID:
            raise SealingKindError(f"the hybrid recipient of {self.node_id} is not age1pq1…")


@dataclass(frozen=True)
class SealingChoice:
    """The kind chosen and the (node id, age recipient) pairs to seal to, in the order given."""

    kind: str
    recipients: tuple[tuple[str, str], ...]

    @property
    def post_quantum(self) -> bool:
        return self.kind == SEALING_HYBRID


def choose_recipients(candidates: Iterable[RecipientKeys]) -> SealingChoice:
    """Hybrid recipients when every candidate has one, else every candidate's X25519 one.

    Pass every node the artifact is sealed to, the origin itself included: one node without a
    hybrid recipient makes the whole share classic.
    """
    nodes = tuple(candidates)
    if not nodes:
        raise MalformedError("sealing needs at least one recipient")
    hybrid = tuple((n.node_id, n.hybrid) for n in nodes if n.hybrid is not None)
    if len(hybrid) == len(nodes):
        return SealingChoice(SEALING_HYBRID, hybrid)
    return SealingChoice(SEALING_X25519, tuple((n.node_id, n.x25519) for n in nodes))
