"""Fault injection for crash tests: :func:`fault_point` ends the process on the spot, the way
``kill -9`` would (no cleanup, no ``finally``, no flush), when ``ENTENTE_FAULT_POINT`` names it.

The calls sit at the steps where a crash is most likely to leave something half done (after a
blob is committed, before and after a database commit); ``tests/faults`` restarts the node after
each and checks that nothing was lost, duplicated or left behind. Unset (always, in production)
a fault point costs one environment lookup.
"""

from __future__ import annotations

import os

__all__ = ["ENV", "EXIT_CODE", "fault_point"]

ENV = "ENTENTE_FAULT_POINT"
EXIT_CODE = 137  # what a shell reports for a process killed by SIGKILL (128 + 9)


def fault_point(name: str) -> None:
    """Die here, at once, if ``ENTENTE_FAULT_POINT`` is ``name``."""
    if os.environ.get(ENV) == name:
        os._exit(EXIT_CODE)
