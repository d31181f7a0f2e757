"""RFC 3339 times as the signed documents write and read them: UTC, to the second, with a ``Z``.

Descriptors, receipts and officer certificates write their times with :func:`format_seconds`
(isoformat, not strftime: glibc's %Y does not pad years before 1000, and the parser here would
refuse its own output) and read them with :func:`parse_aware`, which refuses a time without a
zone. ``what`` names the field in the error.
"""

from __future__ import annotations

from datetime import UTC, datetime

from crypto.errors import MalformedError

__all__ = ["format_seconds", "parse_aware"]


def format_seconds(value: datetime) -> str:
    return value.astimezone(UTC).replace(tzinfo=None, microsecond=0).isoformat() + "Z"


def parse_aware(value: object, what: str) -> datetime:
    if not isinstance(value, str):
        raise MalformedError(f"{what} must be an RFC 3339 time")
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise MalformedError(f"{what} is not an RFC 3339 time") from None
    if parsed.tzinfo is None:
        raise MalformedError(f"{what} must carry a time zone")
    return parsed.astimezone(UTC)
