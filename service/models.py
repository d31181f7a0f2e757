"""Database tables (SQLModel). Schema changes go through Alembic (``service/migrations``).

Times are stored as timezone-aware UTC (``UTCDateTime``) so SQLite and PostgreSQL agree.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Dialect
from sqlmodel import Field, SQLModel

__all__ = [
    "Approval",
    "Artifact",
    "AuditEntry",
    "BlobInFlight",
    "IdempotencyKey",
    "Outbox",
    "Partner",
    "PartnerKey",
    "PolicyVersion",
    "PolicyVersionFile",
    "PullState",
    "ReceivedNotice",
    "SeenNonce",
    "Token",
    "UTCDateTime",
    "Upload",
    "UploadSegment",
    "Webhook",
    "utcnow",
]


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(sa.types.TypeDecorator[datetime]):
    """A timestamp that is always timezone-aware UTC in Python, whatever the database."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if not isinstance(value, datetime):
            raise TypeError(f"expected a datetime from the database, got {type(value).__name__}")
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# SQLite only auto-increments an INTEGER PRIMARY KEY; PostgreSQL gets a BIGINT identity.
_BIGINT_PK = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


class Partner(SQLModel, table=True):
    """A pinned partner node: its current descriptor and keys."""

    __tablename__ = "partners"

    node_id: str = Field(primary_key=True, max_length=63)
    name: str = Field(max_length=200)
    url: str = Field(max_length=2048)
    fingerprint: str = Field(max_length=64, index=True)
    signing_key: str = Field(max_length=64)  # base64 raw Ed25519
    age_recipient: str = Field(max_length=4096)
    pq_recipient: str | None = Field(default=None, max_length=4096)
    mldsa_key: str | None = Field(default=None, sa_column=sa.Column(sa.Text))  # base64 ML-DSA-65
    checkpoint_key: str | None = Field(default=None, max_length=64)  # base64 raw Ed25519
    descriptor: str = Field(sa_column=sa.Column(sa.Text, nullable=False))  # DSSE JSON
    descriptor_expires: datetime = Field(sa_column=sa.Column(UTCDateTime(), nullable=False))
    added_at: datetime = Field(sa_column=sa.Column(UTCDateTime(), nullable=False))
    updated_at: datetime = Field(sa_column=sa.Column(UTCDateTime(), nullable=False))


class PartnerKey(SQLModel, table=True):
    """Every signing key a partner has used: old keys keep verifying old artifacts."""

    __tablename__ = "partner_keys"

    fingerprint: str = Field(primary_key=True, max_length=64)
    node_id: str = Field(index=True, max_length=63)
    public_key: str = Field(max_length=64)  # base64 raw Ed25519
    mldsa_key: str | None = Field(default=None, sa_column=sa.Column(sa.Text))  # its ML-DSA-65 twin
    added_at: datetime = Field(sa_column=sa.Column(UTCDateTime(), nullable=False))
    retired_at: datetime | None = Field(default=None, sa_column=sa.Column(UTCDateTime()))


class Token(SQLModel, table=True):
    """A bearer token for a local user. Only its SHA-256 is stored."""

    __tablename__ = "tokens"

    id: str = Field(primary_key=True, max_length=32)  # public handle, e.g. tok_3fa9c2
    name: str = Field(max_length=200)
    role: str = Field(max_length=16)
    token_hash: str = Field(max_length=64, unique=True)
    created_at: datetime = Field(sa_column=sa.Column(UTCDateTime(), nullable=False))
    revoked_at: datetime | None = Field(default=None, sa_column=sa.Column(UTCDateTime()))


class AuditEntry(SQLModel, table=True):
    """One audit event. ``seq`` (the log index) is assigned when the entry joins the Merkle tree.

    Rows are written in the same transaction as the action they record; the sequencer assigns
    ``seq`` in batches and commits the tree. ``leaf_hash`` is recomputed by every verifier from the
    other fields, so editing any of them is detected.
    """

    __tablename__ = "audit_entries"

    id: int | None = Field(
        default=None,
        sa_column=sa.Column(_BIGINT_PK, primary_key=True, autoincrement=True),
    )
    seq: int | None = Field(default=None, sa_column=sa.Column(sa.BigInteger, unique=True))
    created_at: datetime = Field(sa_column=sa.Column(UTCDateTime(), nullable=False, index=True))
    kind: str = Field(max_length=64, index=True)
    actor: str = Field(max_length=200)
    partner: str | None = Field(default=None, max_length=63, index=True)
    artifact_id: str | None = Field(default=None, max_length=64, index=True)
    digest: str | None = Field(default=None, max_length=64)
    decision: str | None = Field(default=None, max_length=16)
    rule: str | None = Field(default=None, max_length=200)
    clause: str | None = Field(default=None, max_length=500)
    detail: str = Field(default="{}", sa_column=sa.Column(sa.Text, nullable=False))


