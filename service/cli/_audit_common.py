"""What the ``entente audit`` commands share: the ``--url``/``--token`` options, the HTTP client
for a node's audit routes, and opening a home's database offline."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import httpx
import sqlalchemy as sa
import typer

from service.cli._common import settings_for
from service.db import Database, open_database
from service.errors import UsageError

__all__ = ["OPERATOR", "TokenOpt", "UrlOpt", "http_client", "open_offline"]

OPERATOR = "admin:cli"  # the actor of what the CLI records offline

UrlOpt = Annotated[
    str | None,
    typer.Option("--url", help="The node's base URL (read over HTTP)", show_default=False),
]
TokenOpt = Annotated[
    str | None,
    typer.Option(
        "--token",
        envvar="ENTENTE_TOKEN",
        help="An auditor (or admin) bearer token [env: ENTENTE_TOKEN]",
        show_default=False,
    ),
]


def http_client(url: str, token: str | None) -> httpx.Client:
    if not url.startswith(("http://", "https://")):
        raise UsageError("--url must start with http:// or https://")
    if not token:
        raise UsageError("reading the audit log needs an auditor token: --token or ENTENTE_TOKEN")
    return httpx.Client(
        base_url=url.rstrip("/"),
        headers={"Authorization": f"Bearer {token}"},
        timeout=httpx.Timeout(60.0, connect=10.0),
    )


def open_offline(home: Path | None, database_url: str | None) -> tuple[Path, Database]:
    settings = settings_for(home, database_url)
    path = settings.require_home()
    db = open_database(settings.resolved_database_url(), migrate=False)
    if not sa.inspect(db.engine).has_table("audit_checkpoints"):
        db.dispose()
        raise UsageError("this database has no audit log tables; run `entente db upgrade`")
    return path, db
