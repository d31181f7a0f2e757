"""Request and response bodies of the /v1 API (pydantic), shared by routes, CLI and tests."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

from crypto.vocab import MAX_TERM_CHARS, NODE_ID_REGEX, TERM_REGEX
from service.artifacts.terms import ShareTerms
from service.evaluations import EvaluationSummary
from service.files import is_base_name
from service.models import Approval, Artifact, Outbox

__all__ = [
    "ApprovalOut",
    "ArtifactOut",
    "ArtifactPage",
    "PartnerOut",
    "ShareMetadata",
    "SyncPartnerOut",
    "approval_out",
    "artifact_out",
    "is_base_name",
]

# The federation's vocabulary (crypto.vocab): the same grammar as manifests and policies.
TlpLabel = Literal["TLP:CLEAR", "TLP:GREEN", "TLP:AMBER", "TLP:AMBER+STRICT", "TLP:RED"]

Term = Annotated[
    str, StringConstraints(min_length=1, max_length=MAX_TERM_CHARS, pattern=TERM_REGEX)
]
NodeId = Annotated[str, StringConstraints(min_length=1, max_length=63, pattern=NODE_ID_REGEX)]


def _aware(value: datetime | None) -> datetime | None:
    if value is not None and value.tzinfo is None:
        raise ValueError("times must carry a time zone, e.g. 2026-12-01T00:00:00Z")
    if value is not None:
        try:
            value.astimezone(UTC)  # 0001-01-01T00:00+14:00 has no UTC time
        except OverflowError:
            raise ValueError("the time is out of range once converted to UTC") from None
    return value


AwareTime = Annotated[datetime | None, AfterValidator(_aware)]


def _base_name(name: str) -> str:
    if not is_base_name(name):
        raise ValueError("a file name is a base name: no path, no control characters")
    return name


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
    filename: (
        Annotated[str, StringConstraints(max_length=255), AfterValidator(_base_name)] | None
    ) = None  # the file's original name: a recipient's download keeps it
    evaluation: EvaluationSummary | None = None  # an evaluation log's summary (signed, clear)

    def terms(self) -> ShareTerms:
        """The domain's terms of this share (the API converts; the domain never sees this
        model)."""
        return ShareTerms(
            title=self.title,
            tlp=self.tlp,
            partners=tuple(self.partners),
            topics=tuple(self.topics),
            purposes=tuple(self.purposes),
            embargo_until=self.embargo_until,
            expires_at=self.expires_at,
            filename=self.filename,
            evaluation=(
                None if self.evaluation is None else self.evaluation.model_dump(mode="json")
            ),
        )


class DeliveryOut(BaseModel):
    partner: str
    state: str
    attempts: int
    last_error: str | None
    delivered_at: datetime | None
    # The partner's signed receipt (a DSSE envelope, verified by this node when it arrived;
    # check it again offline with the partner's descriptor), once delivered.
    receipt: dict[str, Any] | None = None


class ArtifactOut(BaseModel):
    id: str
    direction: str
    origin: str
    sender: str
    title: str
    tlp: str
    sealing: str  # post-quantum (hybrid ML-KEM-768 + X25519) | classic (X25519)
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
    filename: str | None = None
    evaluation: EvaluationSummary | None = None
    manifest: dict[str, Any] | None = None
    deliveries: list[DeliveryOut] | None = None


def _receipt(stored: str | None) -> dict[str, Any] | None:
    if stored is None:
        return None
    try:
        envelope = json.loads(stored)
    except ValueError:
        return None  # never stored so: receipts are verified before they are kept
    return envelope if isinstance(envelope, dict) else None


def artifact_out(
    row: Artifact, *, full: bool = False, deliveries: list[Outbox] | None = None
) -> ArtifactOut:
    """An artifact row as the API shows it (with its manifest and deliveries when ``full``)."""
    return ArtifactOut(
        id=row.id,
        direction=row.direction,
        origin=row.origin,
        sender=row.sender,
        title=row.title,
        tlp=row.tlp,
        sealing=row.sealing,
        topics=json.loads(row.topics),
        purposes=json.loads(row.purposes),
        recipients=json.loads(row.recipients),
        created_at=row.created_at,
        recorded_at=row.recorded_at,
        embargo_until=row.embargo_until,
        expires_at=row.expires_at,
        size=row.size,
        sha256=row.sha256,
        revoked_at=row.revoked_at,
        obligations=json.loads(row.obligations),
        policy=json.loads(row.policy_ref),
        filename=row.filename,
        evaluation=(
            None
            if row.evaluation is None
            else EvaluationSummary.model_validate_json(row.evaluation)
        ),
        manifest=json.loads(row.manifest) if full else None,
        deliveries=[
            DeliveryOut(
                partner=d.partner,
                state=d.state,
                attempts=d.attempts,
                last_error=d.last_error,
                delivered_at=d.delivered_at,
                receipt=_receipt(d.receipt),
            )
            for d in deliveries
        ]
        if deliveries is not None
        else None,
    )


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
    pull_error: str | None = None  # why the last pull of the partner's feed failed, if it did
    last_pull_at: datetime | None = None


class ApprovalOut(BaseModel):
    """A pending (or decided) action: what it is, who asked, until when, who decided."""

    id: str
    action: str
    state: str
    requested_by: str
    requested_at: datetime
    expires_at: datetime
    summary: dict[str, Any]
    artifact_id: str | None
    decided_by: str | None
    decided_at: datetime | None
    reason: str | None
    result: dict[str, Any] | None = None


def approval_out(row: Approval, *, result: dict[str, Any] | None = None) -> ApprovalOut:
    return ApprovalOut(
        id=row.id,
        action=row.action,
        state=row.state,
        requested_by=row.requester,
        requested_at=row.requested_at,
        expires_at=row.expires_at,
        summary=json.loads(row.summary),
        artifact_id=row.artifact_id,
        decided_by=row.decided_by,
        decided_at=row.decided_at,
        reason=row.reason,
        result=result,
    )
