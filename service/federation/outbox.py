"""The delivery worker: claims outbox rows, delivers them, records the partners' receipts.

Claiming takes a lease (``lease_owner``, ``lease_until``) in a short transaction; on PostgreSQL the
candidate rows are read ``FOR UPDATE SKIP LOCKED``, so replicas sharing one database never claim
the same row, and on SQLite one conditional update does the same job (a write takes the database
lock). The network calls happen with no transaction open; the outcomes of a batch are written in
a second short transaction. A worker that dies mid-delivery leaves a lease that expires, and the
row is delivered again: the partner's inbox is idempotent and answers a repeat with the receipt
it already issued, so the effect is exactly once.

Small artifacts for one partner travel together, several per request (a batch delivery); large
ones stream one per request. Notices (revocations, access notices) and rotated descriptors go one
per request; while a descriptor push to a partner is pending, nothing else is sent to it (it
would not know the new key yet), and the push is signed with the retired key it still pins.

Each partner's requests run in its lanes (``federation/schedule.py``), several lanes at once;
``step`` waits for none: a slow or unreachable partner delays only its own deliveries.

Transient failures (unreachable, 5xx, 401 before the partner pinned us) back off exponentially with
jitter up to ``retry_max_seconds``, and never sooner than the partner's ``Retry-After`` (a 429 from
its rate limiter, a 503), itself capped at ``retry_max_seconds``; a refusal (403, 404, 409, 413,
422) marks the row ``failed`` with the partner's reason, for an operator to look at.

Row transitions, the audit events of a delivery and receipts that arrive later are written by
``service.federation.settle``.
"""

from __future__ import annotations

import json
import logging
import secrets
from collections import defaultdict
from collections.abc import Callable, Collection, Sequence
from datetime import timedelta
from functools import partial
from typing import Any

import sqlalchemy as sa
from sqlmodel import col, select

from crypto.dsse import Envelope
from crypto.errors import CryptoError
from crypto.keys import SigningKey
from crypto.receipt import verify_receipt
from service.artifacts.rows import delivery_head
from service.db import DATABASE_UNAVAILABLE, say_unavailable
from service.errors import PartnerRefusedError, PartnerUnavailableError
from service.federation.client import PartnerClient
from service.federation.notices import notice_payload
from service.federation.schedule import LANES_PARALLEL, LARGE, PER_LANE, Lanes, chunks
from service.federation.settle import (
    Done,
    Finish,
    Outcome,
    Retry,
    receipt_keys,
    record_receipts,
    settle_outcomes,
)
from service.models import Artifact, Outbox, Partner
from service.node import Node
from service.partners import PartnerKeys, partner_keys

__all__ = ["BATCH_MAX_BYTES", "BATCH_MAX_ITEMS", "OutboxWorker", "record_receipts"]

_NOTICE_KINDS = frozenset({"revocation", "access", "deletion"})  # what each notice's receipt says
log = logging.getLogger("entente.outbox")

LEASE_MARGIN_SECONDS = 5.0  # seconds added to two request timeouts: a claimed row's lease
PERMANENT = frozenset({403, 404, 409, 413, 422})
BATCH_MAX_ITEMS = 64  # deliveries per batch request
BATCH_MAX_BYTES = 2 << 20  # bytes of ciphertext per batch request
BATCH_ITEM_MAX_BYTES = 256 << 10  # bytes: larger ciphertexts stream one per request


def _retry(exc: PartnerUnavailableError) -> Retry:
    return Retry(exc.message, exc.retry_after)


def _refused(exc: PartnerRefusedError) -> Outcome:
    """A signed refusal: final for a status in ``PERMANENT``, else retried."""
    return Finish("failed", exc.message, True) if exc.status_code in PERMANENT else _retry(exc)