class Artifact(SQLModel, table=True):
    """A shared artifact, sent by this node or received from a partner.

    The row holds metadata, the signed manifest and the address of the ciphertext blob; never
    plaintext. ``origin`` signed the manifest; ``sender`` delivered it (differs on onward shares).

    An artifact is identified by its origin and the id its origin gave it, ``(id, origin)``: an
    id names an artifact only within its origin's namespace, so no other node (a co-recipient
    that learned the id) can take it. Every reference to an artifact carries its origin too
    (``Outbox.artifact_origin``, ``upstream_from``).
    """

    __tablename__ = "artifacts"
    __table_args__ = (sa.Index("ix_artifacts_listing", "recorded_at", "id"),)  # newest first

    id: str = Field(primary_key=True, max_length=64)  # unique per origin
    direction: str = Field(max_length=8, index=True)  # sent | received
    origin: str = Field(primary_key=True, max_length=63, index=True)
    sender: str = Field(max_length=63, index=True)
    title: str = Field(max_length=500)
    tlp: str = Field(max_length=32, index=True)
    sealing: str = Field(default="classic", max_length=16)  # post-quantum | classic
    topics: str = Field(default="[]", sa_column=sa.Column(sa.Text, nullable=False))  # JSON list
    purposes: str = Field(default="[]", sa_column=sa.Column(sa.Text, nullable=False))  # JSON list
    recipients: str = Field(default="[]", sa_column=sa.Column(sa.Text, nullable=False))  # JSON
    created_at: datetime = Field(sa_column=sa.Column(UTCDateTime(), nullable=False, index=True))
    recorded_at: datetime = Field(sa_column=sa.Column(UTCDateTime(), nullable=False))
    embargo_until: datetime | None = Field(default=None, sa_column=sa.Column(UTCDateTime()))
    expires_at: datetime | None = Field(default=None, sa_column=sa.Column(UTCDateTime()))
    size: int = Field(sa_column=sa.Column(sa.BigInteger, nullable=False))  # plaintext bytes
    sha256: str = Field(max_length=64)  # plaintext digest (signed in the manifest)
    # the ciphertext's address; None once deleted. Indexed: a blob is deleted only once no row
    # refers to it (service/artifacts/sweep.drop_unreferenced)
    blob: str | None = Field(default=None, max_length=64, index=True)
    ciphertext_size: int = Field(sa_column=sa.Column(sa.BigInteger, nullable=False))
    header_sha256: str = Field(max_length=64)
    manifest: str = Field(sa_column=sa.Column(sa.Text, nullable=False))  # DSSE envelope JSON
    policy_ref: str = Field(default="{}", sa_column=sa.Column(sa.Text, nullable=False))  # JSON
    obligations: str = Field(default="[]", sa_column=sa.Column(sa.Text, nullable=False))  # JSON
    revoked_at: datetime | None = Field(default=None, sa_column=sa.Column(UTCDateTime()))
    revocation_reason: str | None = Field(default=None, max_length=500)
    deleted_at: datetime | None = Field(default=None, sa_column=sa.Column(UTCDateTime()))
    receipt: str | None = Field(default=None, sa_column=sa.Column(sa.Text))  # ours, if received
    # Onward shares: the artifact this one was passed on from (its chain's last link: its id
    # and its origin) and the node that first shared it (the chain's root). None for an
    # original share.
    upstream_id: str | None = Field(default=None, max_length=64, index=True)
    upstream_from: str | None = Field(default=None, max_length=63)
    upstream_origin: str | None = Field(default=None, max_length=63)
    # From the signed manifest: the original file name, and an evaluation log's summary (JSON,
    # service.evaluations) with its task and model for the listing's filters (migration 0014).
    filename: str | None = Field(default=None, max_length=255)
    evaluation: str | None = Field(default=None, sa_column=sa.Column(sa.Text))
    eval_task: str | None = Field(default=None, max_length=200, index=True)
    eval_model: str | None = Field(default=None, max_length=200, index=True)
    # The retention worker's bookkeeping (service.artifacts.retention, migration 0018): when the
    # retention terms make this copy's deletion due (None: no term ever will), as worked out
    # under policy version ``retention_version`` (-1: not yet). A round looks only at the rows
    # holding ciphertext that are due, revoked, or worked out under an older version.
    retention_due_at: datetime | None = Field(default=None, sa_column=sa.Column(UTCDateTime()))
    retention_version: int = Field(
        default=-1, sa_column=sa.Column(sa.Integer, nullable=False, default=-1, server_default="-1")
    )


