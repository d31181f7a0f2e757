"""The closed vocabularies of the policy format, and the syntax of its open terms.

Anything not listed here is unknown, and an unknown term is a load error (fail closed).
"""

from __future__ import annotations

import re
from functools import lru_cache

__all__ = [
    "ACTIONS",
    "CASES_FORMAT",
    "EMBARGO_STATES",
    "EXPIRY_STATES",
    "FORMAT",
    "OBLIGATION_KINDS",
    "TLP_LABELS",
    "is_node_id",
    "is_term",
    "within",
]

FORMAT = "entente.policy/v1"
CASES_FORMAT = "entente.policy-cases/v1"

# share:        this node sends an artifact it originated to the partner
# receive:      this node accepts an artifact from the partner
# read:         a local reader opens an artifact received from the partner
# onward_share: this node passes an artifact received from the partner on to a third node
ACTIONS: tuple[str, ...] = ("share", "receive", "read", "onward_share")

# TLP 2.0 (FIRST), from the least to the most restrictive.
TLP_LABELS: tuple[str, ...] = ("TLP:CLEAR", "TLP:GREEN", "TLP:AMBER", "TLP:AMBER+STRICT", "TLP:RED")

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

_TERM = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}(?:/[a-z0-9][a-z0-9._-]{0,63}){0,7}")
_NODE_ID = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")


@lru_cache(maxsize=4096)
def is_term(value: object) -> bool:
    """A topic or purpose: lowercase segments separated by ``/`` (``evaluation/red-teaming``)."""
    return isinstance(value, str) and _TERM.fullmatch(value) is not None


@lru_cache(maxsize=1024)
def is_node_id(value: object) -> bool:
    """A node id such as ``uk-aisi``."""
    return isinstance(value, str) and _NODE_ID.fullmatch(value) is not None


def within(value: str, scope: str) -> bool:
    """True when the term ``value`` is ``scope`` or below it (``a/b`` is within ``a``)."""
    return value == scope or value.startswith(scope + "/")
