"""Replicas on one PostgreSQL database claiming webhook subscriptions: a claim takes the due
rows it can lease without waiting for one another transaction holds (``SKIP LOCKED``), so that
two claims that saw the due rows in different orders (a retry moved one's next attempt between
their reads) never each hold a row the other waits for ("deadlock detected")."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import sqlalchemy as sa

from service.models import Webhook
from service.webhooks import WebhookDispatcher
from tests.service.nodekit import make_node
from tests.support import start_until_blocked


@pytest.mark.postgres
def test_a_claim_skips_a_subscription_another_replica_holds(tmp_path: Path, pg_url: str) -> None:
    kit = make_node(tmp_path, "uk-aisi", db_url=pg_url)
    now = kit.node.now()
    with kit.node.db.session() as session:
        for ident in ("whk_1", "whk_2"):  # both due: retrying
            session.add(
                Webhook(
                    id=ident, url="http://127.0.0.1:9/hook", secret="-", created_at=now,
                    created_by="admin", cursor=0, state="failing",
                )
            )  # fmt: skip
    table = Webhook.__table__  # type: ignore[attr-defined]
    dispatcher = WebhookDispatcher(kit.node)
    claimed: list[str] = []
    failed: list[BaseException] = []

    def claim() -> None:
        try:
            claimed.extend(dispatcher.claim(limit=2))
        except BaseException as exc:
            failed.append(exc)

    claimer = threading.Thread(target=claim)
    try:
        with kit.node.db.engine.begin() as other:  # another replica's claim, in its own order
            other.execute(sa.update(table).where(table.c.id == "whk_2").values(failures=1))
            start_until_blocked(claimer, pg_url)
            other.execute(sa.update(table).where(table.c.id == "whk_1").values(failures=1))
        claimer.join(30)
        assert not claimer.is_alive()
        assert failed == []
        assert claimed == ["whk_1"]  # the one it could lease now; the other next round
    finally:
        dispatcher.close()
