"""Prometheus metrics of one node (a registry per node, so tests can run several in a process).

Counters and histograms are updated where things happen. Gauges of state kept in the database
(the audit log's size, the outbox rows waiting per partner) are read from it when the metrics
are collected (:meth:`Metrics.watch_database`, wired by the app factory): two small indexed
queries per scrape, and a value that is never stale, whichever process or replica changed it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import sqlalchemy as sa
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from service.db import Database

__all__ = ["DATABASE_GAUGES", "Metrics"]

log = logging.getLogger("entente.metrics")

AUDIT_SIZE = ("entente_audit_log_size", "Entries in the audit log (its latest tree size)")
OUTBOX_PENDING = ("entente_outbox_pending", "Outbox rows waiting for delivery, per partner")
OUTBOX_OLDEST = (
    "entente_outbox_oldest_pending_seconds",
    "Age of the oldest delivery or notice still waiting for a partner (0: none waits)",
)
FEED_LAG = (
    "entente_feed_lag_seconds",
    "Seconds since this node last read the partner's feed successfully (-1: never)",
)
CHECKPOINT_AGE = ("entente_checkpoint_age_seconds", "Age of this log's latest signed checkpoint")
WITNESS_LAG = (
    "entente_witness_lag_entries",
    "Entries of this log's latest checkpoint the partner's witness has not cosigned yet",
)
UPLOADS_OPEN = ("entente_uploads_open", "Resumable uploads not yet complete")
UPLOADS_HELD = (
    "entente_upload_bytes_held",
    "Bytes held (encrypted, in the blob store) for resumable uploads not yet complete",
)
# Exported once the app factory calls Metrics.watch_database (read at each scrape).
DATABASE_GAUGES = tuple(
    g[0]
    for g in (
        AUDIT_SIZE, OUTBOX_PENDING, OUTBOX_OLDEST, FEED_LAG, CHECKPOINT_AGE, WITNESS_LAG,
        UPLOADS_OPEN, UPLOADS_HELD,
    )
)  # fmt: skip


class _DatabaseGauges(Collector):
    """The gauges whose value lives in the database, read at collection time: always live,
    whichever replica did the work (no gauge kept in one process's memory)."""

    def __init__(self, db: Database, clock: Callable[[], datetime] | None = None) -> None:
        self.db = db
        self.clock = clock or (lambda: datetime.now(UTC))

    def describe(self) -> Iterable[Metric]:
        return self._families(_State())

    def collect(self) -> Iterable[Metric]:
        try:
            state = self._read()
        except sa.exc.SQLAlchemyError:
            log.warning("metrics: could not read the database gauges", exc_info=True)
            return []
        return self._families(state)

    def _read(self) -> _State:
        now = self.clock()
        state = _State()
        with self.db.engine.connect() as conn:
            state.size = conn.execute(
                sa.text("SELECT size FROM audit_log_head WHERE id = 1")
            ).scalar_one_or_none()
            partners = [str(p) for (p,) in conn.execute(sa.text("SELECT node_id FROM partners"))]
            state.pending = dict.fromkeys(partners, 0)
            state.oldest = dict.fromkeys(partners, 0.0)
            for partner, n, first in conn.execute(
                sa.text(
                    "SELECT partner, COUNT(*), MIN(created_at) FROM outbox "
                    "WHERE state = 'pending' GROUP BY partner"
                )
            ):
                state.pending[str(partner)] = int(n)
                state.oldest[str(partner)] = _age(now, first)
            for partner, ok_at in conn.execute(
                sa.text("SELECT partner, last_ok_at FROM pull_state")
            ):
                if str(partner) in state.pending:
                    state.feed_lag[str(partner)] = _age(now, ok_at) if ok_at else -1.0
            latest = conn.execute(
                sa.text("SELECT MAX(created_at) FROM audit_checkpoints")
            ).scalar_one_or_none()
            state.checkpoint_age = _age(now, latest) if latest is not None else None
            state.uploads, state.upload_bytes = conn.execute(
                sa.text(
                    "SELECT COUNT(*), COALESCE(SUM(received), 0) FROM uploads WHERE complete = :no"
                ),
                {"no": False},
            ).one()
            signed = conn.execute(sa.text("SELECT MAX(size) FROM audit_checkpoints")).scalar()
            for partner, cosigned in conn.execute(
                sa.text("SELECT partner, cosigned_size FROM audit_witness_submissions")
            ):
                state.witness_lag[str(partner)] = max(0, int(signed or 0) - int(cosigned or 0))
        return state

    @staticmethod
    def _families(state: _State) -> Iterator[Metric]:
        audit = GaugeMetricFamily(*AUDIT_SIZE)
        if state.size is not None:
            audit.add_metric([], int(state.size))
        yield audit
        checkpoint = GaugeMetricFamily(*CHECKPOINT_AGE)
        if state.checkpoint_age is not None:
            checkpoint.add_metric([], state.checkpoint_age)
        yield checkpoint
        for names, value in ((UPLOADS_OPEN, state.uploads), (UPLOADS_HELD, state.upload_bytes)):
            family = GaugeMetricFamily(*names)
            family.add_metric([], int(value))
            yield family
        per_partner = (
            (OUTBOX_PENDING, state.pending),
            (OUTBOX_OLDEST, state.oldest),
            (FEED_LAG, state.feed_lag),
            (WITNESS_LAG, state.witness_lag),
        )
        for names, values in per_partner:
            family = GaugeMetricFamily(*names, labels=["partner"])
            for partner in sorted(values):
                family.add_metric([partner], values[partner])
            yield family


@dataclass
class _State:
    size: int | None = None
    checkpoint_age: float | None = None
    uploads: int = 0
    upload_bytes: int = 0
    pending: dict[str, int] = field(default_factory=dict)
    oldest: dict[str, float] = field(default_factory=dict)
    feed_lag: dict[str, float] = field(default_factory=dict)
    witness_lag: dict[str, int] = field(default_factory=dict)


def _age(now: datetime, then: object) -> float:
    """Seconds from ``then`` (a datetime, or the text SQLite returns) to ``now``; never < 0."""
    if isinstance(then, str):
        then = datetime.fromisoformat(then)
    if not isinstance(then, datetime):
        return 0.0
    if then.tzinfo is None:
        then = then.replace(tzinfo=UTC)
    return max(0.0, (now - then).total_seconds())


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._watched: _DatabaseGauges | None = None
        r = self.registry
        self.requests = Counter(
            "entente_http_requests", "HTTP requests", ["method", "route", "status"], registry=r
        )
        self.request_seconds = Histogram(
            "entente_http_request_seconds", "HTTP request latency", ["route"], registry=r
        )
        self.shares = Counter("entente_shares", "Shares by outcome", ["outcome"], registry=r)
        self.deliveries = Counter(
            "entente_deliveries",
            "Deliveries by partner and outcome",
            ["partner", "outcome"],
            registry=r,
        )
        self.delivery_seconds = Histogram(
            "entente_delivery_seconds",
            "From a share's commit to the partner's signed receipt, per partner",
            ["partner"],
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800, 3600, 21600, 86400),
            registry=r,
        )
        self.received = Counter(
            "entente_received", "Artifacts received by outcome", ["outcome"], registry=r
        )
        self.resumed = Counter(
            "entente_resumed_deliveries",
            "Pushed deliveries resumed from a partial, by side (sent, received)",
            ["side"],
            registry=r,
        )
        self.resumed_bytes = Counter(
            "entente_resumed_bytes_skipped",
            "Bytes of ciphertext a resumed push did not send again, by side (sent, received)",
            ["side"],
            registry=r,
        )
        self.reads = Counter("entente_reads", "Artifact reads by outcome", ["outcome"], registry=r)
        self.refusals = Counter(
            "entente_refusals", "Refused requests by kind", ["kind"], registry=r
        )
        self.upload_appends = Counter(
            "entente_upload_appends",
            "Appends to resumable uploads by outcome (appended, last, interrupted)",
            ["outcome"],
            registry=r,
        )
        self.upload_bytes = Counter(
            "entente_upload_bytes", "Bytes received by appends to resumable uploads", registry=r
        )
        self.webhook_deliveries = Counter(
            "entente_webhook_deliveries",
            "Webhook deliveries by subscription and outcome (ok, failed)",
            ["subscription", "outcome"],
            registry=r,
        )

    def observe_delivery(self, partner: str, created: object, now: datetime) -> None:
        """One delivery receipted: its latency from the share's commit (the outbox row)."""
        self.delivery_seconds.labels(partner).observe(_age(now, created))

    def watch_database(self, db: Database) -> None:
        """Serve the database-backed gauges (``entente_audit_log_size``,
        ``entente_outbox_pending``) from ``db`` (idempotent: once per registry)."""
        if self._watched is None:
            self._watched = _DatabaseGauges(db)
            self.registry.register(self._watched)
