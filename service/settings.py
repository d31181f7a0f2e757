"""The node's settings: one typed object, built once, passed down.

Read from ``ENTENTE_*`` environment variables (pydantic-settings); CLI flags override them by being
passed as keyword arguments to :meth:`Settings.load`. Every limit carries its unit in a comment.
Secrets are ``SecretStr`` so they never show in logs or reprs.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, NonNegativeInt, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from crypto.vocab import TLP_LABELS
from service.errors import UsageError

__all__ = ["Settings"]

# s3://bucket[/prefix]: a DNS-style bucket name, and a prefix of plain path segments
_S3_URL = re.compile(
    r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]"
    r"(/(?!\.{1,2}(/|$))[A-Za-z0-9._-]+)*/?$"
)


_HOSTNAME = re.compile(
    r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$"
)


def _is_host(text: str) -> bool:
    """A DNS host name or an IP address literal (without brackets or port)."""
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return len(text) <= 253 and _HOSTNAME.match(text) is not None
    return True


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ENTENTE_", extra="ignore", frozen=True)

    home: Path | None = None
    database_url: str | None = None  # default: sqlite:///<home>/entente.db (WAL)
    # PostgreSQL connections a node keeps open (as many again opened when busy, then closed):
    # enough for the request threads and the workers, so that a loaded node reuses its
    # connections instead of opening (and the server forking) one per burst
    database_pool_size: int = Field(default=20, ge=1, le=500)
    blob_dir: Path | None = None  # default: <home>/blobs
    # Where ciphertext blobs live: unset, the folder above; ``s3://bucket/prefix``, an
    # S3-compatible object store (service/blobs_s3.py, docs/object-store.md)
    blob_url: str | None = None
    # The object store's endpoint, region and credentials; unset, boto3's usual sources
    # (AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL, AWS_REGION, AWS_ACCESS_KEY_ID, ...)
    s3_endpoint_url: str | None = None
    s3_region: str | None = None
    s3_access_key_id: str | None = None
    s3_secret_access_key: SecretStr | None = None
    s3_addressing_style: Literal["auto", "path", "virtual"] = "auto"  # path: SeaweedFS, MinIO
    s3_part_bytes: int = Field(default=8 << 20, ge=5 << 20, le=1 << 30)  # bytes per part of a
    # multipart upload, also the most one upload holds in memory (S3's minimum is 5 MiB)
    passphrase: SecretStr | None = None  # unlocks the key files; a prompt on a TTY otherwise
    passphrase_file: Path | None = None  # or read it from this file (e.g. a mounted secret)
    insecure_no_passphrase: bool = False  # demos only: key files are stored unencrypted

    host: str = "127.0.0.1"
    port: int = Field(default=8443, ge=0, le=65535)
    workers: int = Field(default=1, ge=1, le=64)  # server processes of `entente serve`
    log_level: str = "INFO"
    log_format: str = "json"  # json | text

    # Keys
    scrypt_work_factor: int = Field(default=18, ge=10, le=22)  # log2(N) for key files
    descriptor_validity_days: int = Field(default=365, ge=1, le=3650)  # days

    # Limits
    max_artifact_bytes: int = Field(default=4 << 30, ge=1)  # bytes per uploaded artifact
    max_metadata_bytes: int = Field(default=64 << 10, ge=1024)  # bytes of JSON metadata
    upload_prefetch_bytes: int = Field(default=256 << 10, ge=0)  # bytes of an upload read
    # ahead on the event loop (all of a small one) before the worker thread seals it
    max_request_header_bytes: int = Field(default=16 << 10, ge=1024)  # bytes
    max_federation_manifest_bytes: int = Field(default=1 << 20, ge=1024)  # bytes
    page_size_default: int = Field(default=50, ge=1)  # items per page
    page_size_max: int = Field(default=500, ge=1)  # items per page
    audit_export_max_entries: int = Field(default=100_000, ge=1)  # log entries one export
    # bundle may span (each with an inclusion proof: about 2 log2(n) stored hashes read)
    clock_skew_seconds: int = Field(default=300, ge=0)  # seconds allowed between nodes
    signature_max_age_seconds: int = Field(default=300, ge=1)  # seconds a request sig is valid
    nonce_cache_size: int = Field(
        default=100_000, ge=100
    )  # nonces remembered per partner (replay cache)
    request_timeout_seconds: float = Field(default=60.0, gt=0)  # seconds per partner request
    rate_limit_per_minute: int = Field(default=600, ge=1)  # requests per token or partner
    # Anonymous refusals (no valid token or signature): per source and window, the first is an
    # audit entry, the rest one summary entry with a count (service.audit.refusals)
    refusal_audit_window_seconds: int = Field(default=60, ge=1)  # seconds per window
    refusal_audit_sources: int = Field(default=256, ge=1)  # sources tracked; the rest: overflow
    volume_limit_bytes_per_day: int = Field(default=64 << 30, ge=1)  # bytes per partner per day
    # bytes per day for named partners, overriding the default (an MOU's cap), JSON object
    volume_limits_by_partner: dict[str, NonNegativeInt] = Field(default_factory=dict)
    request_body_idle_seconds: float = Field(default=30.0, gt=0)  # seconds a body may stall
    request_body_min_rate: int = Field(default=1024, ge=0)  # bytes per second a body must
    # average over each window below (0: no minimum), so that a trickling body ends in 408, and
    # a partner's trickling answer in its error (service.federation.paced)
    request_body_rate_window_seconds: float = Field(default=10.0, gt=0)  # seconds per window
    request_head_timeout_seconds: float = Field(default=10.0, gt=0)  # seconds for a request
    # head (request line and headers) to arrive, from the connection or the previous answer
    max_requests_in_flight: int = Field(default=16, ge=1)  # requests one token or one
    # partner may have running at once; more are answered 503 with Retry-After
    body_worker_threads: int = Field(default=16, ge=1, le=256)  # threads that seal uploads
    # and check deliveries, apart from the threads every other route runs on
    max_json_body_bytes: int = Field(default=64 << 10, ge=1024)  # bytes of a JSON request
    # body on the local API (``POST /v1/artifacts/{id}/share``)
    blob_syncfs: bool = True  # make a group of new blobs durable with one syncfs (Linux);
    # false: an fsync per blob and folder (when the blob store's file system is busy with other
    # work, which a syncfs would wait for)
    blob_fsync_threads: int = Field(default=8, ge=1, le=64)  # fsyncs run side by side to
    # make a group of blobs durable, without syncfs
    blob_orphan_grace_seconds: float = Field(default=3600.0, ge=0)  # seconds before a blob
    # that no artifact refers to counts as orphaned and is swept at start (in-flight writes of
    # other replicas are younger; a longer write keeps its claim young every quarter of this)

    # Notice of arrivals (GET /v1/events, service.api.events)
    events_poll_seconds: float = Field(default=1.0, gt=0)  # seconds between the database
    # reads of an open event stream (no connection is held between them)
    events_heartbeat_seconds: float = Field(default=15.0, gt=0)  # seconds of quiet before a
    # stream sends a comment line, so that proxies and the client know it is alive
    events_max_stream_seconds: float = Field(default=300.0, gt=0)  # seconds a stream stays
    # open; then it ends and the client reconnects from its last event id
    events_max_streams_per_token: int = Field(default=4, ge=1)  # event streams one token may
    # hold open at once, per process; more are answered 429 with Retry-After
    events_batch: int = Field(default=100, ge=1, le=1000)  # log entries read per poll
    events_max_wait_seconds: float = Field(default=30.0, gt=0)  # seconds a long poll
    # (GET /v1/events?wait=) waits for an event before it answers with none

    # Outgoing webhooks (service.webhooks): notice of arrivals POSTed to local receivers
    # Hosts a webhook may name besides loopback (127.0.0.0/8, ::1, localhost), comma-separated,
    # e.g. "hooks.internal,10.0.0.7": internal receivers only, never a partner; default: none
    webhook_allowed_hosts: Annotated[tuple[str, ...], NoDecode] = ()
    webhook_timeout_seconds: float = Field(default=5.0, gt=0, le=60)  # seconds per delivery
    # (connect, send and answer), so that one slow receiver holds one delivery thread only
    webhook_max_attempts: int = Field(default=8, ge=1, le=30)  # consecutive failed deliveries
    # of one event before its subscription is disabled (audited webhook.disabled)
    webhook_retry_base_seconds: float = Field(default=1.0, gt=0)  # first retry delay; each
    # next one doubles
    webhook_retry_max_seconds: float = Field(default=300.0, gt=0)  # cap on that delay
    webhook_concurrency: int = Field(default=4, ge=1, le=64)  # subscriptions delivered to at
    # once (threads); a slow receiver holds one of them, the others go on
    webhook_poll_seconds: float = Field(default=1.0, gt=0)  # seconds between looks for new
    # events and due retries
    webhook_batch: int = Field(default=50, ge=1, le=1000)  # log entries read per look
    webhook_max_subscriptions: int = Field(default=100, ge=1, le=10000)  # subscriptions a
    # node holds

    # Background work
    sync_interval_seconds: float = Field(default=1.0, gt=0)  # outbox poll when idle
    pull_interval_seconds: float = Field(default=30.0, gt=0)  # feed catch-up pull
    checkpoint_interval_seconds: float = Field(default=2.0, gt=0)  # audit checkpoint cadence
    witness_interval_seconds: float | None = Field(default=None, gt=0)  # how often the latest
    # checkpoint goes to the witnesses; unset: every checkpoint interval. Longer bounds the
    # witnessing work per second whatever the share rate (docs/audit-log.md)
    retention_interval_seconds: float = Field(default=300.0, gt=0)  # seconds between rounds
    # of the retention worker (deletes what expiry, retain_max or a revocation requires)
    retention_batch: int = Field(default=200, ge=1, le=10000)  # artifact rows per retention round
    retry_base_seconds: float = Field(default=0.5, gt=0)  # first retry delay
    retry_max_seconds: float = Field(default=300.0, gt=0)  # cap on backoff
    workers_enabled: bool = True  # outbox, pull and checkpoint workers in `serve`

    # Two-person control (service.artifacts.approvals): what waits for a second approver
    # TLP labels whose shares wait for a second approver (a publisher or admin other than the
    # requester), comma-separated, e.g. "TLP:RED"; default: none
    two_person_tlp: Annotated[tuple[str, ...], NoDecode] = ()
    two_person_policy_reload: bool = False  # POST /v1/admin/policies/reload waits for a
    # second admin
    two_person_partner_changes: bool = False  # pinning or unpinning a partner goes through
    # /v1/admin/partners and waits for a second admin; `entente partner add|remove` on the
    # home refuses. Key rotation stays a custody operation on the home (README, Security)
    approval_ttl_seconds: float = Field(default=86400.0, gt=0)  # seconds a pending action
    # waits for its second approver before it expires

    # Idempotency-Key on POST /v1/artifacts and the onward share (service.idempotency)
    idempotency_ttl_seconds: float = Field(default=86400.0, gt=0)  # seconds a key answers
    # retries with its first result; then it is forgotten (and may be used again)
    idempotency_lease_seconds: float = Field(default=30.0, gt=0)  # seconds a running request
    # holds its key without renewing it: a request that died releases it after this long

    # Resumable uploads of POST /v1/artifacts (service.uploads)
    upload_expiry_seconds: float = Field(default=86400.0, gt=0)  # seconds an upload waits for
    # its next append before it is swept (each append starts the time again)
    max_open_uploads: int = Field(default=4, ge=1, le=1000)  # uploads one token may have open

    # Agreements (service.agreements): permits only from terms every party's officer signed
    signed_agreements_required: bool = False  # when true, an unsigned local policy file may
    # only forbid; otherwise it still grants, for a partner under no signed agreement, and
    # `entente policy check` and `entente agreement list` report it as unsigned

    # Witnessing (service.audit.witness_choice): how many partners witness this log
    witness_count: int = Field(default=5, ge=0, le=64)  # partners asked to cosign each
    # checkpoint, chosen by rendezvous hashing; 0: every partner
    witness_quorum: int = Field(default=0, ge=0, le=64)  # of those, how many make a checkpoint
    # witnessed; 0: a majority
    witnessed_logs_file: Path | None = None  # logs that are no partner's which this node
    # witnesses for anyone (POST /witness/v1/add-checkpoint, C2SP tlog-witness): one C2SP
    # verifier key per line, its name the log's origin (service.audit.witness_public)
    external_witnesses_file: Path | None = None  # C2SP tlog-witnesses that are no partner's,
    # asked to cosign this log too: "<submission URL> <cosigner verifier key>" per line
    # (service.audit.witness_external)

    # Surface
    docs_enabled: bool = False  # /docs and /redoc (they load scripts from outside CDNs)

    @field_validator("blob_url")
    @classmethod
    def _blob_url(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        if _S3_URL.match(value) is None:
            raise ValueError(
                "expected s3://bucket or s3://bucket/prefix (bucket: 3-63 of a-z 0-9 . -; "
                "prefix: A-Z a-z 0-9 . _ - / without empty, . or .. segments)"
            )
        return value.rstrip("/")

    def blob_location(self) -> tuple[str, str] | None:
        """``(bucket, prefix)`` of the S3 blob store, or None for the folder store."""
        if self.blob_url is None:
            return None
        bucket, _, prefix = self.blob_url.removeprefix("s3://").partition("/")
        return bucket, prefix

    @field_validator("two_person_tlp", mode="before")
    @classmethod
    def _labels(cls, value: object) -> object:
        """``"TLP:RED, TLP:AMBER+STRICT"`` (the environment) or a sequence: upper-cased labels."""
        if isinstance(value, str):
            value = [part for part in value.split(",") if part.strip()]
        if isinstance(value, list | tuple):
            labels = tuple(str(part).strip().upper() for part in value)
            unknown = [label for label in labels if label not in TLP_LABELS]
            if unknown:  # a typo would gate nothing: refuse it
                raise ValueError(f"not TLP 2.0 labels: {', '.join(unknown)}")
            return labels
        return value

    @field_validator("webhook_allowed_hosts", mode="before")
    @classmethod
    def _hosts(cls, value: object) -> object:
        """``"hooks.internal, 10.0.0.7"`` (the environment) or a sequence: lower-cased hosts."""
        if isinstance(value, str):
            value = [part for part in value.split(",") if part.strip()]
        if isinstance(value, list | tuple):
            hosts = tuple(str(part).strip().lower().strip("[]") for part in value)
            bad = [h for h in hosts if not _is_host(h)]
            if bad:
                raise ValueError(f"not host names or addresses: {', '.join(bad)}")
            return hosts
        return value

    def needs_second_approver(self, tlp: str) -> bool:
        """True when a share at ``tlp`` waits for a second approver."""
        return tlp.strip().upper() in self.two_person_tlp

    @classmethod
    def load(cls, **overrides: Any) -> Settings:
        """Environment first, then the non-None ``overrides`` (CLI flags) on top."""
        given = {k: v for k, v in overrides.items() if v is not None}
        try:
            return cls(**given)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "settings"
            raise UsageError(f"invalid setting ENTENTE_{where.upper()}: {first['msg']}") from None

    def require_home(self) -> Path:
        if self.home is None:
            raise UsageError("no node home: pass --home DIR or set ENTENTE_HOME")
        return self.home

    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.require_home() / 'entente.db'}"

    def resolved_blob_dir(self) -> Path:
        return self.blob_dir if self.blob_dir is not None else self.require_home() / "blobs"
