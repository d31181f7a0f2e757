"""What a share is, in the domain's own terms: :class:`ShareTerms`.

:func:`service.artifacts.share.decide_share` and :func:`service.artifacts.share.share_artifact`
take it. Each caller builds it from what it holds: the API from the validated ``metadata`` of
``POST /v1/artifacts`` (:meth:`service.schemas.ShareMetadata.terms`), an onward share from the
upstream manifest (``service.federation.onward``), the benchmarks and tests directly.

This module does not validate: the API's models check what a client sends, and a manifest is
checked when it is opened; the terms carry what those checks let through.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

__all__ = ["ShareTerms"]


@dataclass(frozen=True)
class ShareTerms:
    """The terms of one share: its title, TLP label, topics and purposes, its embargo and
    expiry (timezone-aware, or ``None``), and the partners it is for; the file's original
    name and, for an evaluation log, its summary (``service.evaluations``), both signed in the
    manifest when given."""

    title: str
    tlp: str
    partners: tuple[str, ...]
    topics: tuple[str, ...] = ()
    purposes: tuple[str, ...] = ()
    embargo_until: datetime | None = None
    expires_at: datetime | None = None
    filename: str | None = None
    evaluation: Mapping[str, Any] | None = field(default=None, hash=False)
