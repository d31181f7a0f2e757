"""Nodes in network namespaces for tests: ``service.netsim`` (the star, its links and their
conditions), and :func:`require_namespaces`, which skips a test (in CI: fails it) on a machine
that cannot build one."""

from __future__ import annotations

from service.netsim import RELAY, Link, Star, missing_for_namespaces, sweep_stale
from tests.support import require

__all__ = ["RELAY", "Link", "Star", "require_namespaces", "sweep_stale"]


def require_namespaces(*, loss: bool = False) -> None:
    """Skip (in CI: fail) unless this process can build a star (root, iproute2; nftables for
    links that lose packets)."""
    missing = missing_for_namespaces(loss=loss)
    if missing is not None:
        require(False, *missing)
