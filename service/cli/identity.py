"""``entente identity show`` and ``export``: this node's public identity, from its home.

Reads ``node.json`` and the signed descriptor only: no key is unlocked and the database is not
opened, so the command imports neither.
"""

from __future__ import annotations

import json

import typer

from crypto.keys import format_fingerprint
from service.cli._common import HomeOpt, JsonOpt, console, settings_for
from service.home import open_home

__all__ = ["app", "pq_line"]

app = typer.Typer(help="Show or export this node's identity.", no_args_is_help=True)


def pq_line(pq_recipient: str | None) -> str:
    if pq_recipient is None:
        return "none (classic only: shares are sealed to X25519)"
    return f"{pq_recipient[:24]}… (hybrid ML-KEM-768 + X25519)"


@app.command("show")
def identity_show(home: HomeOpt = None, as_json: JsonOpt = False) -> None:
    """Print the node id, fingerprint and age recipient."""
    h = open_home(settings_for(home).require_home())
    facts = {
        "node_id": h.node_id,
        "name": h.name,
        "url": h.url,
        "fingerprint": h.fingerprint,
        "age_recipient": h.age_recipient,
        "pq_recipient": h.pq_recipient,
        "keys_encrypted": h.protected,
    }
    if as_json:
        typer.echo(json.dumps(facts))
        return
    console.print(f"node id       {h.node_id}  ({h.name})")
    console.print(f"url           {h.url}")
    console.print(f"fingerprint   {format_fingerprint(h.fingerprint)}")
    console.print(f"age recipient {h.age_recipient}")
    console.print(f"post-quantum  {pq_line(h.pq_recipient)}")
    console.print(f"keys          {'encrypted (age scrypt)' if h.protected else 'UNENCRYPTED'}")


@app.command("fingerprint")
def identity_fingerprint(home: HomeOpt = None) -> None:
    """Print the node's fingerprint alone (to read aloud, or for a script), grouped by four."""
    h = open_home(settings_for(home).require_home())
    typer.echo(format_fingerprint(h.fingerprint))


@app.command("export")
def identity_export(home: HomeOpt = None) -> None:
    """Write the signed node descriptor (DSSE JSON) to stdout."""
    h = open_home(settings_for(home).require_home())
    typer.echo(h.descriptor_envelope().to_bytes().decode("utf-8"), nl=False)
