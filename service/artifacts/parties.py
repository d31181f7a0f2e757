"""The parties to a sealed artifact and their manifest recipients, and a new artifact's id.

What ``entente seal`` and a share at a node both need before any policy or database: a
:class:`Party` (a node id and its age recipients), :func:`recipients_for` (post-quantum when
every party can read it so, classic otherwise: ``crypto.sealing.choose_recipients``) and
:func:`new_artifact_id`. This module imports only ``crypto``; the policy's words for a kind of
sealing are in ``service.artifacts.sealing``.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from datetime import datetime
from typing import Protocol

from crypto.sealed import ManifestRecipient
from crypto.sealing import RecipientKeys, choose_recipients

__all__ = ["Party", "new_artifact_id", "recipients_for"]

_B32 = "0123456789abcdefghjkmnpqrstvwxyz"  # Crockford base32, sortable


class Party(Protocol):
    """A party to a share: its node id and its age recipients (hybrid when it has one)."""

    @property
    def node_id(self) -> str: ...
    @property
    def age_recipient(self) -> str: ...
    @property
    def pq_recipient(self) -> str | None: ...


def recipients_for(parties: Sequence[Party]) -> list[ManifestRecipient]:
    """The manifest recipients of ``parties``: all hybrid when every party has one, else all
    X25519 (the kind ``service.artifacts.sealing.sealing_for`` names)."""
    choice = choose_recipients(
        RecipientKeys(p.node_id, p.age_recipient, p.pq_recipient or None) for p in parties
    )
    return [ManifestRecipient(node_id, recipient) for node_id, recipient in choice.recipients]


def new_artifact_id(now: datetime) -> str:
    """``art_`` + 10 chars of milliseconds since the epoch + 16 random chars: sortable, unique."""
    ms = int(now.timestamp() * 1000)
    stamp = "".join(_B32[(ms >> (5 * i)) & 31] for i in reversed(range(10)))
    rand = "".join(_B32[b & 31] for b in secrets.token_bytes(16))
    return f"art_{stamp}{rand}"