# The retention worker's ways in, each over the rows that still hold ciphertext only (the
# revoked ones: a partial index of exactly those; over all held rows, SQLite's planner with
# statistics took IS NOT NULL as unselective and scanned, measured on 50,000 rows).
_artifacts = Artifact.__table__  # type: ignore[attr-defined]
_held = _artifacts.c.blob.is_not(None)
_held_revoked = sa.and_(_held, _artifacts.c.revoked_at.is_not(None))
for _name, _column, _where in (
    ("ix_artifacts_held_retention_due", _artifacts.c.retention_due_at, _held),
    ("ix_artifacts_held_retention_version", _artifacts.c.retention_version, _held),
    ("ix_artifacts_held_revoked", _artifacts.c.revoked_at, _held_revoked),
):
    sa.Index(_name, _column, sqlite_where=_where, postgresql_where=_where)


class Outbox(SQLModel, table=True):
    """Work for a partner: deliver an artifact, or send a notice (revocation, access notice).

    Rows are created in the transaction of the action that needs them, claimed by a worker with a
    lease (``FOR UPDATE SKIP LOCKED`` on PostgreSQL), and completed when the partner's signed
    receipt is stored. ``id`` doubles as the partner's feed cursor for deliveries.
    """

    __tablename__ = "outbox"
    __table_args__ = (sa.Index("ix_outbox_due", "state", "next_attempt_at"),)

    id: int | None = Field(
        default=None,
        sa_column=sa.Column(_BIGINT_PK, primary_key=True, autoincrement=True),
    )
    partner: str = Field(max_length=63, index=True)
    kind: str = Field(max_length=16)  # deliver | notice | descriptor
    artifact_id: str = Field(max_length=64, index=True)
    # The artifact's origin: this node, but the partner's for an access notice (None for a
    # descriptor, whose artifact_id is a key fingerprint).
    artifact_origin: str | None = Field(default=None, max_length=63)
    payload: str = Field(default="{}", sa_column=sa.Column(sa.Text, nullable=False))  # JSON
    state: str = Field(default="pending", max_length=12)  # pending | delivered | failed
    attempts: int = Field(default=0)
    created_at: datetime = Field(sa_column=sa.Column(UTCDateTime(), nullable=False))
    next_attempt_at: datetime = Field(sa_column=sa.Column(UTCDateTime(), nullable=False))
    lease_owner: str | None = Field(default=None, max_length=64)
    lease_until: datetime | None = Field(default=None, sa_column=sa.Column(UTCDateTime()))
    last_error: str | None = Field(default=None, max_length=1000)
    delivered_at: datetime | None = Field(default=None, sa_column=sa.Column(UTCDateTime()))
    receipt: str | None = Field(default=None, sa_column=sa.Column(sa.Text))  # signed receipt JSON


class SeenNonce(SQLModel, table=True):
    """RFC 9421 nonces already accepted, per partner key: a replay is refused on every replica."""

    __tablename__ = "seen_nonces"

    keyid: str = Field(primary_key=True, max_length=64)
    nonce: str = Field(primary_key=True, max_length=128)
    seen_at: datetime = Field(sa_column=sa.Column(UTCDateTime(), nullable=False, index=True))


class PullState(SQLModel, table=True):
    """How far this node has read each partner's feed (catch-up after a partition)."""

    __tablename__ = "pull_state"

    partner: str = Field(primary_key=True, max_length=63)
    cursor: int = Field(default=0, sa_column=sa.Column(sa.BigInteger, nullable=False))
    last_pull_at: datetime | None = Field(default=None, sa_column=sa.Column(UTCDateTime()))
    last_error: str | None = Field(default=None, max_length=1000)
    last_ok_at: datetime | None = Field(default=None, sa_column=sa.Column(UTCDateTime()))


