"""Catch-up: read each partner's feed after the last cursor and fetch what never arrived.

Runs at start and every ``pull_interval_seconds``. A page's items are checked and staged one by
one (small ciphertexts come inline in the page; others are downloaded, streamed and verified),
then stored together in one transaction; an artifact already held is skipped without a download,
one the inbound policy refuses is skipped after its refusal is audited. The receipts issued for
the page go back to the partner (``POST receipts``), which settles its outbox rows as delivered
without pushing them again. A partner that cannot be reached keeps its cursor for the next round.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import logging
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from sqlmodel import select

from service.errors import EntenteError, PartnerUnavailableError
from service.federation.client import PartnerClient
from service.federation.feed import PAGE_INLINE_BUDGET
from service.federation.receive import Received, Receiver
from service.models import Partner, PullState
from service.node import Node

__all__ = ["pull_all", "pull_partner"]

log = logging.getLogger("entente.pull")

PAGE_SIZE = 500  # feed items per request
PAGE_MAX_BYTES = PAGE_INLINE_BUDGET * 2 + (8 << 20)  # bytes of one feed page's JSON


def pull_partner(
    node: Node, client: PartnerClient, partner: Partner, *, page: int = PAGE_SIZE
) -> int:
    """Pull one partner's feed to its end; returns how many artifacts were newly stored.

    The next page is fetched (and the last page's receipts sent) on a helper thread while this
    one is verified and stored, so the partner's time and ours overlap.
    """
    with node.db.session() as session:
        state = session.get(PullState, partner.node_id)
        cursor = state.cursor if state else 0

    def fetch(after: int) -> dict[str, Any]:
        reply = client.call_json(
            partner,
            "GET",
            f"/federation/v1/feed?after={after}&limit={page}",
            max_reply_bytes=PAGE_MAX_BYTES,
        )
        return reply.data if isinstance(reply.data, dict) else {}

    stored = 0
    error: str | None = None
    with ThreadPoolExecutor(1, thread_name_prefix="entente-pull") as io_thread:
        try:
            ahead: Future[dict[str, Any]] | None = io_thread.submit(fetch, cursor)
            while ahead is not None:
                data = ahead.result()
                nxt = data.get("next", cursor)
                more = bool(data.get("more")) and isinstance(nxt, int) and nxt > cursor
                ahead = io_thread.submit(fetch, nxt) if more else None
                items = data.get("items", [])
                received = _take_page(
                    node, client, partner, items if isinstance(items, list) else []
                )
                stored += sum(1 for r in received if r.created)
                if received:
                    io_thread.submit(_acknowledge, client, partner, received)
                if isinstance(nxt, int) and nxt > cursor:
                    cursor = nxt
                    _save(node, partner.node_id, cursor, None)
        except PartnerUnavailableError as exc:
            error = exc.message
    _save(node, partner.node_id, cursor, error)
    return stored


def _take_page(
    node: Node, client: PartnerClient, partner: Partner, items: list[Any]
) -> list[Received]:
    receiver = Receiver(node, sender=partner.node_id, via="pull")
    wanted = [i for i in items if isinstance(i, dict)]
    held = receiver.held([str(i.get("artifact_id", ""))[:64] for i in wanted])
    staged = []
    try:
        for item in wanted:
            artifact_id = str(item.get("artifact_id", ""))[:64]
            if artifact_id in held:
                continue
            line = json.dumps(item.get("manifest"), separators=(",", ":")).encode()
            try:
                checked = receiver.check(line)
                inline = item.get("payload")
                if isinstance(inline, str):
                    try:
                        raw = base64.b64decode(inline, validate=True)
                    except binascii.Error:
                        receiver.reject(artifact_id=artifact_id, reason="inline payload not base64")
                        continue
                    staged.append(receiver.stage(checked, io.BytesIO(raw)))
                else:
                    path = f"/federation/v1/artifacts/{checked.manifest.artifact_id}/payload"
                    with client.download(partner, path) as stream:
                        staged.append(receiver.stage(checked, stream))
            except PartnerUnavailableError:
                raise
            except EntenteError as exc:  # refused here: audited by the receiver
                log.info("pull from %s skipped %s: %s", partner.node_id, artifact_id, exc.message)
        received = receiver.commit(staged)
    except BaseException:
        receiver.discard(staged)
        raise
    return received


def _acknowledge(client: PartnerClient, partner: Partner, received: list[Received]) -> None:
    """Send the receipts for what a page brought; a failure only delays the partner's view."""
    receipts = [json.loads(r.receipt) for r in received]
    for start in range(0, len(receipts), 500):
        try:
            client.call_json(
                partner,
                "POST",
                "/federation/v1/receipts",
                {"receipts": receipts[start : start + 500]},
            )
        except PartnerUnavailableError as exc:
            log.info("could not send receipts to %s: %s", partner.node_id, exc.message)
            return


def _save(node: Node, partner: str, cursor: int, error: str | None) -> None:
    now = node.now()
    with node.db.session() as session:
        state = session.get(PullState, partner) or PullState(partner=partner)
        state.cursor = max(state.cursor, cursor)
        state.last_pull_at = now
        state.last_error = error
        if error is None:
            state.last_ok_at = now
        session.add(state)


def pull_all(node: Node, client: PartnerClient) -> int:
    with node.db.session() as session:
        partners = list(session.exec(select(Partner)))
    return sum(pull_partner(node, client, p) for p in partners)
