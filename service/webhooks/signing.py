"""What a webhook delivery carries: the event as a small JSON document, and the Standard
Webhooks signature over it (https://www.standardwebhooks.com/, through the ``standardwebhooks``
package that receivers use to verify it).

The headers are ``webhook-id`` (the event's id, ``evt_<cursor>``: the same on every retry, so a
receiver can drop a repeat), ``webhook-timestamp`` (seconds since the epoch, when this attempt
was signed) and ``webhook-signature`` (``v1,`` and the base64 HMAC-SHA256 of
``"{id}.{timestamp}.{body}"`` under the subscription's secret ``whsec_<base64>``).

The body holds what ``GET /v1/events`` tells any reader of this node, and less: the event's
kind and id, and the artifact's id, origin, title and TLP label. Never content, recipients,
digests or policy decisions. This module signs only; it sends nothing.
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from typing import Any

from standardwebhooks import Webhook

from service.artifacts.events import Event

__all__ = ["USER_AGENT", "event_body", "event_payload", "message_id", "signed_headers"]

USER_AGENT = "entente-webhooks"


def _rfc3339(value: datetime) -> str:
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def message_id(cursor: int) -> str:
    """The ``webhook-id`` of the event with this cursor (its id in ``GET /v1/events``)."""
    return f"evt_{cursor}"


def event_payload(event: Event, *, node_id: str) -> dict[str, Any]:
    """The event as Standard Webhooks' suggested envelope: ``type``, ``timestamp``, ``data``."""
    artifact = event.artifact
    recorded = event.at or artifact.recorded_at
    return {
        "type": f"artifact.{event.name}",
        "timestamp": _rfc3339(recorded),
        "data": {
            "id": event.cursor,
            "event": event.name,
            "node": node_id,
            "artifact_id": artifact.id,
            "origin": artifact.origin,
            "title": artifact.title,
            "tlp": artifact.tlp,
            "recorded_at": _rfc3339(recorded),
        },
    }


def event_body(event: Event, *, node_id: str) -> bytes:
    """The bytes POSTed (and signed) for ``event``: compact JSON, UTF-8."""
    return json.dumps(
        event_payload(event, node_id=node_id), separators=(",", ":"), ensure_ascii=False
    ).encode("utf-8")


def signed_headers(secret: str, *, msg_id: str, body: bytes, now: datetime) -> dict[str, str]:
    """The request headers of one delivery attempt of ``body``, signed with ``secret``
    (``whsec_<base64>``) at ``now``."""
    return {
        "content-type": "application/json",
        "user-agent": USER_AGENT,
        "webhook-id": msg_id,
        "webhook-timestamp": str(math.floor(now.timestamp())),
        "webhook-signature": Webhook(secret).sign(msg_id, now, body),
    }
