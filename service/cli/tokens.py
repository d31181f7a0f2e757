"""``entente token``: create, list and revoke bearer tokens for local users."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Annotated

import typer

from service import tokens as token_store
from service.cli._common import (
    DbUrlOpt,
    HomeOpt,
    JsonOpt,
    console,
    err_console,
    open_db,
    settings_for,
)
from service.cli._terminal import SafeTable

app = typer.Typer(help="Create, list and revoke bearer tokens.", no_args_is_help=True)

OPERATOR = "admin:cli"


@app.command("create")
def create(
    role: Annotated[
        str, typer.Option("--role", help="publisher, reader, auditor, admin or metrics")
    ],
    name: Annotated[str, typer.Option("--name", help="Who or what holds the token")],
    home: HomeOpt = None,
    database_url: DbUrlOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Create a token and print it once (only its hash is stored)."""
    parsed = token_store.parse_role(role)
    _h, db = open_db(settings_for(home, database_url))
    with db.session() as session:
        row, secret = token_store.create_token(
            session, role=parsed, name=name, now=datetime.now(UTC), actor=OPERATOR
        )
    db.dispose()
    if as_json:
        typer.echo(json.dumps({"id": row.id, "role": row.role, "name": row.name, "token": secret}))
        return
    err_console.print(f"Created {row.role} token {row.id} for {row.name!r}. It is shown only once:")
    typer.echo(secret)


@app.command("list")
def list_(home: HomeOpt = None, database_url: DbUrlOpt = None, as_json: JsonOpt = False) -> None:
    """List tokens (never their secrets)."""
    _h, db = open_db(settings_for(home, database_url))
    with db.session() as session:
        rows = token_store.list_tokens(session)
    db.dispose()
    if as_json:
        typer.echo(
            json.dumps(
                [
                    {
                        "id": r.id,
                        "name": r.name,
                        "role": r.role,
                        "created_at": r.created_at.isoformat(),
                        "revoked_at": r.revoked_at.isoformat() if r.revoked_at else None,
                    }
                    for r in rows
                ]
            )
        )
        return
    table = SafeTable("id", "role", "name", "created", "state")
    for r in rows:
        state = f"revoked {r.revoked_at:%Y-%m-%d %H:%M}" if r.revoked_at else "active"
        table.add_row(r.id, r.role, r.name, f"{r.created_at:%Y-%m-%d %H:%M}", state)
    console.print(table)


@app.command("revoke")
def revoke(
    token_id: Annotated[str, typer.Argument(help="The token's id (tok_…)")],
    home: HomeOpt = None,
    database_url: DbUrlOpt = None,
) -> None:
    """Revoke a token; it stops working at once."""
    _h, db = open_db(settings_for(home, database_url))
    with db.session() as session:
        token_store.revoke_token(session, token_id=token_id, now=datetime.now(UTC), actor=OPERATOR)
    db.dispose()
    console.print(f"Revoked {token_id}")
