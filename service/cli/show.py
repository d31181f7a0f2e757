"""``entente show ID``: one artifact as its node holds it: what it is, the terms it was shared
under, and, on the node that shared it, each partner's delivery and signed receipt.

The receipts were verified by the node when they arrived (a delivery counts only with one); the
envelope is printed with ``--json`` for checking again offline against the partner's descriptor.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from datetime import datetime
from typing import Annotated, Any

import typer

from crypto.rfc3339 import format_seconds
from service.cli._common import JsonOpt, console
from service.cli._terminal import SafeTable, outside
from service.cli.client import TokenOpt, UrlOpt
from service.client import Artifact, Client

__all__ = ["show"]


def _when(value: datetime | None) -> str:
    return "-" if value is None else format_seconds(value)


def receipt_line(envelope: Mapping[str, Any] | None) -> str:
    """``signed by KEY at TIME`` for a stored receipt envelope, or ``-``."""
    if not envelope:
        return "-"
    signatures = envelope.get("signatures") or [{}]
    keyid = str(signatures[0].get("keyid", "?"))[:24]
    try:
        payload = json.loads(base64.b64decode(str(envelope.get("payload", ""))))
        at = str(payload.get("received_at", "?"))
    except (ValueError, TypeError, AttributeError):
        at = "?"
    return f"signed by {keyid} at {at}"


def _decisions(art: Artifact) -> list[str]:
    stored = art.raw.get("policy") or {}
    lines = []
    for decision in stored.get("decisions", []) if isinstance(stored, dict) else []:
        rules = decision.get("rules") or []
        named = ", ".join(f"{r.get('id')} ({r.get('clause')})" for r in rules) or "-"
        lines.append(f"{decision.get('partner', '?')}: {named}")
    return lines


def show(
    artifact_id: Annotated[str, typer.Argument(help="The artifact id (or id@origin)")],
    url: UrlOpt,
    token: TokenOpt,
    as_json: JsonOpt = False,
) -> None:
    """Show one artifact: its terms, and each partner's delivery and signed receipt.

    Deliveries are listed on the node that shared it."""
    with Client(url, token) as client:
        art = client.artifact(artifact_id)
    if as_json:
        typer.echo(json.dumps(art.raw))
        return
    console.print(f"{outside(art.id)}  {outside(art.title)}")
    facts = SafeTable("field", "value", show_header=False, box=None)
    where = "shared by this node" if art.direction == "sent" else f"from {art.origin}"
    facts.add_row("direction", f"{art.direction} ({where})")
    facts.add_row("TLP", art.tlp)
    facts.add_row("sealed", art.sealing)
    facts.add_row("size", f"{art.size} bytes")
    facts.add_row("sha256", art.sha256)
    facts.add_row("recipients", ", ".join(art.recipients) or "-")
    facts.add_row("topics", ", ".join(art.topics) or "-")
    facts.add_row("purposes", ", ".join(art.purposes) or "-")
    facts.add_row("recorded", _when(art.recorded_at))
    for label, value in (("embargo until", art.embargo_until), ("expires", art.expires_at),
                         ("revoked", art.revoked_at)):  # fmt: skip
        if value is not None:
            facts.add_row(label, _when(value))
    for line in _decisions(art):
        facts.add_row("allowed by", line)
    if art.evaluation is not None:
        evaluation = art.evaluation
        facts.add_row(
            "evaluation", f"{evaluation.task} on {evaluation.model} ({evaluation.status})"
        )
    console.print(facts)
    if art.deliveries is None or art.direction != "sent":
        return
    table = SafeTable("partner", "state", "attempts", "delivered", "receipt", "last error")
    for d in art.deliveries:
        table.add_row(d.partner, d.state, str(d.attempts), _when(d.delivered_at),
                      receipt_line(d.receipt), d.last_error or "-")  # fmt: skip
    console.print(table)
    if any(d.receipt for d in art.deliveries):
        console.print(
            "each receipt was verified by the node when it arrived; `--json` prints the signed "
            "envelopes to check again with the partner's descriptor"
        )
