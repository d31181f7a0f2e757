"""Fault tests: real ``entente serve`` processes killed with SIGKILL in the middle of delivery.

Each time: every artifact arrives exactly once (one row, one ``receive.accepted`` event), every
delivery row at the sender is ``delivered`` with a receipt that verifies against the receiver's
key and acknowledges exactly that artifact, and nothing is lost (every ciphertext is stored and
matches its content address).

Artifacts are queued at the sender while it is stopped, through the same domain code as
``POST /v1/artifacts`` (which is much faster than uploading a thousand over HTTP), so that the
delivery itself is what the test times and interrupts.
"""

from __future__ import annotations

import hashlib
import io
import json
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from crypto.dsse import Envelope
from crypto.receipt import verify_receipt
from service.artifacts import share as sharing
from service.artifacts.terms import ShareTerms
from service.node import load_node
from service.partners import partner_verify_keys
from service.settings import Settings
from service.tokens import Principal, Role
from tests.nodes import PASSPHRASE, Federation, start_federation

pytestmark = [pytest.mark.slow, pytest.mark.integration]

FAST = {
    "ENTENTE_SYNC_INTERVAL_SECONDS": "0.05",
    "ENTENTE_RETRY_BASE_SECONDS": "0.2",
    "ENTENTE_RETRY_MAX_SECONDS": "1",
    "ENTENTE_PULL_INTERVAL_SECONDS": "2",
    "ENTENTE_REQUEST_TIMEOUT_SECONDS": "2",  # so a dead sender's leases run out in 9 s
    "ENTENTE_LOG_LEVEL": "WARNING",
}
PUBLISHER = Principal(token_id="tok_fault", name="fault-test", role=Role.PUBLISHER)


def queue_shares(home: Path, n: int, *, to: str = "us-aisi") -> list[str]:
    """Share ``n`` small artifacts from the (stopped) node at ``home``; returns their ids."""
    settings = Settings(home=home, passphrase=PASSPHRASE, scrypt_work_factor=10)  # type: ignore[arg-type]
    node = load_node(settings, migrate=True)
    meta = ShareTerms(
        title="fault test", tlp="TLP:GREEN", topics=("evaluation",), purposes=("evaluation",),
        partners=(to,),
    )  # fmt: skip
    ids = []
    try:
        decisions = sharing.decide_share(node, meta, principal=PUBLISHER)
        for i in range(n):
            content = (f"artifact {i} ".encode() * 400)[:4096]
            row = sharing.share_artifact(
                node, node.blobs, meta, io.BytesIO(content), principal=PUBLISHER,
                decisions=decisions,
            )  # fmt: skip
            ids.append(row.id)
    finally:
        node.db.dispose()
    return ids


