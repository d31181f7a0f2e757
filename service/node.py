"""The running node: settings, home, unlocked keys, database and clock, built once per process.

Routers and workers receive a :class:`Node` instead of reaching for globals.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from crypto.dsse import Envelope
from service.agreements import AgreementKeys
from service.blobs import FileBlobStore
from service.db import Database, open_database
from service.home import Home, NodeKeys, open_home
from service.metrics import Metrics
from service.policy_store import PolicyStore
from service.settings import Settings

__all__ = ["Clock", "Node", "load_node", "system_clock"]

Clock = Callable[[], datetime]


def system_clock() -> datetime:
    return datetime.now(UTC)


@dataclass
class Node:
    settings: Settings
    home: Home
    keys: NodeKeys
    db: Database
    blobs: FileBlobStore
    policies: PolicyStore
    clock: Clock = field(default=system_clock)
    metrics: Metrics = field(default_factory=Metrics)

    @property
    def node_id(self) -> str:
        return self.home.node_id

    def descriptor(self) -> Envelope:
        return self.home.descriptor_envelope()

    def now(self) -> datetime:
        return self.clock()


def load_node(settings: Settings, *, migrate: bool = True) -> Node:
    """Open the home, unlock its keys, open (and migrate) the database, hold the policy set."""
    home = open_home(settings.require_home())
    keys = home.unlock(settings)
    db = open_database(settings.resolved_database_url(), migrate=migrate)
    blobs = FileBlobStore(
        settings.resolved_blob_dir(),
        fsync_threads=settings.blob_fsync_threads,
        syncfs=settings.blob_syncfs,
    )
    agreements = AgreementKeys(
        home.node_id, keys.keysets, db, require_signed=settings.signed_agreements_required
    )
    policies = PolicyStore(home.policies_dir, db=db, agreements=agreements)
    node = Node(settings=settings, home=home, keys=keys, db=db, blobs=blobs, policies=policies)
    policies.start(
        actor="node:start", now=node.now()
    )  # the database's newest version, or the folder
    return node
