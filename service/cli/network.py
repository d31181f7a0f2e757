"""``entente network``: a local network of N nodes on loopback, to see a network bigger than the
demo's three (``up``, ``down``).

``up`` builds the network through :mod:`service.network`: N homes, one roster signed by every
member and imported by each node with its digest, one multilateral agreement whose common terms
every node's officer signed and every node adopted; then it starts every node and prints them.
It stays up until Ctrl-C (or SIGTERM), or with ``--keep`` returns and leaves the nodes running,
their pids in ``ROOT/network.json``; ``down --root ROOT`` stops them.
"""

from __future__ import annotations

import shutil
import signal
import tempfile
from pathlib import Path
from typing import Annotated

import typer

from service.cli._common import console
from service.cli._terminal import SafeTable, outside
from service.errors import UsageError

app = typer.Typer(
    help="A local network of N nodes on loopback: up, down.",
    no_args_is_help=True,
)

RootOpt = Annotated[
    Path | None,
    typer.Option(
        "--root",
        help="The folder of the nodes' homes, logs and network.json (default: a new "
        "temporary folder, removed at the end unless --keep)",
        show_default=False,
    ),
]


class _Stopped(Exception):
    """SIGTERM or SIGHUP asked ``network up`` to stop."""


def _stop_on_signal(signum: int, _frame: object) -> None:
    raise _Stopped(signum)


@app.command()
def up(
    nodes: Annotated[
        int, typer.Option("--nodes", "-n", min=2, max=64, help="How many nodes (20 fit 2 cores)")
    ] = 5,
    root: RootOpt = None,
    keep: Annotated[
        bool,
        typer.Option("--keep", help="Return and leave the nodes running (stop: network down)"),
    ] = False,
    terms: Annotated[
        Path | None,
        typer.Option(
            "--terms",
            help="The network's common terms, an entente.policy/v1 file saying partner: '*' "
            "(default: TLP:CLEAR and GREEN evaluation findings and research for all)",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Bring up N nodes on loopback, pinned to each other through one signed roster, under one
    multilateral agreement every node's officer signed."""
    from service.network import NETWORK_TERMS, network_ids, prepare_network, write_state

    try:
        common = terms.read_text() if terms is not None else NETWORK_TERMS
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read {terms}: {exc}") from None
    temporary = root is None
    if root is None:
        root = Path(tempfile.mkdtemp(prefix="entente-network-"))
    elif root.exists() and any(root.iterdir()):
        raise UsageError(f"{root} is not empty; give a new or empty folder")
    handlers = {s: signal.signal(s, _stop_on_signal) for s in (signal.SIGTERM, signal.SIGHUP)}
    network = None
    try:
        console.print(f"preparing {nodes} nodes in {outside(str(root))} …")
        network = prepare_network(root, network_ids(nodes), terms=common, detached=keep)
        console.print("starting them (each answers /healthz when ready) …")
        network.federation.start()
        state = write_state(network)
        table = SafeTable("node", "URL", "fingerprint", "tokens file")
        for node_id, node in network.nodes.items():
            table.add_row(
                node_id,
                node.url,
                network.fingerprints[node_id][:16] + "…",
                network.tokens_file(node_id).name,
            )
        console.print(table)
        console.print(f"homes, logs and tokens files (a token per role) in {outside(str(root))}")
        console.print(
            f"roster of {network.name} (sha256 {network.roster_sha256[:16]}…) imported by every "
            f"node; agreement {network.agreement['id']} v{network.agreement['version']} signed "
            f"by {nodes} officers and adopted by every node"
        )
        console.print(f"console: {next(iter(network.nodes.values())).url}/ui (an auditor token)")
        if keep:
            console.print(
                f"The nodes keep running (pids in {outside(str(state))}). Stop them with:\n"
                f"  entente network down --root {outside(str(root))}"
            )
            return
        console.print("Press Ctrl-C to stop the nodes.")
        try:
            while True:
                signal.pause()
        except (KeyboardInterrupt, _Stopped):
            console.print("stopping the nodes")
    except (KeyboardInterrupt, _Stopped):
        console.print("interrupted")
        keep = False
        raise typer.Exit(130) from None
    finally:
        if network is not None and not keep:
            network.federation.stop()
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
        if temporary and not keep:
            shutil.rmtree(root, ignore_errors=True)


@app.command()
def down(
    root: Annotated[Path, typer.Option("--root", help="The folder `network up --keep` printed")],
) -> None:
    """Stop the nodes `entente network up --keep` left running (SIGTERM, then SIGKILL)."""
    from service.network import stop_network

    outcome = stop_network(root)
    for node_id, what in outcome.items():
        console.print(f"{outside(node_id)}: {what}")
    stopped = sum(1 for what in outcome.values() if what != "not running")
    console.print(f"{stopped} node(s) stopped; the homes stay in {outside(str(root))}")
