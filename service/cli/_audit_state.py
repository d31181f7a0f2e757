"""The auditor's memory: the last checkpoint verified for each log (``audit verify``'s state).

``entente audit verify`` keeps, per log origin, the checkpoint it verified last and the node key
it was signed with, in ``$XDG_CONFIG_HOME/entente/audit-state.json`` (default
``~/.config/entente/audit-state.json``; ``--state`` to use another file). The next verification
must be consistent with it: a log rolled back or forked since is caught. ``entente audit forget``
drops one log's entry (a node re-created from scratch, a test network taken down).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any

import typer

from service.audit.entries import log_origin
from service.cli._common import console
from service.cli._terminal import outside
from service.errors import UsageError
from service.files import write_atomically

__all__ = ["STATE_VERSION", "default_state_path", "forget", "load_state", "save_state"]

STATE_VERSION = 1


def default_state_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "entente" / "audit-state.json"


def load_state(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {"version": STATE_VERSION, "logs": {}}
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read the audit state file {path}: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("logs"), dict):
        raise UsageError(f"{path} is not an entente audit state file")
    return data


def save_state(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_atomically(path, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode())


def forget(
    log: Annotated[str, typer.Argument(help="The log's origin, or its node id (uk-aisi)")],
    state: Annotated[
        Path | None,
        typer.Option(
            "--state", help="The state file \\[default: ~/.config/entente/audit-state.json]"
        ),
    ] = None,
) -> None:
    """Forget the checkpoint remembered for one log (the next verify starts afresh)."""
    path = state or default_state_path()
    data = load_state(path)
    logs: dict[str, Any] = data["logs"]
    origin = log if log in logs else log_origin(log)
    if origin not in logs:
        raise UsageError(f"no remembered checkpoint for {log} in {path}")
    del logs[origin]
    save_state(path, data)
    console.print(f"forgot the checkpoint remembered for {outside(origin)} in {outside(str(path))}")
