"""Options and helpers shared by the CLI command modules.

Light on purpose: every command imports it, ``entente seal`` included, so the database layer
(SQLAlchemy, the ORM, Alembic) is imported by :func:`open_db` when a command opens the
database, not here.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from service.cli._terminal import TerminalConsole
from service.errors import UsageError
from service.home import Home, open_home
from service.settings import Settings

if TYPE_CHECKING:
    from service.db import Database

__all__ = [
    "DbUrlOpt",
    "HomeOpt",
    "JsonOpt",
    "console",
    "err_console",
    "open_db",
    "read_input",
    "settings_for",
]

HomeOpt = Annotated[
    Path | None,
    typer.Option("--home", help="The node's home folder \\[env: ENTENTE_HOME]", show_default=False),
]
DbUrlOpt = Annotated[
    str | None,
    typer.Option(
        "--database-url",
        help="Database URL (default: SQLite in the home) \\[env: ENTENTE_DATABASE_URL]",
        show_default=False,
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts")]

# Every string these print passes service.cli._terminal.printable (see there for outside data).
console = TerminalConsole(highlight=False, soft_wrap=True)
err_console = TerminalConsole(stderr=True, highlight=False)


def read_input(path: Path) -> bytes:
    """The bytes of a file a command was given, or a one-line usage error naming it."""
    try:
        return path.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None


def settings_for(home: Path | None, database_url: str | None = None, **extra: object) -> Settings:
    return Settings.load(home=home, database_url=database_url, **extra)


def open_db(settings: Settings, *, migrate: bool = True) -> tuple[Home, Database]:
    """Open the home's public facts and its database (migrated). No keys are unlocked."""
    from service.db import open_database  # the database layer: most of a command's start-up

    home = open_home(settings.require_home())
    return home, open_database(settings.resolved_database_url(), migrate=migrate)
