"""What a node answers, as small frozen dataclasses (the client's view of ``service.schemas``).

Each result keeps the JSON object it was read from in ``raw`` (for a script that prints it, or
reads a field this client does not name yet). Times are aware :class:`datetime` values (a time
the node sent without a zone is read as UTC). Reading is lenient where the node may grow: an
unknown field is ignored; a field the API always sends and that is missing or of the wrong type
raises :class:`~service.client.errors.UnexpectedAnswerError`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import ValidationError

from service.client.errors import UnexpectedAnswerError
from service.evaluations import EvaluationSummary

__all__ = [
    "Artifact",
    "Delivery",
    "Downloaded",
    "Event",
    "Page",
    "PendingApproval",
    "Retry",
    "Shared",
]


def _get(raw: Mapping[str, Any], name: str, kind: type | tuple[type, ...]) -> Any:
    value = raw.get(name)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
        raise UnexpectedAnswerError(f"the node's answer has no valid {name!r}")
    return value


def _time(raw: Mapping[str, Any], name: str) -> datetime | None:
    value = raw.get(name)
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(str(value))
    except ValueError:
        raise UnexpectedAnswerError(f"the node's answer has no valid {name!r}") from None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def _strings(raw: Mapping[str, Any], name: str) -> tuple[str, ...]:
    value = raw.get(name) or []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise UnexpectedAnswerError(f"the node's answer has no valid {name!r}")
    return tuple(value)


@dataclass(frozen=True)
class Delivery:
    """The state of one partner's copy of an artifact this node shared."""

    partner: str
    state: str  # pending | delivered | failed ...
    attempts: int
    last_error: str | None
    delivered_at: datetime | None
    receipt: Mapping[str, Any] | None = None  # the partner's signed receipt (DSSE envelope)

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> Delivery:
        receipt = raw.get("receipt")
        return cls(
            partner=_get(raw, "partner", str),
            state=_get(raw, "state", str),
            attempts=_get(raw, "attempts", int),
            last_error=raw.get("last_error"),
            delivered_at=_time(raw, "delivered_at"),
            receipt=receipt if isinstance(receipt, Mapping) else None,
        )


@dataclass(frozen=True)
class Artifact:
    """An artifact's metadata as ``GET /v1/artifacts/{id}`` returns it (never its content)."""

    id: str
    direction: str  # sent | received
    origin: str
    sender: str
    title: str
    tlp: str
    sealing: str  # post-quantum | classic
    topics: tuple[str, ...]
    purposes: tuple[str, ...]
    recipients: tuple[str, ...]
    created_at: datetime | None
    recorded_at: datetime | None
    embargo_until: datetime | None
    expires_at: datetime | None
    size: int
    sha256: str
    revoked_at: datetime | None
    filename: str | None
    evaluation: EvaluationSummary | None
    deliveries: tuple[Delivery, ...] | None  # only from artifact(id), on the sharing node
    raw: dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_json(cls, raw: Any) -> Artifact:
        if not isinstance(raw, dict):
            raise UnexpectedAnswerError("the node's answer is not an artifact")
        evaluation = None
        if raw.get("evaluation") is not None:
            try:
                evaluation = EvaluationSummary.model_validate(raw["evaluation"])
            except ValidationError:
                raise UnexpectedAnswerError(
                    "the node's answer has an evaluation summary this client cannot read"
                ) from None
        deliveries = raw.get("deliveries")
        return cls(
            id=_get(raw, "id", str),
            direction=_get(raw, "direction", str),
            origin=_get(raw, "origin", str),
            sender=str(raw.get("sender", "")),
            title=_get(raw, "title", str),
            tlp=_get(raw, "tlp", str),
            sealing=str(raw.get("sealing", "classic")),
            topics=_strings(raw, "topics"),
            purposes=_strings(raw, "purposes"),
            recipients=_strings(raw, "recipients"),
            created_at=_time(raw, "created_at"),
            recorded_at=_time(raw, "recorded_at"),
            embargo_until=_time(raw, "embargo_until"),
            expires_at=_time(raw, "expires_at"),
            size=_get(raw, "size", int),
            sha256=_get(raw, "sha256", str),
            revoked_at=_time(raw, "revoked_at"),
            filename=raw.get("filename") if isinstance(raw.get("filename"), str) else None,
            evaluation=evaluation,
            deliveries=(
                tuple(Delivery.from_json(d) for d in deliveries)
                if isinstance(deliveries, list)
                else None
            ),
            raw=raw,
        )


@dataclass(frozen=True)
class PendingApproval:
    """A share stored but not shared yet: its TLP needs a second approver (two-person
    control); a second person approves it with ``entente approvals approve <id>``."""

    id: str
    artifact_id: str | None
    tlp: str | None
    expires_at: datetime | None
    raw: dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_json(cls, raw: Any) -> PendingApproval:
        if not isinstance(raw, dict):
            raise UnexpectedAnswerError("the node's answer is not an approval")
        summary = raw.get("summary") if isinstance(raw.get("summary"), dict) else {}
        return cls(
            id=_get(raw, "id", str),
            artifact_id=raw.get("artifact_id"),
            tlp=summary.get("tlp") if summary else None,
            expires_at=_time(raw, "expires_at"),
            raw=raw,
        )


@dataclass(frozen=True)
class Shared:
    """The outcome of :meth:`Client.share`: the artifact (``shared``), or the approval it waits
    for (``pending``). ``replayed`` is true when the node had already carried out this share (an
    earlier attempt whose answer was lost) and answered its first result: nothing was shared
    twice."""

    status: Literal["shared", "pending"]
    artifact: Artifact | None
    approval: PendingApproval | None
    replayed: bool
    raw: dict[str, Any] = field(repr=False, compare=False)

    @property
    def id(self) -> str:
        """The artifact's id (shared), or the approval's (pending)."""
        if self.artifact is not None:
            return self.artifact.id
        assert self.approval is not None  # noqa: S101 - one of the two, by construction
        return self.approval.id


@dataclass(frozen=True)
class Page:
    """One page of a listing; pass ``next_cursor`` back for the next (None: the last page)."""

    items: tuple[Artifact, ...]
    next_cursor: str | None


@dataclass(frozen=True)
class Event:
    """One event of ``GET /v1/events``: an artifact ``arrived``, was ``revoked`` or ``deleted``.
    ``id`` is the cursor to resume after it."""

    name: str
    id: str
    artifact: Artifact
    raw: dict[str, Any] = field(repr=False, compare=False)  # the artifact's JSON


@dataclass(frozen=True)
class Retry:
    """A retry about to happen (given to ``on_retry``): why, the pause, and which attempt the
    next one is, of how many."""

    reason: str
    pause: float  # seconds
    attempt: int  # the next attempt's number, from 2
    attempts: int  # at most this many in all


@dataclass(frozen=True)
class Downloaded:
    """A download, complete and checked against the node's SHA-256: where it went (None when it
    was written to a file object), how many bytes, their SHA-256, and the name it was shared
    under."""

    path: Path | None
    size: int
    sha256: str
    filename: str | None
