"""Errors of the audit log package (``service.audit``), each in the service's error family.

service.errors.EntenteError
├── LogInconsistentError      the stored tree does not match its head or entries (HTTP 503)
├── LogRolledBackError        a witness holds a newer checkpoint of this log than the log
│                             (restored from an older snapshot): nothing is signed (HTTP 503)
├── AuditSourceError          a log to verify cannot be read (HTTP 502)
├── WitnessConfigError        ENTENTE_WITNESSED_LOGS_FILE cannot be used (HTTP 503)
├── BundleError               an export bundle does not verify (a verdict: ``audit
│                             verify-export`` reports it as a failure)
├── RotationError             the log's key rotations cannot be followed (a verdict, not a
│                             problem document: ``audit verify`` reports it as a failure)
├── InvalidInputError
│   └── BadRequestError       tlog-witness: an old size above the checkpoint size (HTTP 400)
└── ConflictError
    └── WitnessSizeConflictError
                              tlog-witness: the old size is not the size this witness last
                              cosigned (HTTP 409, the body that size, ``text/x.tlog.size``)
"""

from __future__ import annotations

from service.errors import ConflictError, EntenteError, InvalidInputError

__all__ = [
    "AuditSourceError",
    "BadRequestError",
    "BundleError",
    "LogInconsistentError",
    "LogRolledBackError",
    "RotationError",
    "WitnessConfigError",
    "WitnessSizeConflictError",
]


class LogInconsistentError(EntenteError):
    """The stored tree does not match its head or the entries: the log refuses to extend it."""

    kind = "audit-log-inconsistent"
    status = 503
    title = "Audit log inconsistent"


class LogRolledBackError(EntenteError):
    """A witness holds a newer checkpoint of this log than the log has, or this log's node was
    restored and has not heard from a witness yet (``service.audit.rollback``): the sequencer
    signs nothing, or it would fork the log."""

    kind = "audit-log-rolled-back"
    status = 503
    title = "Audit log behind its witnesses"


class WitnessConfigError(EntenteError):
    """The list of logs this node witnesses for anyone cannot be read or parsed: ``serve``
    refuses to start with it, and a request meeting a file broken since answers 503."""

    kind = "witness-config"
    status = 503
    title = "Witness configuration unusable"


class AuditSourceError(EntenteError):
    """A log to verify (a database, or a node over HTTP) cannot be read."""

    kind = "audit-source"
    status = 502
    title = "Audit log unreadable"


class BundleError(EntenteError):
    """An export bundle (``service.audit.bundle``) does not verify: the message says which line
    and why (a checkpoint not signed by the log key, an entry not in the signed tree, an entry
    outside the bundle's filter, a bundle cut short)."""

    kind = "audit-bundle"
    status = 422
    title = "Export bundle does not verify"


class RotationError(EntenteError):
    """The log's rotation history cannot be followed (a record is missing, malformed or does not
    link the keys)."""

    kind = "audit-rotation"
    status = 502
    title = "Key rotations cannot be followed"


class BadRequestError(InvalidInputError):
    """tlog-witness: an old size above the checkpoint size is a 400."""

    kind = "bad-request"
    status = 400
    title = "Bad request"


class WitnessSizeConflictError(ConflictError):
    """tlog-witness: the old size is not the size this witness last cosigned (409, and the body
    is that size in decimal, ``text/x.tlog.size``). Always ``quiet``: a stale old size is how
    the protocol tells a log where to resume, not misbehaviour worth an audit entry."""

    def __init__(self, message: str, *, latest_size: int) -> None:
        super().__init__(message, quiet=True, latest_size=latest_size)
        self.latest_size = latest_size
