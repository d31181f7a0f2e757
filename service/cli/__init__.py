"""The ``entente`` command line.

One console script; each command group lives in its own module and is registered here. Every
command exits 0 on success and non-zero with one line on stderr otherwise: domain errors
(:class:`service.errors.EntenteError`, :class:`crypto.errors.CryptoError`,
:class:`policies.errors.PolicyError`) and file-system errors (:class:`OSError`) are caught in
:func:`main` and never shown as tracebacks; every message passes
:func:`service.cli._terminal.plain_line` (it may quote outside data).
"""

from __future__ import annotations

import sys

import typer

from crypto.errors import CryptoError
from policies.errors import PolicyError
from service.errors import EntenteError, UsageError

app = typer.Typer(
    name="entente",
    help="Entente: signed, encrypted, policy-checked sharing of research between institutes.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.callback()
def _root() -> None:
    """Entente: signed, encrypted, policy-checked sharing of research between institutes."""


def _register() -> None:
    """Register the commands (only the one being run, when it is named; see ``_commands``)."""
    from service.cli._commands import register

    register(app, sys.argv)


def _say(message: object) -> None:
    """``entente: message`` on stderr, as one printable line (messages may quote outside data)."""
    from service.cli._terminal import plain_line

    typer.echo(f"entente: {plain_line(message)}", err=True)


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print ``entente: message`` on stderr and return the Exit to raise."""
    _say(message)
    return typer.Exit(code)


def main() -> None:
    _register()
    try:
        app()
    except UsageError as exc:
        _say(exc.message)
        sys.exit(2)
    except EntenteError as exc:
        _say(exc.message)
        sys.exit(1)
    except (CryptoError, PolicyError) as exc:
        _say(exc)
        sys.exit(1)
    except OSError as exc:  # a file the command was pointed at: unreadable, missing, disk full
        where = f" ({exc.filename})" if isinstance(exc.filename, str) else ""
        _say(f"{exc.strerror or type(exc).__name__}{where}")
        sys.exit(1)
    except KeyboardInterrupt:
        _say("interrupted")
        sys.exit(130)
