"""The federation's shared vocabulary: TLP labels, node ids, topics and purposes, in one grammar.

A manifest's origin and recipients, a node descriptor's id, a policy's partner, onward
recipients, topics and purposes, and the /v1 API's bodies all use these definitions, so a term a
policy may name is exactly a term the API and a manifest can carry (a policy naming ``uk.aisi``
could never match anything, and is a load error instead).

* TLP labels: TLP 2.0 (FIRST), from the least to the most restrictive.
* A node id is one DNS label: lowercase letters, digits and ``-``, not at either end, 1 to 63
  characters (``uk-aisi``).
* A term (a topic or a purpose) is one or more segments of lowercase letters, digits and ``-``,
  each starting with a letter or digit, separated by ``/`` (``evaluation/red-teaming``), at most
  120 characters.

The patterns are also spelt out in ``policies/schema/policy.schema.json`` (a test keeps them
equal). This module says nothing about what a term means, how terms nest for a rule
(``policies``), or how a body is parsed (``service.schemas``).
"""

from __future__ import annotations

import re
from functools import lru_cache

__all__ = [
    "MAX_TERM_CHARS",
    "NODE_ID_PATTERN",
    "NODE_ID_REGEX",
    "TERM_REGEX",
    "TLP_LABELS",
    "is_node_id",
    "is_term",
]

TLP_LABELS: tuple[str, ...] = ("TLP:CLEAR", "TLP:GREEN", "TLP:AMBER", "TLP:AMBER+STRICT", "TLP:RED")

NODE_ID_REGEX = r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$"
NODE_ID_PATTERN = re.compile(NODE_ID_REGEX)

TERM_REGEX = r"^[a-z0-9][a-z0-9-]*(/[a-z0-9][a-z0-9-]*)*$"
MAX_TERM_CHARS = 120
_TERM = re.compile(TERM_REGEX)


@lru_cache(maxsize=4096)
def is_term(value: object) -> bool:
    """A topic or purpose: lowercase segments separated by ``/`` (``evaluation/red-teaming``)."""
    return (
        isinstance(value, str)
        and 0 < len(value) <= MAX_TERM_CHARS
        and _TERM.fullmatch(value) is not None
    )


@lru_cache(maxsize=1024)
def is_node_id(value: object) -> bool:
    """A node id such as ``uk-aisi``."""
    return isinstance(value, str) and NODE_ID_PATTERN.fullmatch(value) is not None
