"""Prometheus metrics of one node (a registry per node, so tests can run several in a process).

Counters and histograms are updated where things happen. Gauges of state kept in the database
(the audit log's size, the outbox rows waiting per partner) are read from it when the metrics
are collected (:meth:`Metrics.watch_database`, wired by the app factory): two small indexed
queries per scrape, and a value that is never stale, whichever process or replica changed it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
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
# Exported once the app factory calls Metrics.watch_database (read at each scrape).
DATABASE_GAUGES = (AUDIT_SIZE[0], OUTBOX_PENDING[0])


class _DatabaseGauges(Collector):
    """The gauges whose value lives in the database, read at collection time."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def describe(self) -> Iterable[Metric]:
        return self._families({}, None)

    def collect(self) -> Iterable[Metric]:
        try:
            with self.db.engine.connect() as conn:
                size = conn.execute(
                    sa.text("SELECT size FROM audit_log_head WHERE id = 1")
                ).scalar_one_or_none()
                pending = {
                    str(p): 0 for (p,) in conn.execute(sa.text("SELECT node_id FROM partners"))
                }
                for partner, n in conn.execute(
                    sa.text(
                        "SELECT partner, COUNT(*) FROM outbox WHERE state = 'pending' "
                        "GROUP BY partner"
                    )
                ):
                    pending[str(partner)] = int(n)
        except sa.exc.SQLAlchemyError:
            log.warning("metrics: could not read the database gauges", exc_info=True)
            return []
        return self._families(pending, None if size is None else int(size))

    @staticmethod
    def _families(pending: dict[str, int], size: int | None) -> Iterator[Metric]:
        audit = GaugeMetricFamily(*AUDIT_SIZE)
        if size is not None:
            audit.add_metric([], size)
        yield audit
        outbox = GaugeMetricFamily(*OUTBOX_PENDING, labels=["partner"])
        for partner in sorted(pending):
            outbox.add_metric([partner], pending[partner])
        yield outbox


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
        self.received = Counter(
            "entente_received", "Artifacts received by outcome", ["outcome"], registry=r
        )
        self.reads = Counter("entente_reads", "Artifact reads by outcome", ["outcome"], registry=r)
        self.refusals = Counter(
            "entente_refusals", "Refused requests by kind", ["kind"], registry=r
        )

    def watch_database(self, db: Database) -> None:
        """Serve the database-backed gauges (``entente_audit_log_size``,
        ``entente_outbox_pending``) from ``db`` (idempotent: once per registry)."""
        if self._watched is None:
            self._watched = _DatabaseGauges(db)
            self.registry.register(self._watched)
