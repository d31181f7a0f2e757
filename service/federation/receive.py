"""Accepting artifacts from a partner, whether pushed to the inbox or pulled from its feed.

Order of checks for each artifact, each before anything is stored:
1. the manifest parses and is signed by the sender's pinned key (a retired key only for a
   manifest created before its retirement), and the sender is its origin;
   for an onward share the whole chain verifies too (``onward.py``: upstream signatures, same
   plaintext, TLP never loosened, the upstream decision lets the sender pass it on to this node);
2. this node is one of the manifest's recipients, under a recipient string it published (the
   current one, or one retired by a key rotation), the decision disclosed to it (beside the
   manifest, shown to no co-recipient) is the one the manifest commits to for it, and the
   artifact is within the size limit;
3. this node's own inbound policy for the sender permits ``receive``;
4. an artifact of the sender's already stored under this id (ids are scoped to their origin,
   so another origin's artifact under the same id is another artifact) is the same one: then
   the reply is the receipt already issued (idempotent), nothing else happens; one the sender
   revoked before it arrived is refused (409);
5. the ciphertext streams into a temporary blob while it is decrypted to nowhere: its header
   digest, every STREAM chunk, and the final plaintext digest and size are checked; the request's
   ``Content-Digest`` is checked last (``before_commit``);
6. only then the blob is committed under its content address and ONE transaction stores the
   artifact, its audit event and the signed receipt (one transaction per batch, when a batch
   delivery or a feed page brings several).
A failure at any step leaves no blob and no row, and is audited as ``receive.rejected``.

The rules of steps 1, 2 and 4 are pure functions of facts in ``receive_rules`` (the model is
python-tuf's ``TrustedMetadataSet`` beside its ``Updater``); this module is the shell around
them: :class:`Receiver` works for one sender and one request (or feed page), looks the sender's
facts up once (:class:`receive_rules.SenderFacts`), runs the rules, the chain, the inbound
policy and the decryption, audits a refusal once, and :meth:`Receiver.commit` writes a batch of
staged artifacts together.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select

from crypto.dsse import Envelope
from crypto.errors import CryptoError
from crypto.receipt import Receipt, sign_receipt
from crypto.sealed import (
    Manifest,
    decrypt_verified,
)
from policies import Decision
from service.artifacts.enforce import Facts, Refusal, enforce, first_rule, refuse
from service.artifacts.rows import artifact_row
from service.artifacts.sealing import sealing_of
from service.artifacts.sweep import drop_unreferenced
from service.audit.budget import SUMMARY_RULE, RefusalBudget
from service.audit.log import AUDIT_TABLE, audit_row
from service.audit.refusals import mark_audited
from service.blob_journal import SETTLE
from service.blobs import BlobWriter
from service.commits import group_commit
from service.errors import (
    EntenteError,
    InvalidInputError,
)
from service.faults import fault_point
from service.federation.onward import verify_chain
from service.federation.receive_rules import (
    SenderFacts,
    Stored,
    check_not_revoked,
    check_recipient,
    check_repeat,
    parse_head,
)
from service.models import Artifact, ReceivedNotice
from service.node import Node
from service.partners import partner_keys

__all__ = ["Received", "Receiver", "summarise_refusals"]

_ARTIFACTS = Artifact.__table__  # type: ignore[attr-defined]


class _Tee:
    """Reads from ``source``, copying every byte to ``sink`` (the temporary blob)."""

    def __init__(self, source: Any, sink: BlobWriter) -> None:
        self._source = source
        self._sink = sink
        self.count = 0

    def read(self, n: int = -1, /) -> bytes:
        data: bytes = self._source.read(n)
        if data:
            self._sink.write(data)
            self.count += len(data)
        return data


@dataclass(frozen=True)
class Received:
    artifact_id: str
    receipt: str  # DSSE envelope JSON
    created: bool  # False when this was a repeat delivery


@dataclass
class Checked:
    """An artifact whose manifest, chain, recipients and inbound policy have been checked."""

    envelope: Envelope
    manifest: Manifest
    decision: Decision
    upstream: tuple[str, str, str] | None  # (artifact id, its origin, root origin) if onward
    disclosure: dict[str, Any] | None = None  # the decision the manifest commits to for us


@dataclass
class _Staged:
    checked: Checked
    writer: BlobWriter | None
    ciphertext_size: int
    digest: str | None = None


class Receiver:
    """Receives artifacts from one partner (``sender``), arriving ``via`` push or pull."""

    def __init__(
        self, node: Node, *, sender: str, via: str, budget: RefusalBudget | None = None
    ) -> None:
        self.node = node
        self.sender = sender
        self.via = via
        self.budget = budget  # refusals past it are counted for a summary entry, not each
        with node.db.session() as session:
            keys = partner_keys(session, sender)
            # revoked before it arrived (a revocation can overtake a delivery)
            revoked = frozenset(
                session.exec(
                    select(ReceivedNotice.artifact_id).where(
                        ReceivedNotice.partner == sender, ReceivedNotice.kind == "revocation"
                    )
                )
            )
        self.facts = SenderFacts(
            node_id=node.node_id,
            sender=sender,
            keysets=keys.all_sets,
            retired=keys.retired,
            revoked=revoked,
            # every recipient this node published, current and retired, X25519 and hybrid
            recipients=node.keys.recipients,
            max_artifact_bytes=node.settings.max_artifact_bytes,
        )

    # --- auditing refusals ----------------------------------------------------------------------
    def reject(self, *, artifact_id: str | None, reason: str) -> None:
        if self.budget is not None and not self.budget.admit(reason):
            self.node.metrics.received.labels("rejected").inc()
            return
        refuse(
            self.node,
            Refusal(
                kind="receive.rejected",
                actor=f"partner:{self.sender}",
                artifact_id=artifact_id,
                detail={"reason": reason[:500], "via": self.via},
            ),
            [self.sender],
            rule=reason[:200],
            count=self.node.metrics.received.labels("rejected").inc,
        )

    @contextlib.contextmanager
    def _refusals(self, artifact_id: str | None) -> Iterator[None]:
        """Audit an error of the checks run inside as ``receive.rejected`` (nothing inside
        audits on its own: the inbound policy's denial, which does, runs outside)."""
        try:
            yield
        except EntenteError as exc:
            self.reject(artifact_id=artifact_id, reason=exc.message)
            mark_audited(exc)
            raise

    # --- steps 1 to 3 ---------------------------------------------------------------------------
    def check(self, head: bytes) -> Checked:
        """Verify the manifest (and chain), the recipient, the decision disclosed to this node
        and the inbound policy (the rules are ``receive_rules``'). ``head`` is the delivery's
        first line: the manifest, or ``{"manifest", "disclosure"}`` when the manifest commits
        to decisions."""
        with self._refusals(None):
            verified = parse_head(head, self.facts)
        manifest = verified.manifest
        with self._refusals(manifest.artifact_id):
            check_not_revoked(manifest, self.facts)
            upstream = None
            if manifest.chain:
                try:
                    links = verify_chain(self.node, manifest)
                except CryptoError as exc:
                    raise InvalidInputError(
                        f"the onward chain was refused: {exc}", reason="chain"
                    ) from None
                upstream = (links[-2].artifact_id, links[-2].origin, links[0].origin)
            disclosed = check_recipient(manifest, verified.shown, self.facts)
        decision = self._inbound(manifest)  # a denial is audited by the enforcement step
        return Checked(verified.envelope, manifest, decision, upstream, disclosed)

    def _inbound(self, manifest: Manifest) -> Decision:
        node, budget = self.node, self.budget
        return enforce(
            node,
            Facts.of(manifest, sealing=sealing_of(manifest)).request(self.sender, "receive"),
            refusal=Refusal(
                kind="receive.rejected",
                actor=f"partner:{self.sender}",
                artifact_id=manifest.artifact_id,
                digest=manifest.sha256,
                detail={"via": self.via},
            ),
            message=lambda d: (
                f"{node.node_id} does not accept this artifact from {self.sender}: {d.summary}"
            ),
            now=node.now(),
            count=node.metrics.received.labels("denied").inc,
            admit=None if budget is None else (lambda d: budget.admit(d.summary)),
            reason=None,  # the problem names the rule; the decision's reason is in the audit entry
        )

    # --- step 4 ---------------------------------------------------------------------------------
    def held(self, artifact_ids: Sequence[str]) -> dict[str, Artifact]:
        """The sender's artifacts among ``artifact_ids`` this node already stores (an id is
        the sender's own: another origin's artifact under the same id is another artifact)."""
        if not artifact_ids:
            return {}
        with self.node.db.session() as session:
            rows = session.exec(
                select(Artifact).where(
                    col(Artifact.id).in_(list(artifact_ids)), Artifact.origin == self.sender
                )
            )
            return {r.id: r for r in rows}

    def repeat(self, existing: Artifact, manifest: Manifest) -> Received:
        stored = Stored(existing.id, existing.sha256, existing.origin, existing.receipt)
        with self._refusals(existing.id):
            receipt = check_repeat(stored, manifest)
        return Received(existing.id, receipt, False)

    # --- step 5 ---------------------------------------------------------------------------------
    def stage(
        self,
        checked: Checked,
        ciphertext: Any,
        *,
        before_commit: Callable[[], None] | None = None,
    ) -> _Staged:
        """Stream the ciphertext into a temporary blob, verifying and decrypting it to nowhere."""
        node = self.node
        writer = node.blobs.writer()
        try:
            with self._refusals(checked.manifest.artifact_id):
                tee = _Tee(ciphertext, writer)
                try:
                    # The signature was checked in step 1 (``check``); the plaintext goes nowhere.
                    decrypt_verified(
                        checked.manifest,
                        tee,
                        identities=node.keys.all_identities,
                        reader=node.node_id,
                    )
                except CryptoError as exc:
                    raise InvalidInputError(
                        f"the payload failed verification: {exc}", reason="payload"
                    ) from None
                if tee.read(1):
                    raise InvalidInputError(
                        "bytes follow the end of the age payload", reason="payload"
                    )
                if before_commit is not None:
                    before_commit()
        except BaseException:
            writer.abort()
            raise
        fault_point("receive.staged")
        return _Staged(checked, writer, tee.count)

    def discard(self, staged: Sequence[_Staged]) -> None:
        for item in staged:
            if item.writer is not None:
                item.writer.abort()
                item.writer = None

    # --- step 6 ---------------------------------------------------------------------------------
    def commit(self, staged: Sequence[_Staged]) -> list[Received]:
        """Commit the blobs, then store every artifact in one transaction; returns in order.

        The rows are Core inserts, committed together with what other requests store at the
        same time (``service.commits``); each artifact's audit event is in that transaction.
        """
        if not staged:
            return []
        node = self.node
        try:
            # The blobs of the page or batch are journaled in one transaction (not one each),
            # then placed; durable before the rows commit (``prepare`` below).
            writing = [item.writer for item in staged if item.writer is not None]
            node.blobs.journal.intend(*(writer.digest for writer in writing))
            for item in staged:
                if item.writer is not None:
                    item.digest = item.writer.place(journaled=True)
                    item.writer = None
        except BaseException:
            self.discard(staged)
            self._drop_unreferenced(staged)
            raise
        fault_point("receive.blob_committed")
        now = node.now()
        rows = [self._row(item, now) for item in staged]
        events = [self._accepted_event(item.checked, now) for item in staged]
        try:
            group_commit(node.db).write(
                {_ARTIFACTS: rows, AUDIT_TABLE: events},
                prepare=node.blobs.sync_placed,
                deletes={SETTLE: [row["blob"] for row in rows]},  # referenced from now on
            )
        except IntegrityError:
            # Someone stored one of them first (a push and a pull racing): one at a time, then
            # drop the blobs no row took (only once all are tried: a batch may bring the same
            # bytes twice, under an id stored already and under a new one).
            try:
                return [
                    self._commit_one(item, row, event)
                    for item, row, event in zip(staged, rows, events, strict=True)
                ]
            finally:
                self._drop_unreferenced(staged)
        except BaseException:
            self._drop_unreferenced(staged)  # nothing was stored: leave no blob behind
            raise
        fault_point("receive.db_committed")
        node.metrics.received.labels("accepted").inc(len(rows))
        return [Received(row["id"], row["receipt"], True) for row in rows]

    def _drop_unreferenced(self, staged: Sequence[_Staged]) -> None:
        """Delete the placed blobs of ``staged`` that no row refers to (a row stored before, by
        another delivery or another origin, may hold the same bytes)."""
        drop_unreferenced(self.node, [item.digest for item in staged])

    def _commit_one(self, item: _Staged, row: dict[str, Any], event: dict[str, Any]) -> Received:
        try:
            group_commit(self.node.db).write(
                {_ARTIFACTS: [row], AUDIT_TABLE: [event]},
                prepare=self.node.blobs.sync_placed,
                deletes={SETTLE: [row["blob"]]},
            )
        except IntegrityError:
            with self.node.db.session() as session:
                existing = session.get(Artifact, (row["id"], row["origin"]))
            if existing is None:
                raise
            return self.repeat(existing, item.checked.manifest)
        self.node.metrics.received.labels("accepted").inc()
        return Received(row["id"], row["receipt"], True)

    def _accepted_event(self, checked: Checked, now: datetime) -> dict[str, Any]:
        manifest, decision = checked.manifest, checked.decision
        rule = first_rule(decision)
        detail: dict[str, Any] = {
            "title": manifest.title, "tlp": manifest.tlp, "via": self.via, "size": manifest.size,
            "sealing": sealing_of(manifest),
        }  # fmt: skip
        if checked.upstream is not None:
            detail.update(upstream=checked.upstream[0], origin=checked.upstream[2])
        return audit_row(
            kind="receive.accepted",
            actor=f"partner:{self.sender}",
            partner=self.sender,
            artifact_id=manifest.artifact_id,
            digest=manifest.sha256,
            decision="allow",
            rule=",".join(r.id for r in decision.rules) or None,
            clause=rule.clause if rule else None,
            detail=detail,
            now=now,
        )

    def _row(self, item: _Staged, now: datetime) -> dict[str, Any]:
        """Every column of the received artifact's row, its signed receipt included."""
        checked = item.checked
        manifest = checked.manifest
        receipt = sign_receipt(
            Receipt(
                kind="delivery",
                artifact_id=manifest.artifact_id,
                sha256=manifest.sha256,
                receiver=self.node.node_id,
                sender=self.sender,
                received_at=now,
            ),
            key=self.node.keys.signer,
        )
        row = artifact_row(
            manifest, checked.envelope, ciphertext_size=item.ciphertext_size, blob=item.digest,
            direction="received", sender=self.sender, now=now,
            obligations=[o.to_json() for o in checked.decision.obligations],
        )  # fmt: skip
        row["receipt"] = receipt.to_bytes().decode()
        if checked.disclosure is not None:  # what concerns this node, and the proof of it
            policy = manifest.policy
            row["policy_ref"] = json.dumps(
                {
                    "decisions": [checked.disclosure["decision"]],
                    **{k: policy[k] for k in ("onward_approved", "onward") if k in policy},
                    "disclosure": checked.disclosure,
                }
            )
        if checked.upstream:
            row["upstream_id"], row["upstream_from"], row["upstream_origin"] = checked.upstream
        return row

    # --- one artifact, start to end -------------------------------------------------------------
    def receive(
        self,
        envelope_bytes: bytes,
        ciphertext: Any,
        *,
        before_commit: Callable[[], None] | None = None,
    ) -> Received:
        checked = self.check(envelope_bytes)
        existing = self.held([checked.manifest.artifact_id])
        if existing:
            return self.repeat(next(iter(existing.values())), checked.manifest)
        staged = self.stage(checked, ciphertext, before_commit=before_commit)
        return self.commit([staged])[0]


def summarise_refusals(node: Node, budget: RefusalBudget, *, sender: str, via: str) -> None:
    """Audit the refusals of ``sender``'s deliveries that ``budget`` counted instead of auditing
    each, if any, as one ``receive.rejected`` entry of rule ``summary``."""
    budget.write(
        lambda summary: refuse(
            node,
            Refusal(
                kind="receive.rejected",
                actor=f"partner:{sender}",
                artifact_id=None,
                detail={**summary, "via": via},
            ),
            [sender],
            rule=SUMMARY_RULE,
        )
    )
