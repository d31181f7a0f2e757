"""L9 (gauges): every gauge is live. ``entente_audit_log_size`` never moved and
``entente_outbox_pending`` never came back to 0 once a partner's queue drained; both are now read
from the database when metrics are collected."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import sqlalchemy as sa
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from service.audit.log import record
from service.audit.models import AuditWitnessSubmission
from service.audit.sequencer import run_sequencer
from service.models import Outbox, PullState
from tests.service.nodekit import Kit, make_node, pin


def _samples(kit: Kit, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    text = generate_latest(kit.node.metrics.registry).decode()
    out: dict[tuple[tuple[str, str], ...], float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name:
                out[tuple(sorted(s.labels.items()))] = s.value
    return out


def _head(kit: Kit) -> int:
    with kit.node.db.engine.connect() as conn:
        return int(conn.execute(sa.text("SELECT size FROM audit_log_head WHERE id = 1")).one()[0])


def test_the_audit_size_gauge_follows_the_log(tmp_path: Path) -> None:
    kit = make_node(tmp_path, "uk-aisi")
    run_sequencer(kit.node)
    first = _head(kit)
    assert _samples(kit, "entente_audit_log_size") == {(): float(first)}
    with kit.node.db.session() as s:
        for i in range(7):
            record(s, kind="read", actor=f"reader:r{i}", now=kit.node.now())
    run_sequencer(kit.node)
    assert _head(kit) == first + 7
    assert _samples(kit, "entente_audit_log_size") == {(): float(first + 7)}


def test_the_outbox_gauge_returns_to_zero(tmp_path: Path) -> None:
    kit = make_node(tmp_path, "uk-aisi")
    other = make_node(tmp_path, "us-aisi")
    pin(kit, other)
    now = datetime.now(UTC)
    with kit.node.db.session() as s:
        for i in range(3):
            s.add(Outbox(partner="us-aisi", kind="deliver", artifact_id=f"art_{i}",
                         created_at=now, next_attempt_at=now))  # fmt: skip
    assert _samples(kit, "entente_outbox_pending") == {(("partner", "us-aisi"),): 3.0}
    with kit.node.db.session() as s:
        s.execute(sa.update(Outbox).values(state="delivered", delivered_at=now))
    # the queue drained: the gauge says so (it used to keep the last non-zero value)
    assert _samples(kit, "entente_outbox_pending") == {(("partner", "us-aisi"),): 0.0}


def test_the_network_gauges_per_partner(tmp_path: Path) -> None:
    """The oldest pending delivery's age returns to 0 once delivered; the feed lag says 'never'
    (-1) until a pull succeeds; the witness lag is what the partner has not cosigned yet."""
    kit = make_node(tmp_path, "uk-aisi")
    pin(kit, make_node(tmp_path, "us-aisi"))
    now = datetime.now(UTC)
    with kit.node.db.session() as s:
        s.add(Outbox(partner="us-aisi", kind="deliver", artifact_id="art_old",
                     created_at=now - timedelta(seconds=90), next_attempt_at=now))  # fmt: skip
        s.add(PullState(partner="us-aisi", cursor=0))
        s.add(AuditWitnessSubmission(partner="us-aisi", cosigned_size=0, next_attempt_at=now,
                                     updated_at=now))  # fmt: skip
    oldest = _samples(kit, "entente_outbox_oldest_pending_seconds")[(("partner", "us-aisi"),)]
    assert 89.0 <= oldest < 3600.0
    assert _samples(kit, "entente_feed_lag_seconds") == {(("partner", "us-aisi"),): -1.0}
    run_sequencer(kit.node)
    signed = _head(kit)
    lag = _samples(kit, "entente_witness_lag_entries")[(("partner", "us-aisi"),)]
    assert lag in (0.0, float(signed))  # a checkpoint is signed by the sequencer or later
    with kit.node.db.session() as s:
        s.execute(sa.update(Outbox).values(state="delivered", delivered_at=now))
        s.execute(sa.update(PullState).values(last_ok_at=now - timedelta(seconds=5)))
    assert _samples(kit, "entente_outbox_oldest_pending_seconds") == {
        (("partner", "us-aisi"),): 0.0
    }
    feed = _samples(kit, "entente_feed_lag_seconds")[(("partner", "us-aisi"),)]
    assert 4.0 <= feed < 3600.0
