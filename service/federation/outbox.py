"""The delivery worker: claims outbox rows, delivers them, records the partners' receipts.

Claiming takes a lease (``lease_owner``, ``lease_until``) in a short transaction; on PostgreSQL the
candidate rows are read ``FOR UPDATE SKIP LOCKED``, so replicas sharing one database never claim
the same row, and on SQLite a conditional update does the same job. The network call happens with
no transaction open; the outcome is written in a second short transaction. A worker that dies
mid-delivery leaves a lease that expires, and the row is delivered again: the partner's inbox is
idempotent and answers a repeat with the receipt it already issued, so the effect is exactly once.

Transient failures (unreachable, 5xx, 401 before the partner pinned us) back off exponentially with
jitter up to ``retry_max_seconds``; a refusal (403, 404, 409, 413, 422) marks the row ``failed``
with the partner's reason, for an operator to look at.
"""

from __future__ import annotations

import json
import logging
import random
import secrets
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import sqlalchemy as sa
from sqlmodel import col, select

from crypto.dsse import Envelope
from crypto.errors import CryptoError
from crypto.receipt import verify_receipt
from service.audit import record
from service.errors import PartnerUnavailableError
from service.federation.client import PartnerClient, PartnerRefusedError
from service.federation.notices import notice_payload
from service.models import Artifact, Outbox, Partner
from service.node import Node
from service.partners import partner_verify_keys

__all__ = ["OutboxWorker"]

log = logging.getLogger("entente.outbox")

LEASE_SECONDS = 120  # a claimed row is someone else's for this long
PERMANENT = frozenset({403, 404, 409, 413, 422})


