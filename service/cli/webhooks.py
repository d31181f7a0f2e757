"""``entente webhook add|list|remove``: local receivers notified of arrivals, over HTTP.

Each talks to a node's ``/v1/admin/webhooks`` API (``--url`` or ENTENTE_URL, an admin token from
``--token`` or ENTENTE_TOKEN), like ``entente approvals``. The node decides whether a receiver's
URL is local enough (loopback, or a host in ENTENTE_WEBHOOK_ALLOWED_HOSTS, never a partner's).
"""

from __future__ import annotations

import json
from typing import Annotated

import typer

from service.cli._common import JsonOpt, console, err_console
from service.cli._http import http_client as _client
from service.cli._http import raise_for as _raise_for
from service.cli._http import send as _send
from service.cli._terminal import SafeTable, outside, plain_line
from service.cli.client import TokenOpt, UrlOpt

app = typer.Typer(
    help="Webhooks: local receivers notified of each arrival, signed (Standard Webhooks).",
    no_args_is_help=True,
)


@app.command()
def add(
    target: Annotated[
        str,
        typer.Argument(metavar="URL", help="The receiver: http(s) on loopback or an allowed host"),
    ],
    url: UrlOpt,
    token: TokenOpt,
    event: Annotated[
        list[str] | None,
        typer.Option(
            "--event",
            help="An event kind to send (arrived, revoked, deleted); repeat it; default: all",
        ),
    ] = None,
    after: Annotated[
        int | None,
        typer.Option(min=0, help="Start after this event id (0: every event); default: now"),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Subscribe URL to notice of arrivals; prints its id and its signing secret, once."""
    body: dict[str, object] = {"url": target}
    if event:
        body["events"] = event
    if after is not None:
        body["after"] = after
    with _client(url, token) as client:
        response = _send(lambda: client.post("/v1/admin/webhooks", json=body))
    _raise_for(response)
    item = response.json()
    if as_json:
        typer.echo(json.dumps(item))
        return
    err_console.print(
        f"Created webhook {outside(item['id'])} to {outside(item['url'])} "
        f"({outside(', '.join(item['events']))}). Its signing secret is shown only once: "
        "store it with the receiver, which verifies each delivery with it."
    )
    typer.echo(f"id      {plain_line(item['id'])}")
    typer.echo(f"secret  {plain_line(item['secret'])}")


@app.command("list")
def list_(url: UrlOpt, token: TokenOpt, as_json: JsonOpt = False) -> None:
    """List the webhooks, their state and how far each was delivered (never their secrets)."""
    with _client(url, token) as client:
        response = _send(lambda: client.get("/v1/admin/webhooks"))
    _raise_for(response)
    items = response.json()
    if as_json:
        typer.echo(json.dumps(items))
        return
    if not items:
        console.print("No webhooks.")
        return
    table = SafeTable("id", "url", "events", "state", "delivered up to", "failures", "last error")
    for item in items:
        table.add_row(
            str(item["id"]),
            str(item["url"]),
            ", ".join(str(e) for e in item["events"]),
            str(item["state"]),
            str(item["cursor"]),
            str(item["failures"]),
            str(item.get("last_error") or ""),
        )
    console.print(table)


@app.command()
def remove(
    webhook_id: Annotated[str, typer.Argument(metavar="ID", help="The webhook's id (whk_…)")],
    url: UrlOpt,
    token: TokenOpt,
) -> None:
    """Delete a webhook: no more deliveries to it (audited)."""
    with _client(url, token) as client:
        response = _send(lambda: client.delete(f"/v1/admin/webhooks/{webhook_id}"))
    _raise_for(response)
    console.print(f"removed {outside(webhook_id)}")
