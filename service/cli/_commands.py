"""The command table: which module provides each top-level command or command group, and its
one-line help.

The root group (:class:`LazyGroup`) lists the commands from this table and imports a command's
module only when that command runs or shows its own help: ``entente --help`` imports none of
them (it prints the help below), ``entente seal …`` imports ``service.cli.files`` alone, so
sealing a file never loads the web stack, the ORM or the policy loader. Each ``help`` is the
first paragraph of the command's docstring, exactly (``tests/service/test_cli_startup.py``
checks that every entry matches the command it names).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from difflib import get_close_matches
from typing import Any, Literal

import typer
from typer._click.exceptions import UsageError as CommandLineError
from typer.core import TyperCommand, TyperGroup

from service.cli._help import PlainCommand, PlainGroup, PlainParams, plain_app, plain_arguments

__all__ = ["COMMANDS", "Entry", "LazyGroup", "load"]


@dataclass(frozen=True)
class Entry:
    module: str
    attribute: str
    kind: Literal["command", "group"]
    help: str  # the first paragraph of its docstring, as ``entente --help`` shows it


# In the order ``entente --help`` lists them: the commands, then the command groups.
COMMANDS: dict[str, Entry] = {
    "init": Entry(
        "service.cli.node",
        "init",
        "command",
        "Create a node home: signing key, age identities (post-quantum by default), signed\n"
        "descriptor, database.",
    ),
    "serve": Entry(
        "service.cli.node",
        "serve",
        "command",
        "Run the node: API, federation, sync workers and console (SIGTERM stops it cleanly).",
    ),
    "wait": Entry(
        "service.cli.wait",
        "wait",
        "command",
        "Wait until a node is up and ready (for scripts and deployments).",
    ),
    "demo": Entry(
        "service.cli.node",
        "demo",
        "command",
        "Three institute nodes on loopback: share, denial with its MOU clause, read, "
        "revocation,\nand verified, cosigned audit logs.",
    ),
    "seal": Entry(
        "service.cli.files",
        "seal",
        "command",
        "Encrypt FILE to recipients and this node; sign a manifest binding it (OUT.dsse.json).",
    ),
    "verify": Entry(
        "service.cli.files",
        "verify_",
        "command",
        "Check the manifest's signature and that OUT is the ciphertext it binds (no decryption).",
    ),
    "open": Entry(
        "service.cli.files",
        "open_",
        "command",
        "Verify and decrypt OUT; the plaintext file appears only if every check passed.",
    ),
    "share": Entry(
        "service.cli.client",
        "share",
        "command",
        "Share FILE with partners through your node (policy-checked, signed, encrypted).",
    ),
    "share-onward": Entry(
        "service.cli.sync",
        "share_onward",
        "command",
        "Pass a received artifact on to third nodes, where the origin's terms and your MOU allow.",
    ),
    "inbox": Entry("service.cli.client", "inbox", "command", "List what partners shared with you."),
    "get": Entry(
        "service.cli.client",
        "get",
        "command",
        "Download and decrypt an artifact (your read is audited).",
    ),
    "show": Entry(
        "service.cli.show",
        "show",
        "command",
        "Show one artifact: its terms, and each partner's delivery and signed receipt.",
    ),
    "revoke": Entry(
        "service.cli.client",
        "revoke",
        "command",
        "Revoke an artifact you shared: recipients delete it and acknowledge.",
    ),
    "backup": Entry(
        "service.cli.backup",
        "backup",
        "command",
        "Write a consistent backup of a node, running or not: database snapshot, home (keys still\n"
        "encrypted), blobs (or their object keys on S3), and a manifest of SHA-256 digests.",
    ),
    "restore": Entry(
        "service.cli.backup",
        "restore",
        "command",
        "Restore a backup into a new home and an empty database, after checking every digest and\n"
        "that its manifest is the one the backup printed; refuses a home or database that is not\n"
        "empty.",
    ),
    "identity": Entry(
        "service.cli.identity", "app", "group", "Show or export this node's identity."
    ),
    "db": Entry("service.cli.node", "db_app", "group", "Database schema management."),
    "partner": Entry("service.cli.partners", "app", "group", "Pin, list and remove partner nodes."),
    "token": Entry("service.cli.tokens", "app", "group", "Create, list and revoke bearer tokens."),
    "policy": Entry(
        "service.cli.policy",
        "app",
        "group",
        "Check, explain, test and compare MOU policies (YAML files, one per partner).",
    ),
    "audit": Entry(
        "service.cli.audit",
        "app",
        "group",
        "Verify, export and inspect a node's audit transparency log.",
    ),
    "sync": Entry("service.cli.sync", "app", "group", "Federation sync state."),
    "keys": Entry("service.cli.keys", "app", "group", "Rotate the node's keys."),
    "approvals": Entry(
        "service.cli.approvals",
        "app",
        "group",
        "Actions waiting for a second approver (two-person control).",
    ),
    "webhook": Entry(
        "service.cli.webhooks",
        "app",
        "group",
        "Webhooks: local receivers notified of each arrival, signed (Standard Webhooks).",
    ),
    "agreement": Entry(
        "service.cli.agreement",
        "app",
        "group",
        "Agreements signed by every party's officer: draft, sign, adopt, compare.",
    ),
    "roster": Entry(
        "service.cli.roster",
        "app",
        "group",
        "Network rosters: join a network of N in one step.",
    ),
    "network": Entry(
        "service.cli.network",
        "app",
        "group",
        "A local network of N nodes on loopback: up, down.",
    ),
}

# The settings of the root app, which the one-command apps built by ``load`` share.
TYPER_SETTINGS: dict[str, Any] = {
    "no_args_is_help": True,
    "pretty_exceptions_enable": False,
    "add_completion": False,
}


def load(name: str) -> Any:
    """The click command for table entry ``name``, built by Typer exactly as when it was
    registered on the root app (its module is imported now)."""
    entry = COMMANDS[name]
    target = getattr(importlib.import_module(entry.module), entry.attribute)
    holder = typer.Typer(**TYPER_SETTINGS)
    if entry.kind == "group":
        plain_app(target)
        holder.add_typer(target, name=name, cls=PlainGroup)
    else:
        holder.command(name, cls=PlainCommand)(target)
    return plain_arguments(typer.main.get_group(holder).commands[name])


class LazyGroup(PlainParams, TyperGroup):
    """The root ``entente`` group: commands come from :data:`COMMANDS`, imported on demand.

    While the group prints its own help, each command is a placeholder that carries the table's
    help line; otherwise :meth:`get_command` imports the command's module (and keeps it). The
    table's commands are listed in its order; any other command added to the group directly
    (``add_command``) comes before them."""

    _listing = False

    def list_commands(self, ctx: Any) -> list[str]:
        added = [name for name in super().list_commands(ctx) if name not in COMMANDS]
        return [*added, *COMMANDS]  # the table's order, whichever of its commands were loaded

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        command = super().get_command(ctx, cmd_name)
        if command is not None or cmd_name not in COMMANDS:
            return command
        if self._listing:
            return TyperCommand(name=cmd_name, help=COMMANDS[cmd_name].help)
        command = load(cmd_name)
        self.add_command(command, cmd_name)
        return command

    def format_help(self, ctx: Any, formatter: Any) -> None:
        self._listing = True
        try:
            super().format_help(ctx, formatter)
        finally:
            self._listing = False

    def resolve_command(self, ctx: Any, args: list[str]) -> Any:
        try:
            return self._click_resolve_command(ctx, args)
        except CommandLineError as exc:
            # as TyperGroup does, with the table's names (no module is imported to suggest)
            matches = get_close_matches(args[0], self.list_commands(ctx)) if args else []
            if self.suggest_commands and matches:
                suggestions = ", ".join(f"{m!r}" for m in matches)
                exc.message = f"{exc.message.rstrip('.')}. Did you mean {suggestions}?"
            raise