class ReceivedNotice(SQLModel, table=True):
    """Notices (revocations, access notices) accepted from partners, for idempotent replies."""

    __tablename__ = "received_notices"

    partner: str = Field(primary_key=True, max_length=63)
    notice_id: int = Field(primary_key=True, sa_column_kwargs={"autoincrement": False})
    kind: str = Field(max_length=16)
    artifact_id: str = Field(max_length=64, index=True)
    received_at: datetime = Field(sa_column=sa.Column(UTCDateTime(), nullable=False))
    receipt: str = Field(sa_column=sa.Column(sa.Text, nullable=False))


class PolicyVersion(SQLModel, table=True):
    """One committed version of the node's active MOU policy set, shared by every replica.

    Written by a reload (``entente policy reload``, and the first start) with its files in one
    transaction; versions only grow, and the highest is the set in force (``policy_store.py``).
    """

    __tablename__ = "policy_versions"

    version: int = Field(sa_column=sa.Column(sa.BigInteger, primary_key=True, autoincrement=False))
    sha256: str = Field(max_length=64)  # PolicySet.sha256 of the set as loaded and validated
    created_at: datetime = Field(sa_column=sa.Column(UTCDateTime(), nullable=False))
    actor: str = Field(max_length=200)


class PolicyVersionFile(SQLModel, table=True):
    """A policy file of one version: its name in ``<home>/policies``, bytes and SHA-256."""

    __tablename__ = "policy_version_files"

    version: int = Field(
        sa_column=sa.Column(
            sa.BigInteger,
            sa.ForeignKey("policy_versions.version"),
            primary_key=True,
            autoincrement=False,
        )
    )
    name: str = Field(primary_key=True, max_length=255)
    sha256: str = Field(max_length=64)  # of ``content``, as Policy.sha256
    content: bytes = Field(sa_column=sa.Column(sa.LargeBinary, nullable=False))


class Approval(SQLModel, table=True):
    """An action waiting for a second approver (two-person control: ``artifacts/approvals.py``).

    ``payload`` holds what carrying the action out needs and nothing secret: for a share, the
    signed manifest, the address of the sealed ciphertext in the blob store and the decisions;
    never plaintext. ``state`` is ``pending``, then ``approved``, ``rejected`` or ``expired``.
    """

    __tablename__ = "approvals"

    id: str = Field(primary_key=True, max_length=40)
    action: str = Field(max_length=32)  # share | policy.reload
    state: str = Field(default="pending", max_length=16, index=True)
    requested_by: str = Field(max_length=32)  # the requester's token id
    requester_name: str = Field(max_length=200)
    requester: str = Field(max_length=300)  # the requester as audit entries name it
    requested_at: datetime = Field(sa_column=sa.Column(UTCDateTime(), nullable=False))
    expires_at: datetime = Field(sa_column=sa.Column(UTCDateTime(), nullable=False))
    summary: str = Field(default="{}", sa_column=sa.Column(sa.Text, nullable=False))  # JSON
    payload: str = Field(default="{}", sa_column=sa.Column(sa.Text, nullable=False))  # JSON
    artifact_id: str | None = Field(default=None, max_length=64)
    blob: str | None = Field(default=None, max_length=64, index=True)
    decided_by: str | None = Field(default=None, max_length=300)
    decided_at: datetime | None = Field(default=None, sa_column=sa.Column(UTCDateTime()))
    reason: str | None = Field(default=None, max_length=500)


class BlobInFlight(SQLModel, table=True):
    """A blob on its way into the store, or out of it (``service/blob_journal.py``).

    Written (and committed) before a blob appears under its content address; deleted in the
    transaction of the row that comes to refer to it, or once the blob is deleted. A row older
    than the grace period names a blob the start-up sweep checks: kept if a row refers to it,
    deleted otherwise. A deletion that must survive a crash (retention, revocation, a rejected
    approval) writes one in the transaction that stops referring to the blob.
    """

    __tablename__ = "blobs_in_flight"

    id: int | None = Field(
        default=None,
        sa_column=sa.Column(_BIGINT_PK, primary_key=True, autoincrement=True),
    )
    digest: str = Field(max_length=64, index=True)
    since: datetime = Field(sa_column=sa.Column(UTCDateTime(), nullable=False, index=True))


