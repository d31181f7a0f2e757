"""The example MOU policies shipped in ``policies/mou/<node id>/`` (for the demo and tests).

One folder per demo node (``uk-aisi``, ``us-aisi``, ``ca-aisi``) holding that node's policy
files, one per partner, each with its golden cases beside it. The clause references in them are
illustrative, not the legal text of any agreement.
"""

from __future__ import annotations

from importlib import resources
from importlib.resources.abc import Traversable

from policies._loader import CASES_SUFFIX

__all__ = ["example_files", "example_nodes", "examples_dir"]


def examples_dir() -> Traversable:
    """``policies/mou`` inside the installed package."""
    return resources.files("policies").joinpath("mou")


def example_nodes() -> tuple[str, ...]:
    """The node ids that have example policies."""
    return tuple(sorted(p.name for p in examples_dir().iterdir() if p.is_dir()))


def example_files(node_id: str) -> dict[str, bytes]:
    """File name -> content of the example policies of ``node_id`` (no golden cases).

    Copy these into ``<home>/policies/`` to give a demo node its MOU terms.
    """
    folder = examples_dir().joinpath(node_id)
    if not folder.is_dir():
        raise KeyError(f"no example policies for node {node_id!r}")
    return {
        p.name: p.read_bytes()
        for p in sorted(folder.iterdir(), key=lambda p: p.name)
        if p.is_file() and p.name.endswith(".yaml") and not p.name.endswith(CASES_SUFFIX)
    }
