"""Errors of the service layer (the imperative shell).

Every domain error has a stable ``kind`` (which becomes the RFC 9457 problem ``type``), an HTTP
status, and a message that is safe to show the caller. The API maps them to problem documents in
one place (``service/api/problems.py``); the CLI prints the message on one line and exits non-zero.

    EntenteError
    ├── UsageError            bad arguments or configuration (CLI exit 2, HTTP 400)
    ├── HomeError             the home folder is missing, not a home, or already exists
    ├── KeyStoreError         a key file could not be unlocked (wrong passphrase, corrupt)
    ├── DatabaseError         the database cannot be reached or migrated
    ├── PartnerError          a descriptor could not be pinned (bad signature, fingerprint, expiry)
    ├── NotFoundError         no such artifact, partner, token (HTTP 404)
    ├── GoneError             the artifact was revoked or deleted here (HTTP 410, says when)
    ├── AuthError             missing, malformed, revoked or unknown credentials (HTTP 401)
    ├── ForbiddenError        the role does not allow the action (HTTP 403)
    ├── PolicyDeniedError     an MOU policy denies the action (HTTP 403, names rule and clause)
    ├── ConflictError         the request conflicts with the current state (HTTP 409)
    │   ├── IdempotencyKeyInFlightError
    │   │                     the first request with this Idempotency-Key is still running
    │   ├── UploadOffsetMismatchError
    │   │                     a resumable upload's append starts elsewhere than its offset
    │   └── UploadCompletedError
    │                         a resumable upload that is complete was appended to
    ├── InvalidInputError     the request is malformed (HTTP 400/422)
    │   ├── IdempotencyKeyMalformedError
    │   │                     the Idempotency-Key header is not one sf-string (HTTP 400)
    │   └── IdempotencyKeyReusedError
    │                         the Idempotency-Key was used for a different request (HTTP 422)
    ├── TooLargeError         a body or upload is over its limit (HTTP 413)
    ├── RangeNotSatisfiableError
    │                         a ``Range`` starts at or past the end of a payload (HTTP 416)
    ├── RateLimitedError      a rate or volume limit was hit (HTTP 429)
    ├── RequestTimeoutError   the request body stalled past its idle limit (HTTP 408)
    ├── BusyError             too many requests of one caller in flight (HTTP 503)
    ├── BlobStoreError        the blob store (an S3-compatible object store) could not be
    │                         reached or refused a request (HTTP 503)
    ├── RemoteError           the node a CLI command talks to refused it or could not be reached
    ├── DemoError             the demo federation could not be set up or run
    ├── NodeProcessError      a node process on loopback (service/localnet.py) did not start
    ├── StoredArtifactCorruptError
    │                         stored ciphertext failed verification while it was read (HTTP 502;
    │                         mid-stream, the connection is cut short of its Content-Length)
    └── PartnerUnavailableError
        │                     a partner node could not be reached or answered wrongly
        └── PartnerRefusedError
                              the partner answered with a signed 4xx problem document

The audit log package draws its own errors, all in this family, in ``service/audit/errors.py``.

An error is an immutable fact about what went wrong; it does not record whether anyone wrote it
to the audit log. Every refusal is audited exactly once, in one of three ways:

- by the problem handler (``service/api/problems.py``, ``service/console/_render.py``) when it
  turns the error into a problem document: the default;
- by the domain, when the entry must be in the refusal's own transaction or carry what only
  the domain knows (rule, clause, partner): it then calls
  :func:`service.audit.refusals.mark_audited`, a per-request registry the handlers consult;
- never, for an error raised with ``quiet=True``: a refusal that is nobody's misbehaviour worth
  an entry (a scan of a console file that does not exist; the second and later refusals of one
  burst by the rate or in-flight limiter, whose first refusal is on record; a stale old size sent
  to the witness, the protocol's way of telling a log where to resume). ``quiet`` is fixed at
  construction.
"""

from __future__ import annotations

from typing import Any, ClassVar

__all__ = [
    "AuthError",
    "BlobStoreError",
    "BusyError",
    "ConflictError",
    "DatabaseError",
    "DemoError",
    "EntenteError",
    "ForbiddenError",
    "GoneError",
    "HomeError",
    "IdempotencyKeyInFlightError",
    "IdempotencyKeyMalformedError",
    "IdempotencyKeyReusedError",
    "InvalidInputError",
    "KeyStoreError",
    "NodeProcessError",
    "NotFoundError",
    "PartnerError",
    "PartnerRefusedError",
    "PartnerUnavailableError",
    "PolicyDeniedError",
    "RangeNotSatisfiableError",
    "RateLimitedError",
    "RemoteError",
    "RequestTimeoutError",
    "StoredArtifactCorruptError",
    "TooLargeError",
    "UploadCompletedError",
    "UploadOffsetMismatchError",
    "UsageError",
]


class EntenteError(Exception):
    """Base of the service's errors. ``kind`` is stable; ``extra`` goes into problem documents."""

    kind: ClassVar[str] = "error"
    status: ClassVar[int] = 400
    title: ClassVar[str] = "Request failed"

    def __init__(self, message: str, *, quiet: bool = False, **extra: Any) -> None:
        super().__init__(message)
        self.message = message
        self.extra = extra
        self._quiet = quiet

    @property
    def quiet(self) -> bool:
        """True when this refusal is never to be audited by the problem handler (see above)."""
        return self._quiet


class UsageError(EntenteError):
    kind = "usage"
    title = "Invalid usage"


class HomeError(EntenteError):
    kind = "home"
    status = 500
    title = "Node home problem"


