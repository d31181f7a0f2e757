"""``entente sync status`` and ``entente share-onward``: federation state and onward sharing.

``sync status`` shows, per partner, deliveries pending, delivered and failing (with the last
error), the last successful contact and the error of the last pull of its feed: from a running
node over HTTP (``--url`` and a token from ``--token`` or ENTENTE_TOKEN; any role but reader), or
straight from a node's database with ``--home`` (no keys needed, so it works while the node is
stopped).

``share-onward`` asks a node to pass an artifact it received on to third nodes; the node checks
the origin's onward terms and its own MOU policies, and refuses with the rule and clause.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Annotated, Any

import httpx
import typer
from rich.table import Table

from service.cli._common import (
    DbUrlOpt,
    HomeOpt,
    JsonOpt,
    console,
    open_db,
    settings_for,
)
from service.cli._terminal import outside
from service.errors import RemoteError, UsageError

app = typer.Typer(help="Federation sync state.", no_args_is_help=True)

UrlOpt = Annotated[
    str | None,
    typer.Option("--url", envvar="ENTENTE_URL", help="A running node's base URL"),
]
TokenOpt = Annotated[
    str | None,
    typer.Option(
        "--token", envvar="ENTENTE_TOKEN", help="Bearer token",
        show_default=False,
    ),
]  # fmt: skip


def _request(method: str, url: str, path: str, token: str | None, **kwargs: Any) -> Any:
    if not url.startswith(("http://", "https://")):
        raise UsageError("--url must start with http:// or https://")
    if not token:
        raise UsageError("a token is needed with --url: pass --token or set ENTENTE_TOKEN")
    try:
        response = httpx.request(
            method,
            url.rstrip("/") + path,
            headers={"Authorization": f"Bearer {token}"},
            timeout=httpx.Timeout(60.0, connect=10.0),
            **kwargs,
        )
    except httpx.HTTPError as exc:
        raise RemoteError(f"cannot reach the node: {str(exc) or type(exc).__name__}") from None
    if response.status_code >= 400:
        try:
            problem = response.json()
        except ValueError:
            problem = {}
        detail = problem.get("detail") if isinstance(problem, dict) else None
        extra = ""
        if isinstance(problem, dict) and problem.get("clause"):
            extra = f" [rule {problem.get('rule')}, {problem.get('clause')}]"
        raise RemoteError(f"{response.status_code}: {detail or response.reason_phrase}{extra}")
    return response.json()


def _ago(value: str | None) -> str:
    if not value:
        return "never"
    when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    seconds = int((datetime.now(UTC) - when).total_seconds())
    if seconds < 120:
        return f"{max(seconds, 0)} s ago"
    if seconds < 7200:
        return f"{seconds // 60} min ago"
    if seconds < 172800:
        return f"{seconds // 3600} h ago"
    return f"{seconds // 86400} days ago"


@app.command("status")
def status(
    url: UrlOpt = None,
    token: TokenOpt = None,
    home: HomeOpt = None,
    database_url: DbUrlOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Per partner: deliveries pending, delivered, failing (last error), last contact."""
    if url:
        rows: list[dict[str, Any]] = _request("GET", url, "/v1/sync", token)
    else:
        from service.federation.status import sync_state

        settings = settings_for(home, database_url)
        if settings.home is None:
            raise UsageError("pass --url (a running node) or --home (its folder)")
        _home, db = open_db(settings, migrate=False)
        try:
            with db.session() as session:
                rows = [r.model_dump(mode="json") for r in sync_state(session)]
        finally:
            db.dispose()
    if as_json:
        typer.echo(json.dumps(rows))
        return
    if not rows:
        console.print("No partners pinned yet.")
        return
    table = Table(
        "partner", "pending", "delivered", "failing", "last contact", "last error", "pull error"
    )
    for r in rows:
        failing = str(r["failing"])
        table.add_row(
            outside(r["partner"]),
            str(r["pending"]),
            str(r["delivered"]),
            f"[red]{failing}[/]" if r["failing"] else failing,
            _ago(r.get("last_contact")),
            outside((r.get("last_error") or "")[:120]),
            outside((r.get("pull_error") or "")[:120]),
        )
    console.print(table)


def share_onward(
    artifact_id: Annotated[str, typer.Argument(help="The id of an artifact you received")],
    to: Annotated[list[str], typer.Option("--to", help="Third node to pass it on to (repeat)")],
    url: Annotated[str, typer.Option("--url", envvar="ENTENTE_URL", help="Your node")],
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Pass a received artifact on to third nodes, where the origin's terms and your MOU allow."""
    art = _request("POST", url, f"/v1/artifacts/{artifact_id}/share", token, json={"partners": to})
    if as_json:
        typer.echo(json.dumps(art))
        return
    if art.get("state") == "pending":  # two-person control (ENTENTE_TWO_PERSON_TLP)
        console.print(
            f"not passed on yet: waits for a second approver until {art['expires_at'][:19]}; "
            f"they run: entente approvals approve {art['id']}"
        )
        return
    console.print(
        f"passed {artifact_id} on to {', '.join(to)} as {art['id']} ({art['tlp']}, "
        f"{art['size']} bytes); the chain back to the origin travels in its manifest"
    )
