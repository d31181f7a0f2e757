"""The one enforcement step: a policy request built from an artifact's facts, the node's
decision, and on a denial the refusal audited (rule, clause, partner) and raised as a
:class:`PolicyDeniedError`, in one place for sharing, reading, receiving and passing on; and
:func:`refuse`, the one helper through which these steps audit any other refusal of theirs.

It does not decide: the core's policies do (``node.policies.decide``). It does not refuse for
reasons that are not a policy's (an unknown partner, a revoked or expired artifact, a chain
that does not verify): those refusals stay with the step that finds them.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from sqlmodel import Session

from policies import Decision, Request, RuleRef
from service.artifacts.rows import json_list
from service.audit.log import record
from service.audit.refusals import mark_audited
from service.errors import PolicyDeniedError
from service.models import Artifact
from service.node import Node

__all__ = ["Facts", "Refusal", "audit_rule", "deny", "enforce", "first_rule", "refuse"]


class _Described(Protocol):
    """What a manifest and a share's metadata both say about an artifact."""

    @property
    def tlp(self) -> str: ...
    @property
    def topics(self) -> Collection[str]: ...
    @property
    def purposes(self) -> Collection[str]: ...
    @property
    def embargo_until(self) -> datetime | None: ...
    @property
    def expires_at(self) -> datetime | None: ...


@dataclass(frozen=True, slots=True)
class Facts:
    """The facts about an artifact that a policy decides on."""

    tlp: str
    topics: frozenset[str]
    purposes: frozenset[str]
    embargo_until: datetime | None
    expires_at: datetime | None
    sealing: str | None = None  # post-quantum | classic; None while not known

    @classmethod
    def of(cls, source: _Described, *, sealing: str | None = None) -> Facts:
        """The facts a manifest, or a share's metadata, states; ``sealing`` how it is (or will
        be) sealed."""
        return cls(
            source.tlp,
            frozenset(source.topics),
            frozenset(source.purposes),
            source.embargo_until,
            source.expires_at,
            sealing,
        )

    @classmethod
    def of_row(cls, row: Artifact) -> Facts:
        """The facts a stored artifact's row keeps (topics and purposes as JSON lists)."""
        return cls(
            row.tlp,
            frozenset(json_list(row.topics)),
            frozenset(json_list(row.purposes)),
            row.embargo_until,
            row.expires_at,
            row.sealing,
        )

    def request(self, partner: str, action: str, **extra: Any) -> Request:
        """The policy request for ``action`` about ``partner`` (``extra``: ``onward_to``,
        ``originator_approved``)."""
        return Request(
            partner=partner,
            action=action,
            tlp=self.tlp,
            topics=self.topics,
            purposes=self.purposes,
            embargo_until=self.embargo_until,
            expires_at=self.expires_at,
            sealing=self.sealing,
            **extra,
        )


@dataclass(frozen=True, slots=True)
class Refusal:
    """The audit entry of a denial, besides what the decision says: its kind, who asked, the
    artifact it is about, and any detail to keep next to the decision."""

    kind: str
    actor: str
    artifact_id: str | None = None
    digest: str | None = None
    detail: Mapping[str, Any] = field(default_factory=dict)


def first_rule(decision: Decision) -> RuleRef | None:
    """The rule a decision names first (the one a refusal cites), if any."""
    return decision.rules[0] if decision.rules else None


def audit_rule(decision: Decision) -> str:
    """The ``rule`` an audit entry of ``decision`` records: its first rule, or its reason."""
    rule = first_rule(decision)
    return rule.id if rule else decision.reason


def _record(
    session: Session,
    refusal: Refusal,
    *,
    partner: str | None,
    rule: str | None,
    clause: str | None,
    detail: dict[str, Any],
    now: datetime,
) -> None:
    record(
        session,
        kind=refusal.kind,
        actor=refusal.actor,
        partner=partner,
        artifact_id=refusal.artifact_id,
        digest=refusal.digest,
        decision="deny",
        rule=rule,
        clause=clause,
        detail=detail,
        now=now,
    )


def refuse(
    node: Node,
    refusal: Refusal,
    partners: Sequence[str | None],
    /,
    *,
    rule: str | None,
    clause: str | None = None,
    now: datetime | None = None,
    count: Callable[[], None] | None = None,
) -> None:
    """Audit a refusal about each of ``partners`` (``None``: about no partner) in one
    transaction, with ``rule``, ``clause`` and the refusal's detail; ``count`` is called once,
    for the metrics. The caller raises the error that says why, marked with
    :func:`service.audit.refusals.mark_audited` so that the problem handler adds no entry."""
    now = now or node.now()
    with node.db.session() as session:
        for partner in partners:
            _record(
                session, refusal, partner=partner, rule=rule, clause=clause,
                detail=dict(refusal.detail), now=now,
            )  # fmt: skip
    if count is not None:
        count()


def deny(
    node: Node,
    refusal: Refusal,
    denials: Sequence[tuple[str, Decision]],
    /,
    *,
    message: str,
    now: datetime,
    count: Callable[[], None] | None = None,
    audit: bool = True,
    **problem: Any,
) -> PolicyDeniedError:
    """Audit each ``(partner, decision)`` denial in one transaction and return the error to
    raise, naming the first denial's partner, rule, clause and reason (``problem`` adds to or
    overrides these fields), marked audited for the problem handler. ``count`` is called once,
    for the metrics. Without ``audit`` nothing is written: the caller has counted the denial
    for a summary entry (``service.audit.budget``)."""
    if audit:
        with node.db.session() as session:
            for partner, decision in denials:
                rule = first_rule(decision)
                _record(
                    session, refusal, partner=partner, rule=audit_rule(decision),
                    clause=rule.clause if rule else None,
                    detail={**refusal.detail, "decision": decision.to_json()}, now=now,
                )  # fmt: skip
    if count is not None:
        count()
    partner, first = denials[0]
    rule = first_rule(first)
    fields: dict[str, Any] = {
        "partner": partner,
        "rule": rule.id if rule else None,
        "clause": rule.clause if rule else None,
        "reason": first.reason,
    }
    fields.update(problem)
    return mark_audited(PolicyDeniedError(message, **fields))


def enforce(
    node: Node,
    request: Request,
    /,
    *,
    refusal: Refusal,
    message: Callable[[Decision], str],
    now: datetime,
    count: Callable[[], None] | None = None,
    admit: Callable[[Decision], bool] | None = None,
    **problem: Any,
) -> Decision:
    """Decide ``request``; return the decision if it allows, or audit the denial (about
    ``request.partner``) and raise it (see :func:`deny`). ``admit``, when given, says whether
    the denial is audited on its own entry (``service.audit.budget``)."""
    decision = node.policies.decide(request, now=now)
    if decision.allowed:
        return decision
    raise deny(
        node,
        refusal,
        [(request.partner, decision)],
        message=message(decision),
        now=now,
        count=count,
        audit=admit is None or admit(decision),
        **problem,
    )
