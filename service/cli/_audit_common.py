"""What the ``entente audit`` commands share: the ``--url``/``--token`` options, the HTTP client
for a node's audit routes, opening a home's database offline, and what a node recorded about
witnesses ahead of its log."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Annotated

import httpx
import sqlalchemy as sa
import typer
from sqlmodel import select

from crypto.errors import CryptoError
from crypto.keys import VerifyKey
from crypto.note import SIG_COSIGNATURE_V1, NoteVerifier
from service.audit.entries import log_origin, witness_name
from service.audit.errors import AuditSourceError
from service.audit.rollback import rollback_rows
from service.audit.sources import HttpSource
from service.audit.verify import Verdict
from service.audit.witness_choice import choose_witnesses
from service.cli._common import settings_for
from service.db import Database, open_database
from service.errors import UsageError
from service.models import Partner

__all__ = [
    "OPERATOR",
    "TokenOpt",
    "UrlOpt",
    "http_client",
    "open_offline",
    "rolled_back",
    "witnesses_from_db",
    "witnesses_from_node",
]

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
        help="An auditor (or admin) bearer token",
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


def witnesses_from_node(client: httpx.Client) -> list[tuple[NoteVerifier, str]]:
    """The witnesses the node lists (``GET /audit/v1/witnesses``): cosignature keys and the
    URLs it gives for them; an entry that is not one is skipped, a list that is not one is
    :class:`AuditSourceError`."""
    data = HttpSource(client).get_json("/audit/v1/witnesses")
    listed = data.get("witnesses") if isinstance(data, dict) else None
    if not isinstance(listed, list):
        raise AuditSourceError("the node's witness list is malformed")
    out = []
    for item in listed:
        try:
            verifier = NoteVerifier.parse(str(item["vkey"]))
            url = str(item.get("url") or "")
        except (CryptoError, KeyError, TypeError, AttributeError):
            continue
        if verifier.sig_type == SIG_COSIGNATURE_V1:
            out.append((verifier, url))
    return out


def witnesses_from_db(db: Database, node_id: str, count: int) -> list[tuple[NoteVerifier, str]]:
    """The partners the node asks to witness its log (as the node itself chooses them)."""
    with db.session() as session:
        every = list(session.exec(select(Partner)))
    chosen = set(choose_witnesses(log_origin(node_id), [p.node_id for p in every], count))
    partners = [p for p in every if p.node_id in chosen]
    return [
        (
            NoteVerifier(
                witness_name(p.node_id),
                VerifyKey(base64.b64decode(p.signing_key)),
                SIG_COSIGNATURE_V1,
            ),
            p.url,
        )
        for p in partners
    ]


def rolled_back(db: Database, verdict: Verdict, notes: list[str]) -> None:
    """What the node itself recorded about witnesses ahead of its log (``audit_rollbacks``,
    ``service.audit.rollback``): a witness holding a newer checkpoint fails the verdict even
    when that witness cannot be asked now."""
    with db.session() as session:
        rows = rollback_rows(session)
    for row in rows:
        if row.state == "behind":
            message = (
                f"the node recorded at {row.detected_at:%Y-%m-%d %H:%M} UTC that witness "
                f"{row.witness} holds size {row.held_size} of this log, signed by the log's key, "
                f"while the log has {row.local_size}: it was restored from an older snapshot "
                "(or rolled back) and signs no checkpoint until a newer backup is restored "
                "(docs/backup.md)"
            )
            if verdict.ok:
                verdict.fail(message)
            else:
                verdict.problem = f"{verdict.problem}; {message}"
        else:
            notes.append(
                f"witness {row.witness} has not confirmed this log since it was restored: the "
                "node signs no checkpoint until it does (docs/backup.md)"
            )


def witness_keys(values: list[str]) -> list[NoteVerifier]:
    """``--witness`` values: cosignature (type 0x04) verifier keys, refused by name otherwise."""
    out = []
    for value in values:
        try:
            verifier = NoteVerifier.parse(value)
        except CryptoError as exc:
            raise UsageError(f"--witness {value[:40]!r}: {exc}") from None
        if verifier.sig_type != SIG_COSIGNATURE_V1:
            raise UsageError(f"--witness {verifier.name}: not a cosignature (type 0x04) key")
        out.append(verifier)
    return out