class OutboxWorker:
    def __init__(self, node: Node, client: PartnerClient, *, batch: int = 64, threads: int = 8):
        self.node = node
        self.client = client
        self.batch = batch
        self.owner = f"w-{secrets.token_hex(6)}"
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="entente-deliver")

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)

    # --- claiming -------------------------------------------------------------------------------
    def claim(self) -> list[int]:
        now = self.node.now()
        until = now + timedelta(seconds=LEASE_SECONDS)
        due = sa.and_(
            col(Outbox.state) == "pending",
            col(Outbox.next_attempt_at) <= now,
            sa.or_(col(Outbox.lease_until).is_(None), col(Outbox.lease_until) < now),
        )
        with self.node.db.session() as session:
            query = select(Outbox.id).where(due).order_by(col(Outbox.id)).limit(self.batch)
            if self.node.db.is_postgres:
                ids = [i for i in session.exec(query.with_for_update(skip_locked=True)) if i]
                if ids:
                    session.execute(
                        sa.update(Outbox)
                        .where(col(Outbox.id).in_(ids))
                        .values(lease_owner=self.owner, lease_until=until)
                    )
                return ids
            claimed = []
            for ident in [i for i in session.exec(query) if i]:
                result = session.execute(
                    sa.update(Outbox)
                    .where(col(Outbox.id) == ident, due)
                    .values(lease_owner=self.owner, lease_until=until)
                )
                if getattr(result, "rowcount", 0) == 1:
                    claimed.append(ident)
            return claimed

    def run_once(self) -> int:
        """Claim a batch and deliver it; returns how many rows were handled."""
        ids = self.claim()
        if ids:
            list(self.pool.map(self._safe_process, ids))
        self._update_gauges()
        return len(ids)

    def _update_gauges(self) -> None:
        with self.node.db.session() as session:
            rows = session.exec(
                select(Outbox.partner, sa.func.count())
                .where(Outbox.state == "pending")
                .group_by(col(Outbox.partner))
            ).all()
        for partner, n in rows:
            self.node.metrics.queue_depth.labels(partner).set(n)

    def _safe_process(self, ident: int) -> None:
        try:
            self.process(ident)
        except Exception:
            log.exception("outbox row %s failed unexpectedly", ident)
            self._retry(ident, "internal error while delivering (see the node log)")

    # --- one row --------------------------------------------------------------------------------
    def process(self, ident: int) -> None:
        node = self.node
        with node.db.session() as session:
            row = session.get(Outbox, ident)
            if row is None or row.lease_owner != self.owner or row.state != "pending":
                return
            artifact = session.get(Artifact, row.artifact_id)
            partner = session.get(Partner, row.partner)
        if partner is None:
            self._finish(ident, state="failed", error="the partner is no longer pinned")
            return
        if artifact is None:
            self._finish(ident, state="failed", error="the artifact no longer exists")
            return
        if row.kind == "deliver" and (artifact.revoked_at is not None or artifact.blob is None):
            self._finish(ident, state="cancelled", error="revoked before delivery")
            return
        try:
            if row.kind == "deliver":
                reply = self.client.deliver(
                    partner,
                    manifest_line=json.dumps(
                        json.loads(artifact.manifest), separators=(",", ":")
                    ).encode(),
                    blob=artifact.blob or "",
                    size=artifact.ciphertext_size,
                )
                expect = "delivery"
            else:
                payload = notice_payload(row, artifact)
                reply = self.client.call_json(partner, "POST", "/federation/v1/notices", payload)
                expect = "revocation" if payload["type"] == "revocation" else "access"
            envelope = Envelope.from_json(
                reply.data.get("receipt") if isinstance(reply.data, dict) else None
            )
            with node.db.session() as session:
                trusted = partner_verify_keys(session, partner.node_id)
            verify_receipt(
                envelope,
                trusted=trusted,
                expect_kind=expect,
                artifact_id=artifact.id,
                sha256=artifact.sha256,
                receiver=partner.node_id,
                sender=node.node_id,
            )
        except PartnerRefusedError as exc:
            if exc.status_code in PERMANENT:
                self._finish(ident, state="failed", error=exc.message, audit_failure=True)
            else:
                self._retry(ident, exc.message)
            return
        except PartnerUnavailableError as exc:
            self._retry(ident, exc.message)
            return
        except CryptoError as exc:
            self._retry(ident, f"the partner's receipt was not acceptable: {exc}")
            return
        self._delivered(ident, receipt=envelope.to_bytes().decode(), kind=row.kind, expect=expect)

    def _delivered(self, ident: int, *, receipt: str, kind: str, expect: str) -> None:
        node = self.node
        now = node.now()
        with node.db.session() as session:
            row = session.get(Outbox, ident)
            if row is None:
                return
            row.state = "delivered"
            row.delivered_at = now
            row.receipt = receipt
            row.attempts += 1
            row.lease_owner = None
            row.lease_until = None
            row.last_error = None
            session.add(row)
            artifact = session.get(Artifact, row.artifact_id)
            digest = artifact.sha256 if artifact else None
            if kind == "deliver":
                record(
                    session, kind="delivery.sent", actor=f"node:{node.node_id}",
                    partner=row.partner, artifact_id=row.artifact_id, digest=digest,
                    detail={"attempts": row.attempts}, now=now,
                )  # fmt: skip
                record(
                    session, kind="receipt.recorded", actor=f"partner:{row.partner}",
                    partner=row.partner, artifact_id=row.artifact_id, digest=digest,
                    detail={"receipt": json.loads(receipt)["signatures"][0]["keyid"]}, now=now,
                )  # fmt: skip
            else:
                revocation = expect == "revocation"
                record(
                    session,
                    kind="revocation.acknowledged" if revocation else "access_notice.sent",
                    actor=f"partner:{row.partner}" if revocation else f"node:{node.node_id}",
                    partner=row.partner, artifact_id=row.artifact_id, digest=digest,
                    detail={"notice_id": row.id}, now=now,
                )  # fmt: skip
        node.metrics.deliveries.labels(row.partner, "delivered").inc()

    def _retry(self, ident: int, error: str) -> None:
        node = self.node
        now = node.now()
        settings = node.settings
        with node.db.session() as session:
            row = session.get(Outbox, ident)
            if row is None or row.state != "pending":
                return
            row.attempts += 1
            delay = min(
                settings.retry_max_seconds,
                settings.retry_base_seconds * 2 ** min(row.attempts - 1, 30),
            )
            delay *= random.uniform(0.5, 1.5)  # noqa: S311 - jitter, not a secret
            row.next_attempt_at = now + timedelta(seconds=delay)
            row.last_error = error[:1000]
            row.lease_owner = None
            row.lease_until = None
            session.add(row)
            if row.attempts == 1:
                record(
                    session, kind="delivery.failed", actor=f"node:{node.node_id}",
                    partner=row.partner, artifact_id=row.artifact_id,
                    detail={"error": error[:500], "retrying": True, "kind": row.kind}, now=now,
                )  # fmt: skip
            partner = row.partner
        node.metrics.deliveries.labels(partner, "retry").inc()

    def _finish(self, ident: int, *, state: str, error: str, audit_failure: bool = False) -> None:
        node = self.node
        now = node.now()
        with node.db.session() as session:
            row = session.get(Outbox, ident)
            if row is None:
                return
            row.state = state
            row.last_error = error[:1000]
            row.lease_owner = None
            row.lease_until = None
            row.attempts += 1
            session.add(row)
            if audit_failure or state == "failed":
                record(
                    session, kind="delivery.failed", actor=f"node:{node.node_id}",
                    partner=row.partner, artifact_id=row.artifact_id,
                    detail={"error": error[:500], "retrying": False, "kind": row.kind}, now=now,
                )  # fmt: skip
            partner = row.partner
        node.metrics.deliveries.labels(partner, state).inc()
