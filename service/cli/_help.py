"""Help in the shell's own words.

Typer prints Python type placeholders in help (``--home <path>``, ``--to <list[str]>``,
``--json <bool>``) and wraps a required argument in braces (``Usage: entente share [OPTIONS]
{file}``). Users of a command line expect what ``git``, ``age`` and click's own commands print:
an option's value named after the option (``--home HOME``), nothing after a flag, and a required
argument in capitals (``FILE``), an optional one in brackets (``[FILE]``). Choices keep their
list (``ed25519|hybrid``), and ranges their bounds.

:func:`plain_app` has Typer build an app's commands with :class:`PlainCommand`;
:class:`PlainGroup` is the class for a group (``add_typer(..., cls=PlainGroup)``), and
:func:`plain_arguments` converts a built command's arguments.
"""

from __future__ import annotations

from typing import Any

import typer
from typer import _click as click
from typer.core import TyperArgument, TyperCommand, TyperGroup


class _PlainArgument(TyperArgument):
    def _usage_display_name(self) -> str:
        name = self.display_name_raw
        name = name if self.required else f"[{name}]"
        return name + ("..." if self.nargs != 1 else "")

    def display_type_rich(self, ctx: click.Context) -> str | None:
        return None  # the argument's name already says what it is


def plain_param(param: click.Parameter) -> None:
    """``param`` with a plain placeholder (see the module's docstring), in place."""
    if isinstance(param, TyperArgument):
        if param.metavar is None and param.name:
            param.metavar = param.name.upper()
        param.__class__ = _PlainArgument
        return
    if param.metavar is not None:
        return
    descriptor = getattr(param, "type_descriptor", None)
    if descriptor is not None and descriptor.is_choice:
        return
    if getattr(param, "is_flag", False):
        param.metavar = ""  # a flag takes no value: show none
    elif param.name:
        param.metavar = param.name.upper()


class PlainParams:
    """A click command mix-in: every parameter, the help option included, with plain help."""

    def get_params(self, ctx: click.Context) -> list[click.Parameter]:
        params: list[click.Parameter] = super().get_params(ctx)  # type: ignore[misc]
        for param in params:
            plain_param(param)
        return params


class PlainCommand(PlainParams, TyperCommand):
    pass


class PlainGroup(PlainParams, TyperGroup):
    pass


def plain_app(app: typer.Typer) -> None:
    """Make every command and group of ``app`` (before Typer builds it) print plain help."""
    for command in app.registered_commands:
        if command.cls in (None, TyperCommand):
            command.cls = PlainCommand
    for group in app.registered_groups:
        if group.typer_instance is not None:
            plain_app(group.typer_instance)


def plain_arguments(command: Any) -> Any:
    """``command`` (a built click command or group) with plain arguments; returns it."""
    for param in command.params:
        plain_param(param)
    for sub in getattr(command, "commands", {}).values():
        plain_arguments(sub)
    return command
