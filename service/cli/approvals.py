"""``entente approvals list|approve|reject``: two-person control, over HTTP with a token.

Each talks to a node's ``/v1/approvals`` API (``--url`` or ENTENTE_URL, token from ``--token``
or ENTENTE_TOKEN), like ``entente share``. The node decides who may approve: a second person,
with another token and another name, whose role may approve the action.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from service.cli._common import JsonOpt, console
from service.cli._http import http_client as _client
from service.cli._http import raise_for as _raise_for
from service.cli._http import send as _send
from service.cli._terminal import SafeTable, outside
from service.cli.client import TokenOpt, UrlOpt

app = typer.Typer(
    help="Actions waiting for a second approver (two-person control).", no_args_is_help=True
)

IdArg = Annotated[str, typer.Argument(help="The pending action's id (apr_…)")]


def _what(item: dict[str, Any]) -> str:
    summary = item.get("summary") or {}
    if item.get("action") == "share":
        partners = ", ".join(str(p) for p in summary.get("partners", []))
        what = f"share {summary.get('title')!s} ({summary.get('tlp')!s}) with {partners}"
        onward = ", ".join(str(p) for p in summary.get("onward_approved") or [])
        return what + (f"; onward sharing approved to {onward}" if onward else "")
    if item.get("action") == "share.onward":
        partners = ", ".join(str(p) for p in summary.get("partners", []))
        return f"pass {summary.get('upstream')!s} ({summary.get('tlp')!s}) on to {partners}"
    if item.get("action") == "policy.reload":
        return f"policy reload to set {str(summary.get('sha256', ''))[:16]}…"
    return str(item.get("action"))


@app.command("list")
def list_(
    url: UrlOpt,
    token: TokenOpt,
    state: Annotated[
        str, typer.Option(help="pending, approved, rejected, expired or all")
    ] = "pending",
    as_json: JsonOpt = False,
) -> None:
    """List actions waiting for a second approver (or decided ones, with --state)."""
    with _client(url, token) as client:
        response = _send(lambda: client.get("/v1/approvals", params={"state": state}))
    _raise_for(response)
    items = response.json()
    if as_json:
        typer.echo(json.dumps(items))
        return
    if not items:
        console.print(f"No {outside(state)} actions.")
        return
    table = SafeTable("id", "state", "action", "requested by", "expires", "decided by")
    for item in items:
        table.add_row(
            str(item["id"]),
            str(item["state"]),
            _what(item),
            str(item["requested_by"]),
            str(item["expires_at"])[:19],
            str(item.get("decided_by") or ""),
        )
    console.print(table)


@app.command()
def show(approval_id: IdArg, url: UrlOpt, token: TokenOpt, as_json: JsonOpt = False) -> None:
    """Show everything a pending action would make binding, before approving it."""
    with _client(url, token) as client:
        response = _send(lambda: client.get(f"/v1/approvals/{approval_id}"))
    _raise_for(response)
    item = response.json()
    if as_json:
        typer.echo(json.dumps(item))
        return
    table = SafeTable("field", "value")
    for key in ("id", "action", "state", "requested_by", "requested_at", "expires_at"):
        table.add_row(key, str(item.get(key)))
    for key, value in (item.get("summary") or {}).items():
        shown = ", ".join(str(v) for v in value) if isinstance(value, list) else str(value)
        table.add_row(str(key), shown)
    console.print(table)


@app.command()
def approve(approval_id: IdArg, url: UrlOpt, token: TokenOpt, as_json: JsonOpt = False) -> None:
    """Approve a pending action as its second person: the node carries it out (audited)."""
    with _client(url, token) as client:
        response = _send(lambda: client.post(f"/v1/approvals/{approval_id}/approve"))
    _raise_for(response)
    item = response.json()
    if as_json:
        typer.echo(json.dumps(item))
        return
    console.print(f"approved {outside(item['id'])}: {outside(_what(item))}")
    if item.get("action") == "share":
        console.print(f"  shared as {outside(item['artifact_id'])}; deliveries are queued")


@app.command()
def reject(
    approval_id: IdArg,
    url: UrlOpt,
    token: TokenOpt,
    reason: Annotated[str, typer.Option(help="Why (kept in the audit log)")] = "",
) -> None:
    """Reject a pending action: it is never carried out (a share's ciphertext is deleted)."""
    with _client(url, token) as client:
        response = _send(
            lambda: client.post(f"/v1/approvals/{approval_id}/reject", params={"reason": reason})
        )
    _raise_for(response)
    console.print(f"rejected {outside(approval_id)}")
