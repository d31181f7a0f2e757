"""The ``entente`` command line.

One console script; each command or command group lives in its own module, listed with its help
line in :mod:`service.cli._commands` and imported only when it runs (so ``entente --help`` and
``entente seal`` load neither the web stack nor the ORM nor the policy loader). Every
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
from service.cli._commands import TYPER_SETTINGS, LazyGroup
from service.errors import EntenteError, UsageError

app = typer.Typer(
    name="entente",
    help="Entente: signed, encrypted, policy-checked sharing of research between institutes.",
    cls=LazyGroup,  # commands from service.cli._commands, each imported when it runs
    **{**TYPER_SETTINGS, "add_completion": True},  # --install-completion for bash, zsh, fish
)


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            typer.echo(f"entente {version('entente')}")
        except PackageNotFoundError:  # run from a checkout that was never installed
            typer.echo("entente (not installed: no version)")
        raise typer.Exit()


@app.callback()
def _root(
    show_version: bool = typer.Option(
        False, "--version", help="Print the version and exit.", callback=_version, is_eager=True
    ),
) -> None:
    """Entente: signed, encrypted, policy-checked sharing of research between institutes."""


def _is_policy_error(exc: BaseException) -> bool:
    """Whether ``exc`` is a :class:`policies.errors.PolicyError`, without importing ``policies``
    (its package loads the policy loader and JSON Schema): a command that raises one has
    imported it already."""
    errors = sys.modules.get("policies.errors")
    return errors is not None and isinstance(exc, errors.PolicyError)


def _say(message: object) -> None:
    """``entente: message`` on stderr, as one printable line (messages may quote outside data)."""
    from service.cli._terminal import plain_line

    typer.echo(f"entente: {plain_line(message)}", err=True)


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print ``entente: message`` on stderr and return the Exit to raise."""
    _say(message)
    return typer.Exit(code)


def main() -> None:
    try:
        app()
    except UsageError as exc:
        _say(exc.message)
        sys.exit(2)
    except EntenteError as exc:
        _say(exc.message)
        sys.exit(1)
    except CryptoError as exc:
        _say(exc)
        sys.exit(1)
    except OSError as exc:  # a file the command was pointed at: unreadable, missing, disk full
        where = f" ({exc.filename})" if isinstance(exc.filename, str) else ""
        _say(f"{exc.strerror or type(exc).__name__}{where}")
        sys.exit(1)
    except Exception as exc:
        if not _is_policy_error(exc):
            raise
        _say(exc)
        sys.exit(1)
    except KeyboardInterrupt:
        _say("interrupted")
        sys.exit(130)
