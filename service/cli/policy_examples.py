"""``entente policy examples``: the example MOU terms shipped with Entente, listed or copied.

For trying Entente out: the demo's three institutes (uk-aisi, us-aisi, ca-aisi) each have one
policy file per partner. Their clause references are illustrative (marked ``[example]``), not
the text of any agreement; a real node's terms come from its own agreement.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from policies import example_files, example_nodes
from service.cli._common import console
from service.cli._terminal import outside, printable
from service.errors import UsageError
from service.files import atomic_write

__all__ = ["examples"]


def examples(
    node: Annotated[
        str | None, typer.Option("--node", help="The node whose terms to show or copy")
    ] = None,
    partner: Annotated[
        str | None, typer.Option("--partner", help="Only its terms with this partner")
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            "-o", "--out", help="Copy the files into this folder (a node's HOME/policies)"
        ),
    ] = None,
    force: Annotated[bool, typer.Option(help="Overwrite files that exist")] = False,
) -> None:
    """List the example MOU terms shipped with Entente, or copy one node's into a folder.

    Example: `entente policy examples --node uk-aisi --partner us-aisi -o ./uk/policies`
    gives a node the example terms of uk-aisi with us-aisi (clauses marked [example])."""
    nodes = example_nodes()
    if node is None:
        if out is not None or partner is not None:
            raise UsageError("--out and --partner need --node (one of: " + ", ".join(nodes) + ")")
        for name in nodes:
            console.print(f"{outside(name)}: {outside(', '.join(example_files(name)))}")
        return
    if node not in nodes:
        raise UsageError(f"no example terms for {node!r}; there are: {', '.join(nodes)}")
    files = example_files(node)
    if partner is not None:
        files = {n: d for n, d in files.items() if n == f"{partner}.yaml"}
        if not files:
            raise UsageError(f"{node} has no example terms with {partner!r}")
    if out is None:
        for name, data in files.items():
            typer.echo(f"# --- {name}")
            typer.echo(printable(data.decode(), lines=True), nl=False)
        return
    if not out.is_dir():
        raise UsageError(f"{out} is not a folder (a node home's policies folder?)")
    clashes = [n for n in files if (out / n).exists()]
    if clashes and not force:
        raise UsageError(f"{out / clashes[0]} exists; pass --force to overwrite it")
    for name, data in files.items():
        with atomic_write(out / name) as fh:
            fh.write(data)
        console.print(f"wrote {outside(out / name)}")
