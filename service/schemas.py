"""Request and response bodies of the /v1 API (pydantic), shared by routes, CLI and tests."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

__all__ = [
    "TLP_LABELS",
    "ArtifactOut",
    "ArtifactPage",
    "PartnerOut",
    "ShareMetadata",
    "SyncPartnerOut",
]

TLP_LABELS = ("TLP:CLEAR", "TLP:GREEN", "TLP:AMBER", "TLP:AMBER+STRICT", "TLP:RED")
TlpLabel = Literal["TLP:CLEAR", "TLP:GREEN", "TLP:AMBER", "TLP:AMBER+STRICT", "TLP:RED"]

Term = Annotated[
    str,
    StringConstraints(
        min_length=1, max_length=120, pattern=r"^[a-z0-9][a-z0-9-]*(/[a-z0-9][a-z0-9-]*)*$"
    ),
]
NodeId = Annotated[
    str,
    StringConstraints(
        min_length=1, max_length=63, pattern=r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$"
    ),
]


def _aware(value: datetime | None) -> datetime | None:
    if value is not None and value.tzinfo is None:
        raise ValueError("times must carry a time zone, e.g. 2026-12-01T00:00:00Z")
    return value


AwareTime = Annotated[datetime | None, AfterValidator(_aware)]


def _unique(values: list[str]) -> list[str]:
    if len(set(values)) != len(values):
        raise ValueError("values must not repeat")
    return values


class ShareMetadata(BaseModel):
    """The ``metadata`` part of ``POST /v1/artifacts``."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    title: Annotated[str, StringConstraints(min_length=1, max_length=500)]
    tlp: TlpLabel
    topics: Annotated[list[Term], Field(max_length=32), AfterValidator(_unique)] = []
    purposes: Annotated[list[Term], Field(max_length=32), AfterValidator(_unique)] = []
    embargo_until: AwareTime = None
    expires_at: AwareTime = None
    partners: Annotated[list[NodeId], Field(min_length=1, max_length=64), AfterValidator(_unique)]
    filename: Annotated[str, StringConstraints(max_length=255)] | None = None


class DeliveryOut(BaseModel):
    partner: str
    state: str
    attempts: int
    last_error: str | None
    delivered_at: datetime | None


class ArtifactOut(BaseModel):
    id: str
    direction: str
    origin: str
    sender: str
    title: str
    tlp: str
    topics: list[str]
    purposes: list[str]
    recipients: list[str]
    created_at: datetime
    recorded_at: datetime
    embargo_until: datetime | None
    expires_at: datetime | None
    size: int
    sha256: str
    revoked_at: datetime | None
    obligations: list[dict[str, Any]]
    policy: dict[str, Any] | list[Any]
    manifest: dict[str, Any] | None = None
    deliveries: list[DeliveryOut] | None = None


class ArtifactPage(BaseModel):
    items: list[ArtifactOut]
    next_cursor: str | None


class PartnerOut(BaseModel):
    node_id: str
    name: str
    url: str
    fingerprint: str
    descriptor_expires: datetime
    policy: dict[str, Any] | None


class SyncPartnerOut(BaseModel):
    partner: str
    pending: int
    delivered: int
    failing: int
    last_error: str | None
    last_contact: datetime | None