def query(home: Path, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    with sqlite3.connect(f"file:{home / 'entente.db'}?mode=ro", uri=True, timeout=30) as conn:
        return conn.execute(sql, args).fetchall()


def held(home: Path) -> int:
    return int(query(home, "SELECT count(*) FROM artifacts WHERE direction = 'received'")[0][0])


def pending(home: Path) -> int:
    return int(query(home, "SELECT count(*) FROM outbox WHERE state != 'delivered'")[0][0])


# Deadlines bound a hang, never measure speed: on a loaded machine (a CI run at load 20-30)
# delivery is many times slower than on a quiet one, so each waits up to SLACK times its figure.
SLACK = 4


def wait_for(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout * SLACK
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def assert_exactly_once(fed: Federation, ids: list[str], *, sender: str, receiver: str) -> None:
    s_home, r_home = fed.nodes[sender].home, fed.nodes[receiver].home
    # one row per artifact at the receiver, and one receive.accepted event each
    rows = dict(query(r_home, "SELECT id, blob FROM artifacts WHERE direction = 'received'"))
    assert sorted(rows) == sorted(ids)
    accepted = query(
        r_home,
        "SELECT artifact_id, count(*) FROM audit_entries WHERE kind = 'receive.accepted' "
        "GROUP BY artifact_id",
    )
    assert dict(accepted) == dict.fromkeys(ids, 1)
    # nothing lost: each ciphertext is stored under its content address
    blobs = r_home / "blobs"
    for blob in rows.values():
        path = blobs / blob[:2] / blob[2:4] / blob
        assert hashlib.sha256(path.read_bytes()).hexdigest() == blob
    # every delivery row is delivered once, with the receiver's receipt for exactly that artifact
    deliveries = query(
        s_home,
        "SELECT o.artifact_id, o.state, o.receipt, a.sha256 FROM outbox o "
        "JOIN artifacts a ON a.id = o.artifact_id WHERE o.kind = 'deliver'",
    )
    assert sorted(d[0] for d in deliveries) == sorted(ids)
    settings = Settings(home=s_home, passphrase=PASSPHRASE)  # type: ignore[arg-type]
    node = load_node(settings, migrate=False)
    try:
        with node.db.session() as session:
            trusted = partner_verify_keys(session, receiver)
    finally:
        node.db.dispose()
    for art_id, state, receipt, sha256 in deliveries:
        assert state == "delivered", (art_id, state)
        verify_receipt(
            Envelope.from_bytes(receipt.encode()), trusted=trusted, expect_kind="delivery",
            artifact_id=art_id, sha256=sha256, receiver=receiver, sender=sender,
        )  # fmt: skip
    sent = query(
        s_home,
        "SELECT artifact_id, count(*) FROM audit_entries WHERE kind = 'delivery.sent' "
        "GROUP BY artifact_id",
    )
    assert dict(sent) == dict.fromkeys(ids, 1)


@pytest.fixture
def fed(tmp_path: Path) -> Any:
    federation = start_federation(tmp_path, ("uk-aisi", "us-aisi"), **FAST)
    yield federation
    federation.stop()


def test_receiver_killed_mid_delivery_of_1000_and_restarted(fed: Federation) -> None:
    uk, us = fed.nodes["uk-aisi"], fed.nodes["us-aisi"]
    uk.stop()
    ids = queue_shares(uk.home, 1000)
    uk.start()
    wait_for(lambda: held(us.home) >= 150, 60, "the first deliveries")
    us.kill()
    got = held(us.home)
    assert got < 1000, "the receiver was not killed mid-delivery"
    time.sleep(1.0)  # the sender keeps trying and backs off
    us.start()
    wait_for(lambda: pending(uk.home) == 0, 60, "every delivery to be settled")
    assert_exactly_once(fed, ids, sender="uk-aisi", receiver="us-aisi")


def test_sender_killed_mid_batch_and_restarted(fed: Federation) -> None:
    uk, us = fed.nodes["uk-aisi"], fed.nodes["us-aisi"]
    uk.stop()
    ids = queue_shares(uk.home, 500)
    uk.start()
    wait_for(lambda: held(us.home) >= 60, 60, "the first deliveries")
    uk.kill()
    assert pending(uk.home) > 0, "the sender was not killed mid-delivery"
    uk.start()
    wait_for(lambda: pending(uk.home) == 0, 60, "every delivery to be settled")
    assert_exactly_once(fed, ids, sender="uk-aisi", receiver="us-aisi")


def test_partner_down_for_the_whole_share_then_back(fed: Federation) -> None:
    uk, us = fed.nodes["uk-aisi"], fed.nodes["us-aisi"]
    us.stop()
    uk.stop()
    ids = queue_shares(uk.home, 300)
    uk.start()
    # every push fails while the partner is down; the rows back off, nothing is lost
    wait_for(
        lambda: query(uk.home, "SELECT count(*) FROM outbox WHERE attempts > 0")[0][0] == 300,
        30,
        "every push to fail once",
    )
    failing = json.loads(uk.cli("sync", "status", "--json").stdout)
    assert failing[0]["pending"] == 300 and failing[0]["failing"] == 300
    assert "unreachable" in failing[0]["last_error"]
    us.start()  # catches up by pulling the feed at start; the sender's retries race it
    wait_for(lambda: pending(uk.home) == 0, 60, "catch-up")
    assert_exactly_once(fed, ids, sender="uk-aisi", receiver="us-aisi")
    via = query(
        us.home,
        "SELECT json_extract(detail, '$.via'), count(*) FROM audit_entries "
        "WHERE kind = 'receive.accepted' GROUP BY 1",
    )
    assert sum(n for _, n in via) == 300
    status = json.loads(uk.cli("sync", "status", "--json").stdout)
    assert status[0]["failing"] == 0 and status[0]["delivered"] == 300
    assert status[0]["last_contact"] is not None