class IdempotencyKey(SQLModel, table=True):
    """An ``Idempotency-Key`` a principal sent with a share (``service/idempotency.py``).

    ``pending`` while its first request runs (``claim`` names that request; ``lease_until`` is
    renewed while it lives, so a crashed request's claim lapses), then ``done`` with the first
    result (status, body, ``Location``), written in the transaction of the rows it answers
    for. ``fingerprint`` is the SHA-256 of what makes it the same request: the principal, the
    route and its parameters, and the whole body. Deleted after ``expires_at``.
    """

    __tablename__ = "idempotency_keys"

    principal: str = Field(primary_key=True, max_length=32)  # the token id
    idempotency_key: str = Field(primary_key=True, max_length=255)
    claim: str = Field(max_length=32)
    state: str = Field(max_length=8)  # pending | done
    route: str = Field(max_length=300)
    fingerprint: str | None = Field(default=None, max_length=64)
    status: int | None = Field(default=None)
    response: str | None = Field(default=None, sa_column=sa.Column(sa.Text))  # JSON body
    location: str | None = Field(default=None, max_length=300)
    created_at: datetime = Field(sa_column=sa.Column(UTCDateTime(), nullable=False))
    lease_until: datetime = Field(sa_column=sa.Column(UTCDateTime(), nullable=False))
    expires_at: datetime = Field(sa_column=sa.Column(UTCDateTime(), nullable=False, index=True))


class Webhook(SQLModel, table=True):
    """A subscription to notice of arrivals, POSTed to a local URL (``service/webhooks``).

    ``secret`` is the signing secret age-encrypted to this node's own identity (base64): the
    node must read it to sign, so it cannot be hashed like a token, and it is never answered
    after creation. ``cursor`` is the event id (``service.artifacts.events``) delivered up to;
    ``state`` is ``active``, ``failing`` (retrying, ``failures`` in a row so far) or
    ``disabled`` (retries exhausted). ``lease_owner``/``lease_until`` name the dispatcher
    delivering it now, so that replicas sharing the database never deliver one twice at once.
    """

    __tablename__ = "webhooks"

    id: str = Field(primary_key=True, max_length=40)  # whk_<16 hex>
    url: str = Field(max_length=2048)
    secret: str = Field(sa_column=sa.Column(sa.Text, nullable=False))  # age, base64
    events: str = Field(default="[]", sa_column=sa.Column(sa.Text, nullable=False))  # JSON list
    created_at: datetime = Field(sa_column=sa.Column(UTCDateTime(), nullable=False))
    created_by: str = Field(max_length=300)
    cursor: int = Field(sa_column=sa.Column(sa.BigInteger, nullable=False))
    state: str = Field(default="active", max_length=16, index=True)
    failures: int = Field(default=0)  # consecutive failed deliveries
    next_attempt_at: datetime | None = Field(default=None, sa_column=sa.Column(UTCDateTime()))
    last_error: str | None = Field(default=None, max_length=500)
    last_delivered_at: datetime | None = Field(default=None, sa_column=sa.Column(UTCDateTime()))
    lease_owner: str | None = Field(default=None, max_length=32)
    lease_until: datetime | None = Field(default=None, sa_column=sa.Column(UTCDateTime()))


class Upload(SQLModel, table=True):
    """A resumable upload of ``POST /v1/artifacts`` still arriving (``service/uploads/``).

    ``received`` bytes of the body are stored, encrypted, in its segments; ``length`` is the
    whole body's length when the client announced it (``Upload-Length``). ``content_type``
    keeps the multipart boundary for the share the completed body becomes. ``complete`` turns
    true in the transaction of the last append; the row goes once the share is carried out,
    the upload cancelled, or ``expires_at`` passed.
    """

    __tablename__ = "uploads"

    id: str = Field(primary_key=True, max_length=40)  # upl_<32 hex>
    principal: str = Field(max_length=32, index=True)  # the token id
    content_type: str = Field(max_length=300)
    received: int = Field(sa_column=sa.Column(sa.BigInteger, nullable=False))  # bytes
    length: int | None = Field(default=None, sa_column=sa.Column(sa.BigInteger))  # bytes
    complete: bool = Field(default=False)
    created_at: datetime = Field(sa_column=sa.Column(UTCDateTime(), nullable=False))
    expires_at: datetime = Field(sa_column=sa.Column(UTCDateTime(), nullable=False, index=True))


class UploadSegment(SQLModel, table=True):
    """The bytes one request added to an upload, from ``start``: an age file to this node's
    own identity, stored as a blob (``digest``); ``size`` bytes of plaintext."""

    __tablename__ = "upload_segments"

    upload_id: str = Field(primary_key=True, max_length=40)
    start: int = Field(sa_column=sa.Column(sa.BigInteger, primary_key=True, autoincrement=False))
    size: int = Field(sa_column=sa.Column(sa.BigInteger, nullable=False))
    digest: str = Field(max_length=64)
