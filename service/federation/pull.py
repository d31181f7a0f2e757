"""Catch-up: read each partner's feed after the last cursor and fetch what never arrived.

Runs at start and every ``pull_interval_seconds``. An artifact already held is skipped without a
download; one the inbound policy refuses is skipped after its refusal is audited (by
``receive_artifact``); a partner that cannot be reached keeps its cursor for the next round.
"""

from __future__ import annotations

import json
import logging

from sqlmodel import select

from service.errors import EntenteError, PartnerUnavailableError
from service.federation.client import PartnerClient
from service.federation.receive import receive_artifact
from service.models import Artifact, Partner, PullState
from service.node import Node

__all__ = ["pull_all", "pull_partner"]

log = logging.getLogger("entente.pull")


def pull_partner(node: Node, client: PartnerClient, partner: Partner, *, page: int = 500) -> int:
    """Pull one partner's feed to its end; returns how many artifacts were newly stored."""
    with node.db.session() as session:
        state = session.get(PullState, partner.node_id)
        cursor = state.cursor if state else 0
    stored = 0
    error: str | None = None
    try:
        while True:
            reply = client.call_json(
                partner, "GET", f"/federation/v1/feed?after={cursor}&limit={page}"
            )
            data = reply.data if isinstance(reply.data, dict) else {}
            items = data.get("items", [])
            for item in items:
                artifact_id = str(item.get("artifact_id", ""))[:64]
                with node.db.session() as session:
                    held = session.get(Artifact, artifact_id) is not None
                if held:
                    continue
                line = json.dumps(item.get("manifest"), separators=(",", ":")).encode()
                try:
                    with client.download(
                        partner, f"/federation/v1/artifacts/{artifact_id}/payload"
                    ) as stream:
                        received = receive_artifact(
                            node,
                            sender=partner.node_id,
                            envelope_bytes=line,
                            ciphertext=stream,
                            via="pull",
                        )
                        stored += int(received.created)
                except PartnerUnavailableError:
                    raise
                except EntenteError as exc:  # refused here: audited by receive_artifact
                    log.info(
                        "pull from %s skipped %s: %s", partner.node_id, artifact_id, exc.message
                    )
            nxt = data.get("next", cursor)
            if isinstance(nxt, int) and nxt > cursor:
                cursor = nxt
                _save(node, partner.node_id, cursor, None)
            if not data.get("more"):
                break
    except PartnerUnavailableError as exc:
        error = exc.message
    _save(node, partner.node_id, cursor, error)
    return stored


def _save(node: Node, partner: str, cursor: int, error: str | None) -> None:
    with node.db.session() as session:
        state = session.get(PullState, partner) or PullState(partner=partner)
        state.cursor = max(state.cursor, cursor)
        state.last_pull_at = node.now()
        state.last_error = error
        session.add(state)


def pull_all(node: Node, client: PartnerClient) -> int:
    with node.db.session() as session:
        partners = list(session.exec(select(Partner)))
    return sum(pull_partner(node, client, p) for p in partners)