class KeyStoreError(EntenteError):
    kind = "key-store"
    status = 500
    title = "Key store problem"


class DatabaseError(EntenteError):
    kind = "database"
    status = 503
    title = "Database unavailable"


class PartnerError(EntenteError):
    kind = "partner"
    status = 422
    title = "Partner descriptor rejected"


class NotFoundError(EntenteError):
    kind = "not-found"
    status = 404
    title = "Not found"


class GoneError(EntenteError):
    kind = "gone"
    status = 410
    title = "Gone"


class AuthError(EntenteError):
    kind = "unauthorized"
    status = 401
    title = "Authentication required"


class ForbiddenError(EntenteError):
    kind = "forbidden"
    status = 403
    title = "Forbidden"


class PolicyDeniedError(EntenteError):
    kind = "policy-denied"
    status = 403
    title = "Denied by MOU policy"


class ConflictError(EntenteError):
    kind = "conflict"
    status = 409
    title = "Conflict"


class InvalidInputError(EntenteError):
    kind = "invalid-input"
    status = 422
    title = "Invalid input"


class IdempotencyKeyInFlightError(ConflictError):
    """A request with this ``Idempotency-Key`` is still being carried out (IETF httpapi
    idempotency-key-header draft, 2.6): retry once it has finished, to get its result."""

    kind = "idempotency-key-in-flight"
    title = "A request with this Idempotency-Key is in flight"


class UploadOffsetMismatchError(ConflictError):
    """An append to a resumable upload gave an ``Upload-Offset`` other than the bytes stored
    (draft-ietf-httpbis-resumable-upload, "mismatching upload offset"): ``extra`` names the
    ``expected-offset`` and the ``provided-offset``."""

    kind = "mismatching-upload-offset"
    title = "Mismatching upload offset"


class UploadCompletedError(EntenteError):
    """An append to a resumable upload whose last append already came (the draft's
    "completed upload", 400 as it recommends)."""

    kind = "completed-upload"
    status = 400
    title = "Upload is already complete"


class UploadLengthInconsistentError(EntenteError):
    """A resumable upload's lengths disagree: it ends before or after its ``Upload-Length``
    (the draft's "inconsistent upload length", 400 as it recommends)."""

    kind = "inconsistent-upload-length"
    status = 400
    title = "Inconsistent upload length"


class IdempotencyKeyMalformedError(InvalidInputError):
    """The ``Idempotency-Key`` header is not one RFC 8941 sf-string within the length limit."""

    kind = "idempotency-key-malformed"
    status = 400
    title = "Malformed Idempotency-Key"


class IdempotencyKeyReusedError(InvalidInputError):
    """The ``Idempotency-Key`` answered an earlier request that differs from this one (its
    principal, route, parameters or body): a key names one request only (the draft's 422)."""

    kind = "idempotency-key-reused"
    title = "Idempotency-Key reused for a different request"


class TooLargeError(EntenteError):
    kind = "too-large"
    status = 413
    title = "Too large"


class RangeNotSatisfiableError(EntenteError):
    """``extra["size"]``: the payload's length, for ``Content-Range: bytes */<size>``."""

    kind = "range-not-satisfiable"
    status = 416
    title = "Range not satisfiable"


class RateLimitedError(EntenteError):
    kind = "rate-limited"
    status = 429
    title = "Too many requests"


class RequestTimeoutError(EntenteError):
    kind = "request-timeout"
    status = 408
    title = "Request timeout"


class BusyError(EntenteError):
    kind = "busy"
    status = 503
    title = "Too many requests in flight"


class BlobStoreError(EntenteError):
    """The blob store could not be reached or refused a request (an object store that is down,
    a bucket that is missing, credentials it does not accept). Retrying later may succeed."""

    kind = "blob-store"
    status = 503
    title = "Blob store unavailable"


class PartnerUnavailableError(EntenteError):
    kind = "partner-unavailable"
    status = 502
    title = "Partner unavailable"
    # Seconds the partner asked us to wait before trying again (its Retry-After), if it did.
    retry_after: float | None = None


class PartnerRefusedError(PartnerUnavailableError):
    """The partner answered with a 4xx problem document: retrying the same request won't help
    unless the partner's state changes (a policy, a pinned key)."""

    kind = "partner-refused"

    def __init__(self, message: str, *, status: int, problem: dict[str, Any]) -> None:
        super().__init__(message, status_code=status)
        self.status_code = status
        self.problem = problem


class RemoteError(EntenteError):
    """A CLI command's node refused the request (its problem document in one line) or could not
    be reached. Never raised by the node itself."""

    kind = "remote"


class DemoError(EntenteError):
    kind = "demo"


class NodeProcessError(EntenteError):
    """A node process started on loopback (``service/localnet.py``: the demo, the integration
    tests, the benchmarks) exited or did not answer in time. ``message`` is one line; ``str()``
    adds the end of the node's log, for a test report."""

    kind = "node-process"

    def __init__(self, message: str, *, log_tail: str = "") -> None:
        super().__init__(message)
        self.log_tail = log_tail

    def __str__(self) -> str:
        return f"{self.message}\n{self.log_tail}" if self.log_tail else self.message


class StoredArtifactCorruptError(EntenteError):
    """The stored ciphertext of an artifact failed verification while it was decrypted (storage
    corruption, or tampering with the blob store). Before any plaintext is sent it is a problem
    document; after, the response is cut short of its ``Content-Length`` so the client sees it."""

    kind = "artifact-corrupt"
    status = 502
    title = "Stored artifact failed verification"
