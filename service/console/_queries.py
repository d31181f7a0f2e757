"""What the console pages show, read from the database (server side, no HTTP round trips).

Filters and cursors arrive as untrusted strings and are parsed here into typed values; every
query is built with SQLAlchemy expressions and bound parameters. Entries are read through
``service.audit`` (its column list, entry objects, leaf encoding, proofs and checkpoints),
so the console shows exactly what ``/audit/v1`` serves. This module does not record audit events
and does not render anything.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session, col, select

from crypto.keys import format_fingerprint
from policies import Policy
from service.audit.checkpoints import StoredCheckpoint, get_checkpoint, latest_checkpoint
from service.audit.entries import encode_leaf, entry_columns, log_signer, row_object
from service.audit.log import EVENT_KINDS
from service.audit.models import AuditWitnessSubmission
from service.audit.submission import witnesses_in_use
from service.audit.tree import inclusion_proof, stored_leaf_hashes
from service.audit.witness import partner_witness_verifier, witness_cosigner
from service.audit.witness_choice import quorum
from service.errors import InvalidInputError, NotFoundError
from service.models import AuditEntry, Outbox, Partner, PullState
from service.node import Node
from service.partners import list_partners

__all__ = [
    "SERIES",
    "Activity",
    "AuditFilter",
    "AuditPage",
    "EntryView",
    "LogStatus",
    "PartnerView",
    "activity",
    "audit_page",
    "b64",
    "entry_view",
    "log_status",
    "midnight",
    "parse_seq",
    "partner_ids",
    "partner_views",
    "unsequenced_count",
]

_entries = AuditEntry.__table__  # type: ignore[attr-defined]
_MAX_TEXT = 200  # characters in a free-text filter

# The chart series: which event kinds count as a share, a read, a denial. Reads are local reads
# of received artifacts and partners' access notices for artifacts this node shared.
SERIES: dict[str, tuple[str, ...]] = {
    "shares": ("share.allowed",),
    "reads": ("read", "access_notice.received"),
    "denials": ("share.denied", "read.denied", "receive.rejected", "onward.denied"),
}


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


# ---------------------------------------------------------------------------------------------
# The audit table


def _text(params: Mapping[str, str], name: str) -> str | None:
    value = params.get(name, "").strip()
    if not value:
        return None
    if len(value) > _MAX_TEXT or any(ch < " " for ch in value):
        raise InvalidInputError(f"the {name} filter is at most {_MAX_TEXT} printable characters")
    return value


def _day(params: Mapping[str, str], name: str) -> date | None:
    value = _text(params, name)
    if value is None:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise InvalidInputError(f"the {name} filter is a date (YYYY-MM-DD)") from None


def parse_seq(value: str | None, name: str) -> int | None:
    """A log index from a query string or path (at most 19 digits), or ``None`` when empty."""
    if value is None or value == "":
        return None
    if not value.isascii() or not value.isdigit() or len(value) > 19:
        raise InvalidInputError(f"{name} is a log index (a whole number)")
    return int(value)


@dataclass(frozen=True)
class AuditFilter:
    """The audit table's filters. Days are UTC; ``until`` is inclusive; ``actor`` is a prefix."""

    since: date | None = None
    until: date | None = None
    kind: str | None = None
    actor: str | None = None
    partner: str | None = None
    artifact_id: str | None = None
    decision: str | None = None

    @classmethod
    def parse(cls, params: Mapping[str, str]) -> AuditFilter:
        kind = _text(params, "kind")
        if kind is not None and kind not in EVENT_KINDS:
            raise InvalidInputError(f"unknown event kind {kind[:64]!r}")
        decision = _text(params, "decision")
        if decision is not None and decision not in ("allow", "deny"):
            raise InvalidInputError("the decision filter is allow or deny")
        since, until = _day(params, "since"), _day(params, "until")
        if since is not None and until is not None and until < since:
            raise InvalidInputError("the 'until' day is before the 'since' day")
        return cls(
            since=since,
            until=until,
            kind=kind,
            actor=_text(params, "actor"),
            partner=_text(params, "partner"),
            artifact_id=_text(params, "artifact_id"),
            decision=decision,
        )

    def as_params(self) -> dict[str, str]:
        """The filters as query parameters (for pagination links), empty ones left out."""
        out = {
            "since": self.since.isoformat() if self.since else None,
            "until": self.until.isoformat() if self.until else None,
            "kind": self.kind,
            "actor": self.actor,
            "partner": self.partner,
            "artifact_id": self.artifact_id,
            "decision": self.decision,
        }
        return {k: v for k, v in out.items() if v is not None}

    def apply(self, query: Any) -> Any:
        c = _entries.c
        if self.since is not None:
            query = query.where(c.created_at >= midnight(self.since))
        if self.until is not None:
            query = query.where(c.created_at < midnight(self.until) + timedelta(days=1))
        if self.kind is not None:
            query = query.where(c.kind == self.kind)
        if self.actor is not None:
            query = query.where(c.actor.startswith(self.actor, autoescape=True))
        if self.partner is not None:
            query = query.where(c.partner == self.partner)
        if self.artifact_id is not None:
            query = query.where(c.artifact_id == self.artifact_id)
        if self.decision is not None:
            query = query.where(c.decision == self.decision)
        return query


