"""Which partners witness this node's log, and how many of them make a quorum.

Every node witnessing every other is N² work in a network of N (each checkpoint sent to N-1
witnesses, each witness checking N-1 logs). Instead each log asks a fixed number ``w`` of its
partners (``ENTENTE_WITNESS_COUNT``, default 5), chosen by rendezvous hashing of the log's
origin and each partner's id: the choice is stable (a partner joining or leaving moves at most
the witnesses it displaces), spread evenly (each node is chosen by about ``w`` logs, so it
checks about ``w`` logs whatever N is), and computable by anyone who knows the partner list.
Work per node is then constant in N and the network's grows linearly, N·w.

A checkpoint counts as witnessed when a quorum of the chosen witnesses vouches for it
(``ENTENTE_WITNESS_QUORUM``, default a majority: ``w // 2 + 1``): one colluding or stale witness
cannot make a forked log look witnessed, and one absent witness does not stop it.

Pure: no I/O.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

__all__ = ["choose_witnesses", "quorum"]


def _weight(origin: str, candidate: str) -> bytes:
    return hashlib.sha256(f"{origin}\n{candidate}".encode()).digest()


def choose_witnesses(origin: str, candidates: Iterable[str], count: int) -> list[str]:
    """The ``count`` candidates with the highest rendezvous weight for ``origin`` (sorted by
    name); ``count`` 0 chooses every candidate."""
    every = sorted(set(candidates))
    if count <= 0 or count >= len(every):
        return every
    ranked = sorted(every, key=lambda c: _weight(origin, c), reverse=True)
    return sorted(ranked[:count])


def quorum(witnesses: int, configured: int = 0) -> int:
    """How many of ``witnesses`` must vouch: ``configured`` or, by default, a majority. More than
    there are witnesses can never be met (it is not lowered). No witness at all, and nothing
    configured, needs none."""
    if configured > 0:
        return configured
    return witnesses // 2 + 1 if witnesses > 0 else 0
