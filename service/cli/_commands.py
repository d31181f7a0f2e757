"""The command table: which module provides each top-level command or command group.

Only the module of the command being run is imported (so ``entente partner list`` does not load
the web stack); ``entente --help`` and anything unrecognised load them all.
"""

from __future__ import annotations

import importlib

import typer

# name -> (module, attribute, "command" | "group")
COMMANDS: dict[str, tuple[str, str, str]] = {
    "init": ("service.cli.node", "init", "command"),
    "serve": ("service.cli.node", "serve", "command"),
    "demo": ("service.cli.node", "demo", "command"),
    "identity": ("service.cli.node", "identity_app", "group"),
    "db": ("service.cli.node", "db_app", "group"),
    "partner": ("service.cli.partners", "app", "group"),
    "token": ("service.cli.tokens", "app", "group"),
    "policy": ("service.cli.policy", "app", "group"),
    "audit": ("service.cli.audit", "app", "group"),
    "sync": ("service.cli.sync", "app", "group"),
    "keys": ("service.cli.keys", "app", "group"),
    "seal": ("service.cli.files", "seal", "command"),
    "verify": ("service.cli.files", "verify_", "command"),
    "open": ("service.cli.files", "open_", "command"),
    "share": ("service.cli.client", "share", "command"),
    "share-onward": ("service.cli.sync", "share_onward", "command"),
    "inbox": ("service.cli.client", "inbox", "command"),
    "get": ("service.cli.client", "get", "command"),
    "revoke": ("service.cli.client", "revoke", "command"),
    "approvals": ("service.cli.approvals", "app", "group"),
    "agreement": ("service.cli.agreement", "app", "group"),
    "roster": ("service.cli.roster", "app", "group"),
}


def register(app: typer.Typer, argv: list[str]) -> None:
    """Register on ``app`` the command named in ``argv`` (or every command when none is
    recognised). The root app is passed in, so that this module does not import its package."""
    wanted = [argv[1]] if len(argv) > 1 and argv[1] in COMMANDS else list(COMMANDS)
    for name in wanted:
        module, attribute, kind = COMMANDS[name]
        target = getattr(importlib.import_module(module), attribute)
        if kind == "group":
            app.add_typer(target, name=name)
        else:
            app.command(name)(target)
