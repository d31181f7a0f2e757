"""Prometheus metrics of one node (a registry per node, so tests can run several in a process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["Metrics"]


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
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
        self.queue_depth = Gauge(
            "entente_outbox_pending", "Outbox rows waiting for delivery", ["partner"], registry=r
        )
        self.audit_size = Gauge("entente_audit_log_size", "Entries in the audit log", registry=r)
        self.refusals = Counter(
            "entente_refusals", "Refused requests by kind", ["kind"], registry=r
        )
