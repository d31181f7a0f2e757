"""The closed vocabularies of the policy format, and how its terms nest.

Anything not listed here is unknown, and an unknown term is a load error (fail closed). TLP
labels, node ids, topics and purposes are the federation's, shared with manifests and the API:
their grammar is ``crypto.vocab``, so a policy cannot name what no request could ever carry.
"""

from __future__ import annotations

__all__ = [
    "ACTIONS",
    "CASES_FORMAT",
    "EMBARGO_STATES",
    "EXPIRY_STATES",
    "FORMAT",
    "OBLIGATION_KINDS",
    "SEALING_KINDS",
    "SEALING_STATES",
    "within",
]

FORMAT = "entente.policy/v1"
CASES_FORMAT = "entente.policy-cases/v1"

# share:        this node sends an artifact it originated to the partner
# receive:      this node accepts an artifact from the partner
# read:         a local reader opens an artifact received from the partner
# onward_share: this node passes an artifact received from the partner on to a third node
ACTIONS: tuple[str, ...] = ("share", "receive", "read", "onward_share")

OBLIGATION_KINDS: tuple[str, ...] = (
    "attribute",  # credit the originator as the given text
    "retain_max",  # keep the artifact at most this many days
    "delete_at_expiry",  # delete the artifact when it expires
    "inform",  # notify the originator when the artifact is read
    "onward",  # who may receive it next, whether the originator must approve; TLP never loosened
)

# ended:  the artifact has no embargo, or its embargo has ended (the default of a permit)
# active: the artifact is under an embargo now
# any:    the embargo does not matter (the default of a forbid)
EMBARGO_STATES: tuple[str, ...] = ("ended", "active", "any")

# set: the artifact carries an expiry; unset: it does not; any: it does not matter (default)
EXPIRY_STATES: tuple[str, ...] = ("set", "unset", "any")

# How an artifact's ciphertext is sealed (its signed manifest says which):
# post-quantum: to hybrid ML-KEM-768 + X25519 recipients only (age ``mlkem768x25519``)
# classic:      to X25519 recipients (age ``X25519``), breakable by a future quantum computer
SEALING_KINDS: tuple[str, ...] = ("post-quantum", "classic")
# A rule's ``sealing`` condition: one of the kinds, or any (the default)
SEALING_STATES: tuple[str, ...] = (*SEALING_KINDS, "any")


def within(value: str, scope: str) -> bool:
    """True when the term ``value`` is ``scope`` or below it (``a/b`` is within ``a``)."""
    return value == scope or value.startswith(scope + "/")
