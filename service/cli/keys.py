"""``entente keys``: rotate the node's keys and tell every partner.

``keys rotate`` makes a new Ed25519 signing key and age identity, signs the new descriptor with
the old key and the new one, moves the old keys to ``keys/retired/`` (they keep verifying and
opening what was shared before), records ``key.rotated`` and queues the descriptor for every
partner, then pushes it at once (signed with the old key, which partners still pin) and reports
each partner. Partners it could not reach get it from ``entente serve``'s delivery worker, with
retries. Run it with the node stopped, then start the node: it signs with the new key from then
on. ``keys push`` pushes whatever descriptor pushes are still pending.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

import typer
from rich.table import Table

from crypto.keys import format_fingerprint
from service.cli._common import DbUrlOpt, HomeOpt, JsonOpt, console, err_console, settings_for
from service.cli._terminal import outside

app = typer.Typer(help="Rotate the node's keys.", no_args_is_help=True)

OPERATOR = "admin:cli"


def _report(results: list[object], as_json: bool, extra: dict[str, object]) -> None:
    from service.federation.rotation import PushResult

    rows = [r for r in results if isinstance(r, PushResult)]
    if as_json:
        data = {**extra, "partners": [{"partner": r.partner, "state": r.state,
                                       "error": r.error} for r in rows]}  # fmt: skip
        typer.echo(json.dumps(data))
        return
    if not rows:
        console.print("No partners to tell.")
        return
    table = Table("partner", "new descriptor", "detail")
    for r in rows:
        state = {"delivered": "[green]accepted[/]", "pending": "[yellow]will retry[/]"}.get(
            r.state, f"[red]{r.state}[/]"
        )
        table.add_row(outside(r.partner), state, outside((r.error or "")[:120]))
    console.print(table)
    if any(r.state == "pending" for r in rows):
        err_console.print(
            "Partners not reached get the descriptor from `entente serve`, with retries."
        )


@app.command("rotate")
def rotate(
    home: HomeOpt = None,
    database_url: DbUrlOpt = None,
    push: bool = typer.Option(True, "--push/--no-push", help="Tell partners now"),
    post_quantum: bool | None = typer.Option(
        None,
        "--post-quantum/--classic-only",
        help="Include a hybrid ML-KEM age identity in the new keys (default: as before)",
    ),
    as_json: JsonOpt = False,
) -> None:
    """New signing key and age identities; the old ones are retired and partners are told."""
    from service.federation.rotation import push_rotation, queue_rotation
    from service.home import open_home, rotate_keys
    from service.node import load_node

    settings = settings_for(home, database_url)
    current = open_home(settings.require_home())
    now = datetime.now(UTC)
    rotation = rotate_keys(current, settings, now=now, post_quantum=post_quantum)
    node = load_node(settings, migrate=True)
    try:
        with node.db.session() as session:
            retired = [k.public for k in node.keys.retired_signing]
            queue_rotation(
                session,
                envelope=rotation.descriptor,
                actor=OPERATOR,
                now=now,
                previous_key=next(k for k in retired if k.fingerprint == rotation.previous),
                previous_descriptor=rotation.previous_descriptor,
            )
        new = rotation.home.fingerprint
        if not as_json:
            console.print(f"Rotated the keys of [bold]{current.node_id}[/]")
            console.print(f"  new fingerprint {format_fingerprint(new)}")
            console.print(f"  retired         {format_fingerprint(rotation.previous)}")
            pq = rotation.home.pq_recipient
            console.print(f"  post-quantum    {'hybrid ML-KEM-768 + X25519' if pq else 'none'}")
        results = push_rotation(node, new) if push else []
    finally:
        node.db.dispose()
    _report(
        list(results),
        as_json,
        {
            "node_id": current.node_id,
            "fingerprint": new,
            "previous": rotation.previous,
            "pq_recipient": rotation.home.pq_recipient,
        },
    )
    if not as_json:
        console.print("Restart `entente serve` if it is running: it signs with the new key then.")


@app.command("push")
def push_pending(
    home: HomeOpt = None, database_url: DbUrlOpt = None, as_json: JsonOpt = False
) -> None:
    """Push the current descriptor's pending pushes to partners now and report each."""
    from service.federation.rotation import push_rotation
    from service.node import load_node

    node = load_node(settings_for(home, database_url), migrate=True)
    try:
        results = push_rotation(node, node.home.fingerprint)
    finally:
        node.db.dispose()
    _report(list(results), as_json, {"node_id": node.node_id, "fingerprint": node.home.fingerprint})