class OutboxWorker:
    def __init__(
        self,
        node: Node,
        client: PartnerClient,
        *,
        batch: int = 256,
        threads: int = LANES_PARALLEL,
        owner: str | None = None,
        kinds: frozenset[str] | None = None,
    ) -> None:
        self.node = node
        self.client = client
        self.batch = batch
        self.kinds = kinds  # only rows of these kinds (None: every kind)
        # A claimed row is this worker's for as long as an attempt can take; if the process dies,
        # another worker (or this node, restarted) takes the row over once the lease runs out.
        self.lease = timedelta(
            seconds=2 * node.settings.request_timeout_seconds + LEASE_MARGIN_SECONDS
        )
        self.owner = owner or f"w-{secrets.token_hex(6)}"
        self.lanes = Lanes(
            threads, name="entente-deliver", per_lane=PER_LANE, bell=node.deliveries
        )  # rung by a lane finishing and by every commit that queues a delivery
        self._seen = 0  # lanes finished when the last step began: see pause

    def close(self) -> None:
        self.node.deliveries.ring()  # a pause still waiting on a thread ends now
        self.lanes.close()

    # --- claiming -------------------------------------------------------------------------------
    def claim(self, *, skip: Collection[str] = ()) -> list[int]:
        """Lease up to ``batch`` due rows, none of a lane in ``skip`` (a partner's; plus ``LARGE``,
        its large deliveries'); returns their ids (never another worker's)."""
        now = self.node.now()
        until = now + self.lease
        due = sa.and_(
            col(Outbox.state) == "pending",
            col(Outbox.next_attempt_at) <= now,
            sa.or_(col(Outbox.lease_until).is_(None), col(Outbox.lease_until) < now),
        )
        with self.node.db.session() as session:
            blocked = list(
                session.exec(
                    select(Outbox.partner)
                    .where(Outbox.kind == "descriptor", Outbox.state == "pending")
                    .distinct()
                )
            )
            query = select(Outbox.id).where(due)
            if self.kinds is not None:
                query = query.where(col(Outbox.kind).in_(sorted(self.kinds)))
            if skip:
                large = sa.and_(
                    col(Outbox.kind) == "deliver",
                    col(Outbox.artifact_id).in_(
                        select(Artifact.id).where(Artifact.ciphertext_size > BATCH_ITEM_MAX_BYTES)
                    ),
                )
                busy = {k for k in skip if not k.endswith(LARGE)}
                busy_large = {k.removesuffix(LARGE) for k in skip if k.endswith(LARGE)}
                query = query.where(
                    sa.or_(col(Outbox.partner).not_in(sorted(busy)), large),
                    sa.or_(col(Outbox.partner).not_in(sorted(busy_large)), sa.not_(large)),
                )  # fmt: skip
            if blocked:
                query = query.where(
                    sa.or_(col(Outbox.kind) == "descriptor", col(Outbox.partner).not_in(blocked))
                )
            query = query.order_by(col(Outbox.id)).limit(self.batch)
            if self.node.db.is_postgres:
                ids = [i for i in session.exec(query.with_for_update(skip_locked=True)) if i]
                if ids:
                    session.execute(
                        sa.update(Outbox)
                        .where(col(Outbox.id).in_(ids))
                        .values(lease_owner=self.owner, lease_until=until)
                    )
                return ids
            candidates = [i for i in session.exec(query) if i]
            if not candidates:
                return []
            session.execute(
                sa.update(Outbox)
                .where(col(Outbox.id).in_(candidates), due)
                .values(lease_owner=self.owner, lease_until=until)
            )
            return [
                i
                for i in session.exec(
                    select(Outbox.id).where(
                        col(Outbox.id).in_(candidates),
                        Outbox.lease_owner == self.owner,
                        Outbox.lease_until == until,
                    )
                )
                if i
            ]

    def step(self) -> int:
        """Claim the due rows of every idle lane and start those lanes, without waiting for
        any; returns how many rows were claimed."""
        self._seen = self.lanes.finished  # before the claim: see pause
        ids = self.claim(skip=self.lanes.busy())
        lanes: dict[str, list[Callable[[], None]]] = defaultdict(list)
        for lane, rows, job in self._jobs(ids) if ids else []:
            lanes[lane].append(partial(self._safe, rows, job))
        for lane, jobs in lanes.items():
            self.lanes.start(lane, jobs)
        return len(ids)

    def pause(self, timeout: float) -> None:
        """The deliver loop's wait when a step claimed nothing: until a lane finishes after the
        last :meth:`step` began (its rows may be claimed again), or ``timeout`` seconds."""
        self.lanes.wait_finished(self._seen, timeout)

    def run_once(self) -> int:
        """Claim a batch and deliver it; returns how many rows were handled."""
        handled = self.step()
        self.lanes.wait()
        return handled

    # --- grouping claimed rows into requests ----------------------------------------------------
    def _jobs(self, ids: list[int]) -> list[tuple[str, list[int], Callable[[], None]]]:
        """Claimed rows as requests: (their lane, the rows' ids, the call that delivers them)."""
        with self.node.db.session() as session:
            rows = list(
                session.exec(select(Outbox).where(col(Outbox.id).in_(ids)).order_by(col(Outbox.id)))
            )
            artifact_ids = {r.artifact_id for r in rows if r.kind != "descriptor"}
            artifacts = {
                (a.id, a.origin): a
                for a in session.exec(select(Artifact).where(col(Artifact.id).in_(artifact_ids)))
            }
            partners = {
                p.node_id: p
                for p in session.exec(
                    select(Partner).where(col(Partner.node_id).in_({r.partner for r in rows}))
                )
            }
        jobs: list[tuple[str, list[int], Callable[[], None]]] = []
        settled: list[tuple[int, Outcome]] = []
        small: dict[str, list[tuple[Outbox, Artifact]]] = defaultdict(list)
        descriptors: dict[str, list[Outbox]] = defaultdict(list)
        for row in rows:
            if row.id is None:  # pragma: no cover - rows read back always have ids
                continue
            partner = partners.get(row.partner)
            if partner is None:
                settled.append((row.id, Finish("failed", "the partner is no longer pinned", True)))
                continue
            if row.kind == "descriptor":
                descriptors[row.partner].append(row)
                continue
            artifact = artifacts.get((row.artifact_id, row.artifact_origin or ""))
            if artifact is None:
                settled.append((row.id, Finish("failed", "the artifact no longer exists", True)))
            elif row.kind == "deliver" and (
                artifact.revoked_at is not None or artifact.blob is None
            ):
                settled.append((row.id, Finish("cancelled", "revoked before delivery")))
            elif row.kind == "deliver" and artifact.ciphertext_size <= BATCH_ITEM_MAX_BYTES:
                small[row.partner].append((row, artifact))
            else:
                lane = row.partner + (LARGE if row.kind == "deliver" else "")
                jobs.append((lane, [row.id], partial(self._one, partner, row, artifact)))
        if settled:
            self._settle(settled)
        for partner_id, items in small.items():
            for chunk in chunks(
                items, BATCH_MAX_ITEMS, BATCH_MAX_BYTES, lambda i: i[1].ciphertext_size
            ):
                ids_ = [r.id or 0 for r, _ in chunk]
                jobs.append((partner_id, ids_, partial(self._batch, partners[partner_id], chunk)))
        for partner_id, drows in descriptors.items():
            ids_ = [r.id or 0 for r in drows]
            jobs.append((partner_id, ids_, partial(self._descriptors, partners[partner_id], drows)))
        return jobs

    def _settle(self, outcomes: Sequence[tuple[int, Outcome]]) -> None:
        settle_outcomes(self.node, self.owner, outcomes)

    def _safe(self, ids: list[int], job: Callable[[], None]) -> None:
        """Run one request's job; whatever it raises is settled here, so its lane goes on.
        Our own database not answering leaves the rows under their lease, redone after it."""
        try:
            job()
        except DATABASE_UNAVAILABLE as exc:
            say_unavailable(log, exc, "delivering %d outbox row(s) stopped", len(ids))
        except Exception:
            log.exception("an outbox job failed unexpectedly")
            why = Retry("internal error while delivering (see the node's log)")
            try:
                self._settle([(i, why) for i in ids])  # rows settled already stay settled
            except DATABASE_UNAVAILABLE as exc:
                say_unavailable(log, exc, "recording the failure of %d outbox row(s) stopped",
                                len(ids), then="delivered again once their lease ends")  # fmt: skip

    # --- deliveries -----------------------------------------------------------------------------
    def _verify(
        self,
        partner: Partner,
        artifact: Artifact,
        data: Any,
        expect: str,
        trusted: PartnerKeys | None = None,
    ) -> tuple[str, None] | tuple[None, str]:
        """(receipt JSON, None) when ``data`` holds a valid receipt, else (None, why)."""
        try:
            envelope = Envelope.from_json(data.get("receipt") if isinstance(data, dict) else None)
            keys = trusted if trusted is not None else self._keys(partner.node_id)
            verify_receipt(
                envelope,
                keysets=receipt_keys(keys, envelope),
                expect_kind=expect,
                artifact_id=artifact.id,
                sha256=artifact.sha256,
                receiver=partner.node_id,
                sender=self.node.node_id,
            )
        except CryptoError as exc:
            return None, f"the partner's receipt was not acceptable: {exc}"
        return envelope.to_bytes().decode(), None

    def _keys(self, partner_id: str) -> PartnerKeys:
        with self.node.db.session() as session:
            return partner_keys(session, partner_id)

    def _batch(self, partner: Partner, items: list[tuple[Outbox, Artifact]]) -> None:
        payloads = []
        try:
            for _row, artifact in items:
                with self.node.blobs.open(artifact.blob or "") as fh:
                    payloads.append((delivery_head(artifact, partner.node_id), fh.read()))
            reply = self.client.deliver_batch(partner, payloads)
        except PartnerRefusedError as exc:
            self._settle([(row.id or 0, _refused(exc)) for row, _ in items])
            return
        except PartnerUnavailableError as exc:
            self._settle([(row.id or 0, _retry(exc)) for row, _ in items])
            return
        results = reply.data.get("results") if isinstance(reply.data, dict) else None
        if not isinstance(results, list) or len(results) != len(items):
            why = f"{partner.node_id} answered a batch with the wrong number of results"
            self._settle([(row.id or 0, Retry(why)) for row, _ in items])
            return
        outcomes: list[tuple[int, Outcome]] = []
        trusted = self._keys(partner.node_id)
        for (row, artifact), result in zip(items, results, strict=True):
            outcome = self._item_outcome(partner, artifact, result, trusted)
            outcomes.append((row.id or 0, outcome))
        self._settle(outcomes)

    def _item_outcome(
        self, partner: Partner, artifact: Artifact, result: Any, trusted: PartnerKeys
    ) -> Outcome:
        if not isinstance(result, dict):
            return Retry(f"{partner.node_id} sent a malformed batch result")
        status = result.get("status")
        if type(status) is not int:  # a partner's reply: not necessarily a number, or hashable
            return Retry(f"{partner.node_id} sent a malformed batch result (status {status!r:.40})")
        if status in (200, 201):
            receipt, why = self._verify(partner, artifact, result, "delivery", trusted)
            return Done(receipt, "deliver", "delivery") if receipt else Retry(why or "")
        problem = result.get("problem")
        detail = str(problem.get("detail") if isinstance(problem, dict) else "refused")[:500]
        message = f"{partner.node_id} refused ({status}): {detail}"
        if status in PERMANENT:
            return Finish("failed", message, True)
        return Retry(message)

    def _one(self, partner: Partner, row: Outbox, artifact: Artifact) -> None:
        try:
            if row.kind == "deliver":
                reply = self.client.deliver(
                    partner,
                    manifest_line=delivery_head(artifact, partner.node_id),
                    blob=artifact.blob or "",
                    size=artifact.ciphertext_size,
                    resume=row.attempts > 0,  # resumes from what a cut attempt left there
                )
                expect = "delivery"
            else:
                payload = notice_payload(row, artifact)
                reply = self.client.call_json(partner, "POST", "/federation/v1/notices", payload)
                expect = payload["type"] if payload["type"] in _NOTICE_KINDS else "access"
        except PartnerRefusedError as exc:
            self._settle([(row.id or 0, _refused(exc))])
            return
        except PartnerUnavailableError as exc:
            self._settle([(row.id or 0, _retry(exc))])
            return
        receipt, why = self._verify(partner, artifact, reply.data, expect)
        outcome: Outcome = Done(receipt, row.kind, expect) if receipt else Retry(why or "")
        self._settle([(row.id or 0, outcome)])

    def _descriptors(self, partner: Partner, rows: list[Outbox]) -> None:
        """Push rotated descriptors to ``partner`` in order, each signed by the key it retires."""
        for row in rows:
            outcome = self._push_descriptor(partner, row)
            self._settle([(row.id or 0, outcome)])
            if not isinstance(outcome, Done):
                return

    def _push_descriptor(self, partner: Partner, row: Outbox) -> Outcome:
        payload = json.loads(row.payload)
        retired = {k.fingerprint: k for k in self.node.keys.retired_signing}
        keys: list[SigningKey | None] = [retired.get(payload.get("previous", "")), None]
        error = "no key to sign the descriptor with"
        for key in keys:  # the retired key first; the current one if the partner moved on
            try:
                reply = self.client.call_json(
                    partner, "POST", "/federation/v1/descriptor", payload["descriptor"], key=key
                )
            except PartnerRefusedError as exc:
                error = exc.message
                if exc.status_code == 401:
                    continue
                return _refused(exc)
            except PartnerUnavailableError as exc:
                return _retry(exc)
            data = reply.data if isinstance(reply.data, dict) else {}
            if data.get("fingerprint") != payload.get("fingerprint"):
                return Retry(f"{partner.node_id} did not confirm the new key")
            return Done(json.dumps(data, sort_keys=True), "descriptor", "descriptor")
        return Retry(error)
