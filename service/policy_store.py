"""The node's active MOU policy set: versioned in the database, so every replica decides alike.

A reload (``entente policy reload``, ``POST /v1/admin/policies/reload``) reads ``<home>/policies``
and, all or nothing, writes the files as loaded and validated (bytes and SHA-256) as a new
version: one transaction holds the version row, its files and the ``policy.set_changed`` audit
entry. A folder with any invalid file writes nothing and keeps the version in force; a reload that
changes nothing writes nothing. Versions only grow; the highest committed one is in force.

At start a node decides on the newest version in the database; only a database without one (the
first start, or the first after migration 0010) publishes the folder as version 1. A folder edited
but not reloaded does not change the terms, not even at a restart (the node logs that it differs).

The version rule (why a check per request, not a cache refreshed every few seconds): after a reload
through replica A has answered, the next request may reach replica B, and must be decided on the
new terms ("201 against 403" otherwise). No interval is short enough for that, so a replica reads
the committed version number (one primary-key query, ``max(version)``) once per HTTP request,
lazily at its first decision, and decides that whole request (every partner of a share) on the
snapshot it then holds: never older than any version committed before the request began, and one
version for the whole request. Parsing happens only when the number moved. The snapshot held by a
replica only moves forward (:func:`newer`), whichever thread read the newer number first. Work
outside a request decides in units under the same rule (:func:`decision_scope`): a pulled feed
page, a retention round (before, a page of 500 received artifacts read the number 500 times, and a
retention round at least once per artifact it looked at); anything else checks at every decision.
The evaluator itself (``policies.evaluate``) is unchanged and never touches the database.

Signed agreements (``*.agreement.json``) are files of a version like the node's own YAML files;
the set in force is assembled from both (``policies._agreement.assemble``): terms count only
when every party's officer signed them (checked by ``service.agreements`` when a version is
published, and again when it is read back), and a local file may only add forbids to them.

It does not evaluate (``policies``) or enforce (``artifacts/enforce``); it does not watch the
folder; and it fails closed: a version that cannot be read or parsed is a
:class:`service.errors.DatabaseError`, never a decision on other terms.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlmodel import Session, col, select

from policies import Decision, PolicySet, Request, evaluate, load_policy, policy_files
from policies._assemble import AgreementStatus, Held, assemble, partner_accepts, receiver
from policies.errors import PolicyError, PolicyLoadError
from service.agreements import AGREEMENT_SUFFIX, AgreementKeys, is_agreement_file
from service.audit.log import record
from service.db import Database
from service.errors import DatabaseError
from service.models import AuditEntry, PolicyVersion, PolicyVersionFile

__all__ = ["PolicyScope", "PolicyStore", "Published", "Snapshot", "decision_scope", "newer"]

log = logging.getLogger(__name__)

_PUBLISH_ATTEMPTS = 5  # concurrent reloads through two replicas: the loser renumbers and retries


@dataclass(frozen=True)
class Snapshot:
    """One version of the active set, parsed. Version 0 is the empty set held before any load.

    ``agreements`` are the signed agreements it holds (adopted, superseded or only proposed);
    ``unsigned`` the partners whose permits come from an unsigned local file.
    """

    version: int
    policies: PolicySet
    agreements: tuple[AgreementStatus, ...] = ()
    unsigned: tuple[str, ...] = ()
    theirs: Mapping[str, PolicySet] = field(default_factory=dict)  # partners' signed terms

    @property
    def sha256(self) -> str:
        """The version's digest: the policies' alone while no agreement is held (so versions
        written before agreements existed keep their digest), else with each agreement's."""
        if not self.agreements:
            return self.policies.sha256
        held = sorted((a.sha256, a.state, tuple(a.signed_by)) for a in self.agreements)
        canonical = json.dumps([self.policies.sha256, held], separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True)
class Published:
    """What a reload did: the snapshot now in force and whether it is a new version."""

    snapshot: Snapshot
    changed: bool


def newer(held: Snapshot, candidate: Snapshot) -> Snapshot:
    """The version rule: a replica's snapshot is replaced only by a strictly higher version."""
    return candidate if candidate.version > held.version else held


class _RequestCheck:
    """The snapshot one HTTP request decides on, fixed at its first decision."""

    __slots__ = ("snapshot",)

    def __init__(self) -> None:
        self.snapshot: Snapshot | None = None


_REQUEST: ContextVar[_RequestCheck | None] = ContextVar("entente_policy_check", default=None)
# Built once: SQLAlchemy then finds the compiled statement by its memoized cache key.
_NEWEST_VERSION = sa.select(sa.func.max(col(PolicyVersion.version)))


