"""The node's active MOU policy set: loaded from ``<home>/policies``, reloadable, audited.

Loading is all-or-nothing: a folder with any invalid file keeps the previous set in force and
reports the error (fail closed: with no valid set loaded, every request is denied). Each change of
the active set's digest is a ``policy.set_changed`` audit event.
"""

from __future__ import annotations

import json
import threading
from datetime import datetime
from pathlib import Path

from sqlmodel import Session, select

from policies import Decision, PolicySet, Request, evaluate, load_dir
from service.audit.log import record
from service.models import AuditEntry

__all__ = ["PolicyStore"]


class PolicyStore:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._lock = threading.Lock()
        self._set = PolicySet.empty()
        self._digest: str | None = None

    @property
    def current(self) -> PolicySet:
        return self._set

    def load(self) -> PolicySet:
        """Parse the folder; raises ``policies.errors.PolicyError`` and keeps the old set."""
        loaded = load_dir(self.folder) if self.folder.is_dir() else PolicySet.empty()
        with self._lock:
            self._set = loaded
        return loaded

    def sync_audit(self, session: Session, *, actor: str, now: datetime) -> bool:
        """Record a ``policy.set_changed`` event if the active set differs from the last recorded.

        The last recorded digest is read from the audit log itself, so restarts and replicas
        agree on whether anything changed.
        """
        digest = self._set.sha256
        last = session.exec(
            select(AuditEntry.detail)
            .where(AuditEntry.kind == "policy.set_changed")
            .order_by(AuditEntry.id.desc())  # type: ignore[union-attr]
            .limit(1)
        ).first()
        previous = json.loads(last).get("sha256") if last else None
        if digest == previous:
            return False
        self._digest = digest
        record(
            session,
            kind="policy.set_changed",
            actor=actor,
            detail={"sha256": digest, "previous": previous, "policies": self._set.refs()},
            now=now,
        )
        return True

    def decide(self, request: Request, *, now: datetime) -> Decision:
        return evaluate(self._set, request, now=now)
