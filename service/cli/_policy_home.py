"""``entente policy check --home``: a home's policies against the node they serve.

A policy about the node itself is an error: it is the partner's side of the agreement, placed in
the wrong home. A policy about a node that is not pinned, and a pinned partner without a policy
(everything to it denied by default), are warnings. The pinned partners are read from the home's
database, which is never created or migrated here.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import typer
from sqlalchemy.exc import SQLAlchemyError

from policies import PolicySet
from service.cli._terminal import printable
from service.db import open_database
from service.errors import EntenteError
from service.home import open_home
from service.partners import list_partners
from service.settings import Settings

__all__ = ["check_against_home", "home_findings"]


def home_findings(
    policy_set: PolicySet, *, node_id: str, pinned: Iterable[str] | None
) -> list[tuple[str, str]]:
    """(``error`` or ``warning``, message) for a home's policies against the node they serve.

    A policy about the node itself is an error (it is the partner's side of the agreement, in the
    wrong home). With the pinned partners known (``None``: they could not be read), a policy
    about an unpinned node and a pinned partner without a policy are warnings.
    """
    found: list[tuple[str, str]] = []
    for policy in policy_set:
        if policy.partner == node_id:
            found.append(
                (
                    "error",
                    f"{policy.source}: partner {policy.partner!r} is this node: this policy is "
                    "about this node itself; it belongs in the partner's home",
                )
            )
    if pinned is None:
        return found
    pinned = sorted(set(pinned))
    for policy in policy_set:
        if policy.partner != node_id and policy.partner not in pinned:
            found.append(
                (
                    "warning",
                    f"{policy.source}: partner {policy.partner!r} is not pinned at this node "
                    "(nothing is shared with it until `entente partner add`)",
                )
            )
    for partner in pinned:
        if policy_set.get(partner) is None:
            found.append(
                (
                    "warning",
                    f"pinned partner {partner!r} has no policy: everything to it is denied "
                    "by default",
                )
            )
    return found


def check_against_home(policy_set: PolicySet, home: Path) -> tuple[int, int]:
    """Report :func:`home_findings` for ``home`` on stderr; (errors, warnings)."""
    try:
        node_id = open_home(home).node_id
    except EntenteError as exc:
        typer.echo(f"warning: {printable(str(exc))}: not checked against the node", err=True)
        return 0, 1
    pinned = _pinned_partners(home)
    found = home_findings(policy_set, node_id=node_id, pinned=pinned)
    for level, message in found:
        prefix = "entente" if level == "error" else "warning"
        typer.echo(f"{prefix}: {printable(message)}", err=True)
    errors = sum(1 for level, _ in found if level == "error")
    return errors, len(found) - errors + (pinned is None)


def _pinned_partners(home: Path) -> list[str] | None:
    """The node ids pinned at ``home`` (its database, not migrated or created); ``None`` with a
    warning when they cannot be read."""
    try:
        settings = Settings.load(home=home)
        url = settings.resolved_database_url()
        if not settings.database_url and not (home / "entente.db").exists():
            return []  # no database yet: nothing pinned
        db = open_database(url, migrate=False)
        try:
            with db.session() as session:
                return [row.node_id for row in list_partners(session)]
        finally:
            db.dispose()
    except (EntenteError, SQLAlchemyError, ValueError) as exc:
        reason = printable(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        typer.echo(f"warning: the pinned partners could not be read ({reason})", err=True)
        return None
