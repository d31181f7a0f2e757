"""The running node: settings, home, unlocked keys, database and clock, built once per process.

Routers and workers receive a :class:`Node` instead of reaching for globals.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from crypto.dsse import Envelope
from service.agreements import AgreementKeys
from service.blob_journal import DbBlobJournal
from service.blobs import BlobStore, FileBlobStore
from service.db import Database, open_database
from service.doorbell import Doorbell
from service.home import Home, NodeKeys, open_home
from service.metrics import Metrics
from service.policy_store import PolicyStore
from service.settings import Settings

__all__ = ["Clock", "Node", "load_node", "open_blob_store", "system_clock"]

Clock = Callable[[], datetime]


def system_clock() -> datetime:
    return datetime.now(UTC)


@dataclass
class Node:
    settings: Settings
    home: Home
    keys: NodeKeys
    db: Database
    blobs: BlobStore
    policies: PolicyStore
    clock: Clock = field(default=system_clock)
    metrics: Metrics = field(default_factory=Metrics)
    # Rung whenever this process commits outbox rows, by whatever path (``__post_init__``):
    # the delivery worker starts them at once instead of at its next poll
    # (ENTENTE_SYNC_INTERVAL_SECONDS, the fallback for rows other processes commit).
    deliveries: Doorbell = field(default_factory=Doorbell)

    def __post_init__(self) -> None:
        self.db.after_inserts_commit("outbox", self.deliveries.ring)

    @property
    def node_id(self) -> str:
        return self.home.node_id

    def descriptor(self) -> Envelope:
        return self.home.descriptor_envelope()

    def now(self) -> datetime:
        return self.clock()


def open_blob_store(settings: Settings, db: Database) -> BlobStore:
    """The blob store the settings name (``ENTENTE_BLOB_URL``: an S3-compatible object store;
    unset, the folder ``ENTENTE_BLOB_DIR``), journaling its blobs in flight in ``db``."""
    journal = DbBlobJournal(db)
    if settings.blob_location() is not None:
        from service.blobs_s3 import S3BlobStore  # boto3 is imported only when it is used

        return S3BlobStore.from_settings(settings, journal=journal)
    return FileBlobStore(
        settings.resolved_blob_dir(),
        fsync_threads=settings.blob_fsync_threads,
        syncfs=settings.blob_syncfs,
        journal=journal,
        heartbeat_seconds=settings.blob_orphan_grace_seconds / 4,  # a write's claim stays young
    )


def load_node(settings: Settings, *, migrate: bool = True) -> Node:
    """Open the home, unlock its keys, open (and migrate) the database, hold the policy set."""
    home = open_home(settings.require_home())
    keys = home.unlock(settings)
    db = open_database(
        settings.resolved_database_url(), migrate=migrate, pool_size=settings.database_pool_size
    )
    blobs = open_blob_store(settings, db)
    agreements = AgreementKeys(
        home.node_id, keys.keysets, db, require_signed=settings.signed_agreements_required
    )
    policies = PolicyStore(home.policies_dir, db=db, agreements=agreements)
    node = Node(settings=settings, home=home, keys=keys, db=db, blobs=blobs, policies=policies)
    policies.start(
        actor="node:start", now=node.now()
    )  # the database's newest version, or the folder
    return node
