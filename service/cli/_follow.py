"""``entente inbox --follow``: print each arrival, revocation or deletion of a node's event
stream as it comes, until Ctrl-C.

The stream, its parsing and its reconnections (resuming from the last event id, so no event is
shown twice or missed) are the Python client's (:meth:`service.client.Client.events`); this
module only prints: one line per event (one JSON object with ``--json``), and on stderr each
reconnection.
"""

from __future__ import annotations

import json
from typing import Annotated

import typer

from service.cli._common import console, err_console
from service.cli._terminal import outside
from service.client import Client

__all__ = ["AfterOpt", "FollowOpt", "follow_inbox"]

FollowOpt = Annotated[
    bool,
    typer.Option(
        "--follow",
        help="Print each arrival, revocation or deletion as it comes (from now, or after "
        "--after), reconnecting after a dropped connection; Ctrl-C ends it",
    ),
]
AfterOpt = Annotated[
    str | None,
    typer.Option(help="With --follow: start after this event id (0: every arrival so far)"),
]


def follow_inbox(client: Client, *, after: str | None, as_json: bool) -> None:
    """Print each event as one line (one JSON object with ``--json``) until Ctrl-C."""
    err_console.print(f"following arrivals at {outside(client.url)} (Ctrl-C to stop)")
    try:
        for event in client.events(
            after=after, on_reconnect=lambda text: err_console.print(outside(text))
        ):
            if as_json:
                typer.echo(json.dumps({"event": event.name, "id": event.id, "artifact": event.raw}))
                continue
            art = event.artifact
            console.print(
                f"{outside(event.id)}  {outside(event.name)}  {outside(art.id)} from "
                f"{outside(art.origin)} ({outside(art.tlp)}, {outside(art.size)} bytes): "
                f"{outside(art.title)}"
            )
    except KeyboardInterrupt:
        err_console.print("stopped")