def midnight(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


@dataclass(frozen=True)
class AuditPage:
    entries: list[dict[str, Any]]  # entry objects (``entry_object``), newest first
    newer: int | None  # cursor for the page of newer entries (``after``)
    older: int | None  # cursor for the page of older entries (``before``)


def _exists(session: Session, flt: AuditFilter, cond: Any) -> bool:
    query = flt.apply(sa.select(_entries.c.seq).where(_entries.c.seq.is_not(None), cond))
    return session.execute(query.limit(1)).first() is not None


def audit_page(
    session: Session,
    flt: AuditFilter,
    *,
    before: int | None,
    after: int | None,
    limit: int,
) -> AuditPage:
    """One page of sequenced entries matching ``flt``, newest first (keyset pagination)."""
    seq = _entries.c.seq
    query = flt.apply(sa.select(*entry_columns()).where(seq.is_not(None)))
    if after is not None:
        rows = list(session.execute(query.where(seq > after).order_by(seq.asc()).limit(limit)))
        rows.reverse()
    else:
        if before is not None:
            query = query.where(seq < before)
        rows = list(session.execute(query.order_by(seq.desc()).limit(limit)))
    entries = [row_object(r) for r in rows]
    if not entries:
        return AuditPage([], None, None)
    top, bottom = entries[0]["seq"], entries[-1]["seq"]
    newer = top if _exists(session, flt, seq > top) else None
    older = bottom if _exists(session, flt, seq < bottom) else None
    return AuditPage(entries, newer, older)


def unsequenced_count(session: Session) -> int:
    query = sa.select(sa.func.count()).select_from(_entries).where(_entries.c.seq.is_(None))
    return int(session.execute(query).scalar_one())


# ---------------------------------------------------------------------------------------------
# One entry, its proof and checkpoint


@dataclass(frozen=True)
class Cosigner:
    partner: str
    vkey: str  # the partner's witness key as this node pinned it (type 0x04)
    signed: bool  # whether the chosen checkpoint carries its cosignature


@dataclass(frozen=True)
class EntryView:
    entry: dict[str, Any]  # the entry object as stored now
    leaf: bytes  # its canonical encoding (what the browser re-derives from the fields)
    stored_leaf_hash: bytes | None  # the tree's leaf hash (a hint; the browser recomputes it)
    checkpoint: StoredCheckpoint
    proof: list[bytes]
    log_vkey: str
    cosigners: list[Cosigner]
    latest_size: int

    def protection(self) -> str | None:
        """How the artifact this entry is about was sealed, when the entry records it."""
        try:
            detail = json.loads(self.entry["detail"])
        except (ValueError, TypeError):
            return None
        sealing = detail.get("sealing") if isinstance(detail, dict) else None
        return sealing if sealing in ("post-quantum", "classic") else None

    def detail_pretty(self) -> str:
        try:
            return json.dumps(json.loads(self.entry["detail"]), indent=2, ensure_ascii=False)
        except ValueError:
            return str(self.entry["detail"])

    def verification_data(self) -> dict[str, Any]:
        """Everything the browser needs to verify on its own (embedded as JSON in the page).

        ``seq`` and ``id`` travel as decimal strings so that no JavaScript number rounds them.
        """
        entry = dict(self.entry)
        entry["seq"], entry["id"] = str(entry["seq"]), str(entry["id"])
        return {
            "entry": entry,
            "index": str(self.entry["seq"]),
            "proof": [b64(h) for h in self.proof],
            "checkpoint": self.checkpoint.note.decode("utf-8"),
            "log_key": self.log_vkey,
            "witness_keys": [{"partner": c.partner, "vkey": c.vkey} for c in self.cosigners],
        }


def _choose_checkpoint(
    session: Session, seq: int, size: int | None, witnesses: int
) -> StoredCheckpoint:
    """The checkpoint to verify against: ``size`` if given, else the newest covering ``seq``
    with as many cosignatures as there are witnesses (or fewer, down to none)."""
    if size is not None:
        cp = get_checkpoint(session, size)
        if cp.size <= seq:
            raise InvalidInputError(f"the checkpoint of size {size} does not cover entry {seq}")
        return cp
    for wanted in range(witnesses, -1, -1):
        try:
            cp = latest_checkpoint(session, min_cosignatures=wanted)
        except NotFoundError:
            continue
        if cp.size > seq:
            return cp
    raise NotFoundError(f"entry {seq} is not covered by a checkpoint yet")


def entry_view(node: Node, session: Session, seq: int, *, size: int | None) -> EntryView:
    row = session.execute(sa.select(*entry_columns()).where(_entries.c.seq == seq)).one_or_none()
    if row is None:
        raise NotFoundError(f"no sequenced entry {seq}")
    entry = row_object(row)
    partners = list_partners(session)
    cp = _choose_checkpoint(session, seq, size, len(partners))
    latest = latest_checkpoint(session).size
    return EntryView(
        entry=entry,
        leaf=encode_leaf(entry),
        stored_leaf_hash=stored_leaf_hashes(session, [seq]).get(seq),
        checkpoint=cp,
        proof=inclusion_proof(session, index=seq, size=cp.size),
        log_vkey=log_signer(node).verifier.vkey,
        cosigners=[
            Cosigner(p.node_id, partner_witness_verifier(p).vkey, p.node_id in cp.cosigners)
            for p in partners
        ],
        latest_size=latest,
    )


# ---------------------------------------------------------------------------------------------
# The overview


@dataclass(frozen=True)
class LogStatus:
    origin: str
    log_vkey: str
    witness_vkey: str
    size: int
    checkpoint_at: datetime | None
    cosigned_size: int  # the newest checkpoint with at least one cosignature (0: none)
    cosigners: tuple[str, ...]
    unsequenced: int
    witnesses: int = 0  # partners asked to witness this log (service.audit.witness_choice)
    quorum: int = 0  # how many of them make a checkpoint witnessed
    witnessed_size: int = 0  # the newest checkpoint a quorum cosigned (0: none)


def log_status(node: Node, session: Session) -> LogStatus:
    signer = log_signer(node)
    try:
        cp: StoredCheckpoint | None = latest_checkpoint(session)
    except NotFoundError:
        cp = None
    try:
        cosigned: StoredCheckpoint | None = latest_checkpoint(session, min_cosignatures=1)
    except NotFoundError:
        cosigned = None
    witnesses = len(witnesses_in_use(node)[0])  # the chosen partners and the external ones
    needed = quorum(witnesses, node.settings.witness_quorum)
    try:
        witnessed = latest_checkpoint(session, min_cosignatures=needed).size if needed else 0
    except NotFoundError:
        witnessed = 0
    return LogStatus(
        origin=signer.name,
        log_vkey=signer.verifier.vkey,
        witness_vkey=witness_cosigner(node).verifier.vkey,
        size=cp.size if cp else 0,
        checkpoint_at=cp.created_at if cp else None,
        cosigned_size=cosigned.size if cosigned else 0,
        cosigners=cosigned.cosigners if cosigned else (),
        unsequenced=unsequenced_count(session),
        witnesses=witnesses,
        quorum=needed,
        witnessed_size=witnessed,
    )


@dataclass(frozen=True)
class PartnerView:
    node_id: str
    name: str
    url: str
    fingerprint: str  # grouped for reading aloud
    descriptor_expires: datetime
    policy: Policy | None
    policy_in_force: bool
    witness_cosigned: int  # our log size this partner's witness last cosigned
    witness_error: str | None
    last_pull: datetime | None
    pull_error: str | None
    pending: int = 0  # deliveries and notices waiting for this partner
    oldest_pending: datetime | None = None  # since when the oldest of them waits


def partner_views(node: Node, session: Session) -> list[PartnerView]:
    now = node.now()
    witness = {w.partner: w for w in session.exec(select(AuditWitnessSubmission))}
    pulls = {p.partner: p for p in session.exec(select(PullState))}
    waiting = {
        str(partner): (int(n), first)
        for partner, n, first in session.execute(
            sa.select(col(Outbox.partner), sa.func.count(), sa.func.min(col(Outbox.created_at)))
            .where(col(Outbox.state) == "pending")
            .group_by(col(Outbox.partner))
        )
    }
    out = []
    for p in list_partners(session):
        policy = node.policies.current.at(p.node_id, now)  # the terms in force now
        w, pull = witness.get(p.node_id), pulls.get(p.node_id)
        out.append(
            PartnerView(
                node_id=p.node_id,
                name=p.name,
                url=p.url,
                fingerprint=format_fingerprint(p.fingerprint),
                descriptor_expires=p.descriptor_expires,
                policy=policy,
                policy_in_force=policy is not None and policy.in_force(now),
                witness_cosigned=w.cosigned_size if w else 0,
                witness_error=w.last_error if w else None,
                last_pull=pull.last_pull_at if pull else None,
                pull_error=pull.last_error if pull else None,
                pending=waiting.get(p.node_id, (0, None))[0],
                oldest_pending=waiting.get(p.node_id, (0, None))[1],
            )
        )
    return out


def partner_ids(session: Session) -> list[str]:
    return [p.node_id for p in session.exec(select(Partner).order_by(Partner.node_id))]


@dataclass(frozen=True)
class Activity:
    """Counts per series and time bucket: ``counts[series][i]`` for bucket ``starts[i]``."""

    step: timedelta
    starts: list[datetime]
    counts: dict[str, list[int]] = field(default_factory=dict)

    @property
    def unit(self) -> str:
        seconds = self.step.total_seconds()
        return "day" if seconds >= 86400 else ("hour" if seconds >= 3600 else "5 minutes")


# (bucket width, number of buckets): the finest whose window covers the log's age is used.
_GRAINS: Sequence[tuple[timedelta, int]] = (
    (timedelta(minutes=5), 24),
    (timedelta(hours=1), 48),
    (timedelta(days=1), 30),
)


def activity(session: Session, *, now: datetime) -> Activity:
    """Shares, reads and denials over time, in buckets sized to the log's age."""
    first = session.execute(sa.select(sa.func.min(_entries.c.created_at))).scalar_one_or_none()
    age = now - first if isinstance(first, datetime) else timedelta(0)
    step, n = _GRAINS[-1]
    for grain, count in _GRAINS:
        if age <= grain * count:
            step, n = grain, count
            break
    width = int(step.total_seconds())
    epoch = int(now.timestamp())
    end = datetime.fromtimestamp((epoch // width + 1) * width, UTC)
    starts = [end - step * (n - i) for i in range(n)]
    c = _entries.c
    bucket = sa.case(*((c.created_at < s + step, i) for i, s in enumerate(starts)), else_=n - 1)
    kinds = sorted({k for ks in SERIES.values() for k in ks})
    inner = (
        sa.select(bucket.label("b"), c.kind.label("k"))
        .where(c.created_at >= starts[0], c.created_at < end, c.kind.in_(kinds))
        .subquery()
    )
    rows = session.execute(
        sa.select(inner.c.b, inner.c.k, sa.func.count()).group_by(inner.c.b, inner.c.k)
    )
    counts = {name: [0] * n for name in SERIES}
    series_of = {k: name for name, ks in SERIES.items() for k in ks}
    for b, k, total in rows:
        counts[series_of[k]][int(b)] += int(total)
    return Activity(step=step, starts=starts, counts=counts)