@contextmanager
def decision_scope() -> Iterator[None]:
    """Decide everything inside on one snapshot, the one in force at its first decision (the
    version rule for one unit of work: an HTTP request, a pulled feed page, a retention round).
    Inside another scope, the outer one holds."""
    if _REQUEST.get() is not None:
        yield
        return
    token = _REQUEST.set(_RequestCheck())
    try:
        yield
    finally:
        _REQUEST.reset(token)


class PolicyScope:
    """ASGI middleware: each HTTP request checks the committed policy version once."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        with decision_scope():
            await self.app(scope, receive, send)


class PolicyStore:
    """The active set of one node: the folder it reloads from and the database it versions in."""

    def __init__(
        self, folder: Path, *, db: Database, agreements: AgreementKeys | None = None
    ) -> None:
        self.folder = folder
        self._db = db
        self._agreements = agreements
        self._lock = threading.Lock()
        self._held = Snapshot(0, PolicySet.empty())

    # --- deciding -----------------------------------------------------------------------------

    @property
    def current(self) -> PolicySet:
        """The set in force for this request (see the version rule in the module docstring)."""
        return self.snapshot().policies

    @property
    def version(self) -> int:
        return self.snapshot().version

    @property
    def agreements(self) -> tuple[AgreementStatus, ...]:
        return self.snapshot().agreements

    def decide(self, request: Request, *, now: datetime) -> Decision:
        """Decide on the set in force; a share that the receiving partner's signed terms would
        refuse is denied here, before it leaves (reason ``partner-refuses``)."""
        snapshot = self.snapshot()
        decision = evaluate(snapshot.policies, request, now=now)
        target = receiver(decision) if decision.allowed else None
        theirs = snapshot.theirs.get(target) if target is not None else None
        if theirs is None or self._agreements is None:
            return decision
        return partner_accepts(decision, theirs, self._agreements.node_id)

    def snapshot(self) -> Snapshot:
        check = _REQUEST.get()
        if check is not None and check.snapshot is not None:
            return check.snapshot
        snapshot = self._at_least(self._committed_version())
        if check is not None:
            check.snapshot = snapshot
        return snapshot

    def _committed_version(self) -> int:
        try:
            with self._db.engine.connect() as conn:
                found = conn.execute(_NEWEST_VERSION).scalar()
        except SQLAlchemyError as exc:
            raise DatabaseError(
                f"the committed policy version could not be read: {type(exc).__name__}"
            ) from None
        return int(found or 0)

    def _at_least(self, version: int) -> Snapshot:
        with self._lock:
            if self._held.version >= version:
                return self._held
            with self._db.session() as session:
                self._held = newer(self._held, self._read_newest(session))
            return self._held

    # --- loading and publishing ---------------------------------------------------------------

    def start(self, *, actor: str, now: datetime) -> Snapshot:
        """Hold the newest committed version; with none yet, publish the folder (first start)."""
        with self._db.session() as session:
            newest = self._read_newest(session)
        if newest.version == 0:
            return self.reload(actor=actor, now=now).snapshot
        with self._lock:
            self._held = newer(self._held, newest)
        self._warn_if_folder_differs(newest, now)
        return newest

    def reload(self, *, actor: str, now: datetime) -> Published:
        """Read and validate the folder, and commit it as a new version if it changed.

        Raises ``policies.errors.PolicyError`` (nothing written; the version in force stays).
        """
        return self.publish(self._read_folder(), actor=actor, now=now)

    def preview(self, *, now: datetime) -> Snapshot:
        """What a reload would commit now, checked as strictly (signatures included), nothing
        written. Raises ``policies.errors.PolicyError`` as a reload would."""
        return self._parse(self._read_folder(), now=now, strict=True)

    def publish(
        self, files: Sequence[tuple[str, bytes]], *, actor: str, now: datetime
    ) -> Published:
        """Commit ``files`` (name, bytes) as the next version: all or nothing, audited."""
        loaded = self._parse(files, now=now, strict=True)
        for _attempt in range(_PUBLISH_ATTEMPTS):
            try:
                with self._db.session() as session:
                    published = self._write(session, files, loaded, actor=actor, now=now)
            except IntegrityError:
                continue  # another replica committed this version number first: renumber
            with self._lock:
                self._held = newer(self._held, published.snapshot)
            return published
        raise DatabaseError(
            "the policy set could not be committed: concurrent reloads kept winning"
        )

    def _write(
        self,
        session: Session,
        files: Sequence[tuple[str, bytes]],
        loaded: Snapshot,
        *,
        actor: str,
        now: datetime,
    ) -> Published:
        newest = session.exec(
            select(PolicyVersion).order_by(col(PolicyVersion.version).desc()).limit(1)
        ).first()
        if newest is not None and newest.sha256 == loaded.sha256:
            return Published(replace(loaded, version=newest.version), changed=False)
        version = (newest.version if newest is not None else 0) + 1
        session.add(
            PolicyVersion(version=version, sha256=loaded.sha256, created_at=now, actor=actor)
        )
        session.flush()  # the version row first: its files refer to it
        for name, content in files:
            session.add(
                PolicyVersionFile(
                    version=version,
                    name=name,
                    sha256=_sha256(content),
                    content=content,
                )
            )
        previous = newest.sha256 if newest is not None else _last_audited(session)
        changed = loaded.sha256 != previous
        if changed:  # (an upgraded node's first version may restate what the log already has)
            record(
                session,
                kind="policy.set_changed",
                actor=actor,
                detail={
                    "sha256": loaded.sha256,
                    "previous": previous,
                    "version": version,
                    "policies": loaded.policies.refs(),
                    **(
                        {"agreements": [a.to_json() for a in loaded.agreements]}
                        if loaded.agreements
                        else {}
                    ),
                },
                now=now,
            )
        session.flush()  # a concurrent reload's version number fails here, inside the retry
        return Published(replace(loaded, version=version), changed=changed)

    def _read_newest(self, session: Session) -> Snapshot:
        row = session.exec(
            select(PolicyVersion).order_by(col(PolicyVersion.version).desc()).limit(1)
        ).first()
        if row is None:
            return Snapshot(0, PolicySet.empty())
        files = session.exec(
            select(PolicyVersionFile)
            .where(PolicyVersionFile.version == row.version)
            .order_by(col(PolicyVersionFile.name))
        ).all()
        try:
            loaded = self._parse(
                [(f.name, f.content) for f in files], now=row.created_at, strict=False
            )
        except PolicyError as exc:
            raise DatabaseError(
                f"the policy set in force (version {row.version}) could not be loaded: {exc}"
            ) from None
        dropped = sum(1 for f in files if is_agreement_file(f.name)) - len(loaded.agreements)
        if loaded.sha256 != row.sha256 and not dropped:  # (a dropped one was logged)
            raise DatabaseError(
                f"the policy set in force (version {row.version}) does not match its digest"
            )
        return replace(loaded, version=row.version)

    def _read_folder(self) -> list[tuple[str, bytes]]:
        if not self.folder.is_dir():
            return []
        out = []
        agreements = sorted(p for p in self.folder.glob(f"*{AGREEMENT_SUFFIX}") if p.is_file())
        for path in [*policy_files(self.folder), *agreements]:
            try:
                out.append((path.name, path.read_bytes()))
            except OSError as exc:
                raise PolicyLoadError(
                    str(path), [(0, f"cannot read the file: {exc.strerror}")]
                ) from None
        return out

    def _parse(
        self, files: Sequence[tuple[str, bytes]], *, now: datetime, strict: bool
    ) -> Snapshot:
        local = [
            load_policy(content, source=str(self.folder / name))
            for name, content in files
            if not is_agreement_file(name)
        ]
        signed = [(name, content) for name, content in files if is_agreement_file(name)]
        if not signed and (self._agreements is None or not self._agreements.require_signed):
            return Snapshot(0, PolicySet.from_policies(local))  # no agreement: as before
        if self._agreements is None:
            raise PolicyLoadError(
                signed[0][0], [(0, "this node cannot check agreements' signatures")]
            )
        held: list[Held] = []
        for name, content in signed:
            h = self._agreements.held(name, content, now=now, strict=strict)
            if h is not None:
                held.append(h)
        out = assemble(
            self._agreements.node_id,
            local=local,
            held=held,
            require_signed=self._agreements.require_signed,
        )
        return Snapshot(0, out.policies, out.agreements, out.unsigned, out.theirs)

    def _warn_if_folder_differs(self, held: Snapshot, now: datetime) -> None:
        try:
            folder = self._parse(self._read_folder(), now=now, strict=False)
        except PolicyError as exc:
            log.warning(
                "policy folder %s does not load (%s); version %d stays in force",
                self.folder,
                exc,
                held.version,
            )
            return
        if folder.sha256 != held.sha256:
            log.warning(
                "policy folder %s differs from the set in force (version %d): "
                "`entente policy reload` applies it",
                self.folder,
                held.version,
            )


def _sha256(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


def _last_audited(session: Session) -> str | None:
    last = session.exec(
        select(AuditEntry.detail)
        .where(AuditEntry.kind == "policy.set_changed")
        .order_by(col(AuditEntry.id).desc())
        .limit(1)
    ).first()
    previous = json.loads(last).get("sha256") if last else None
    return previous if isinstance(previous, str) else None
