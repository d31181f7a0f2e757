"""``entente partner``: pin, list and remove partner nodes."""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer

from crypto.keys import format_fingerprint
from service import partners as partner_store
from service.cli._common import DbUrlOpt, HomeOpt, JsonOpt, console, open_db, settings_for
from service.cli._terminal import SafeTable, outside
from service.errors import UsageError
from service.settings import Settings

app = typer.Typer(help="Pin, list and remove partner nodes.", no_args_is_help=True)

OPERATOR = "admin:cli"


def _refuse_if_two_person(settings: Settings) -> None:
    if settings.two_person_partner_changes:
        raise UsageError(
            "this node requires two-person control for partner changes "
            "(ENTENTE_TWO_PERSON_PARTNER_CHANGES): ask the running node "
            "(POST or DELETE /v1/admin/partners with an admin token) and a second admin "
            "approves it with `entente approvals approve`"
        )


@app.command("add")
def add(
    file: Annotated[Path, typer.Argument(help="The partner's descriptor (or - for stdin)")],
    fingerprint: Annotated[
        str, typer.Option("--fingerprint", help="The fingerprint the partner told you out of band")
    ],
    home: HomeOpt = None,
    database_url: DbUrlOpt = None,
    replace: Annotated[bool, typer.Option("--replace", help="Re-pin an existing node id")] = False,
) -> None:
    """Pin a partner: verify its descriptor and that its key has FINGERPRINT."""
    try:
        raw = sys.stdin.buffer.read() if str(file) == "-" else file.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read {file}: {exc.strerror}") from None
    settings = settings_for(home, database_url)
    _refuse_if_two_person(settings)
    h, db = open_db(settings)
    with db.session() as session:
        row = partner_store.add_partner(
            session,
            descriptor_bytes=raw,
            fingerprint=fingerprint,
            own_node_id=h.node_id,
            now=datetime.now(UTC),
            actor=OPERATOR,
            replace=replace,
        )
        console.print(
            f"Pinned partner [bold]{outside(row.node_id)}[/] ({outside(row.name)}) "
            f"at {outside(row.url)}"
        )
        console.print(f"  fingerprint {format_fingerprint(row.fingerprint)}")
    db.dispose()


@app.command("list")
def list_(home: HomeOpt = None, database_url: DbUrlOpt = None, as_json: JsonOpt = False) -> None:
    """List pinned partners."""
    import json

    _h, db = open_db(settings_for(home, database_url))
    with db.session() as session:
        rows = partner_store.list_partners(session)
    db.dispose()
    if as_json:
        typer.echo(
            json.dumps(
                [
                    {
                        "node_id": r.node_id,
                        "name": r.name,
                        "url": r.url,
                        "fingerprint": r.fingerprint,
                        "descriptor_expires": r.descriptor_expires.isoformat(),
                    }
                    for r in rows
                ]
            )
        )
        return
    if not rows:
        console.print("No partners pinned yet. Use `entente partner add FILE --fingerprint FP`.")
        return
    table = SafeTable("node id", "name", "url", "fingerprint", "descriptor expires")
    for r in rows:
        table.add_row(
            r.node_id,
            r.name,
            r.url,
            r.fingerprint,
            r.descriptor_expires.date().isoformat(),
        )
    console.print(table)


@app.command("remove")
def remove(
    node_id: Annotated[str, typer.Argument(help="The partner's node id")],
    home: HomeOpt = None,
    database_url: DbUrlOpt = None,
) -> None:
    """Unpin a partner. Artifacts already exchanged stay, with their audit history."""
    settings = settings_for(home, database_url)
    _refuse_if_two_person(settings)
    _h, db = open_db(settings)
    with db.session() as session:
        partner_store.remove_partner(
            session, node_id=node_id, now=datetime.now(UTC), actor=OPERATOR
        )
    db.dispose()
    console.print(f"Removed partner {outside(node_id)}")
