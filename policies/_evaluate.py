"""The evaluator: a pure function of (policy set, request, now) to a :class:`Decision`.

Deny by default; a matching forbid overrides every permit; any error while evaluating is a deny;
rule order never matters; an allow carries the union of the obligations of every matching permit.

Each policy is precompiled once (:func:`compile_policy`) into buckets keyed by (action, TLP
label), so a decision only looks at the rules that can apply, and each condition is a set lookup
or a prefix test. Explanations (unmet conditions, why a forbid matched) are computed only when a
caller asks for them, from the same request and time, so the hot path builds no strings.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property
from typing import Any

from policies._model import (
    Forbid,
    Obligation,
    Permit,
    Policy,
    PolicyRef,
    PolicySet,
    Request,
    format_time,
)
from policies._vocab import ACTIONS, TLP_LABELS, is_node_id, is_term, within

__all__ = ["Decision", "RuleRef", "Unmet", "compile_policy", "evaluate"]

# Decision.reason: why the decision is what it is (stable strings, used in JSON and tests).
PERMITTED = "permitted"
FORBIDDEN = "forbidden"
NO_MATCHING_PERMIT = "no-matching-permit"
NO_POLICY = "no-policy"
NOT_IN_FORCE = "not-in-force"
EXPIRED = "expired"
INVALID_REQUEST = "invalid-request"
ERROR = "error"

_ANY, _ENDED, _ACTIVE = 0, 1, 2  # embargo
_SET, _UNSET = 1, 2  # expiry (0 is any)
_EMBARGO = {"any": _ANY, "ended": _ENDED, "active": _ACTIVE}
_EXPIRY = {"any": _ANY, "set": _SET, "unset": _UNSET}


@dataclass(frozen=True, slots=True)
class RuleRef:
    """A rule as a decision names it: id, kind (``permit``/``forbid``), MOU clause."""

    id: str
    kind: str
    clause: str
    description: str = ""

    def to_json(self) -> dict[str, str]:
        return {"id": self.id, "kind": self.kind, "clause": self.clause}


@dataclass(frozen=True, slots=True)
class Unmet:
    """A candidate permit that did not hold, and the conditions it needed that were not met."""

    rule: RuleRef
    conditions: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {**self.rule.to_json(), "unmet": list(self.conditions)}


# --- compiled rules ---------------------------------------------------------------------------


def _terms(values: frozenset[str] | None) -> tuple[frozenset[str] | None, tuple[str, ...]]:
    """(exact terms, ``term/`` prefixes) of a rule's topics or purposes."""
    if values is None:
        return None, ()
    return values, tuple(sorted(v + "/" for v in values))


class _CPermit:
    __slots__ = (
        "approval",
        "embargo",
        "expiry",
        "obligations",
        "onward_to",
        "purpose_prefixes",
        "purposes",
        "ref",
        "rule",
        "sorted_obligations",
        "topic_prefixes",
        "topics",
    )

    def __init__(self, rule: Permit) -> None:
        self.rule = rule
        self.ref = RuleRef(rule.id, "permit", rule.clause, rule.description)
        self.topics, self.topic_prefixes = _terms(rule.topics)
        self.purposes, self.purpose_prefixes = _terms(rule.purposes)
        self.embargo = _EMBARGO[rule.embargo]
        self.expiry = _EXPIRY[rule.expiry]
        self.onward_to = rule.onward_to
        self.approval = rule.originator_approval
        self.obligations = frozenset(rule.obligations)
        self.sorted_obligations = tuple(sorted(self.obligations))

    def holds(
        self,
        topics: frozenset[str],
        purposes: frozenset[str],
        embargoed: bool,
        has_expiry: bool,
        onward_to: str | None,
        approved: bool,
    ) -> bool:
        exact = self.topics
        if exact is not None:
            if not topics:
                return False
            prefixes = self.topic_prefixes
            for t in topics:
                if t not in exact and not t.startswith(prefixes):
                    return False
        exact = self.purposes
        if exact is not None:
            if not purposes:
                return False
            prefixes = self.purpose_prefixes
            for t in purposes:
                if t not in exact and not t.startswith(prefixes):
                    return False
        embargo = self.embargo
        if embargo and embargoed is (embargo == _ENDED):
            return False
        expiry = self.expiry
        if expiry and has_expiry is (expiry == _UNSET):
            return False
        if self.onward_to is not None and onward_to not in self.onward_to:
            return False
        return approved or not self.approval


class _CForbid:
    __slots__ = (
        "embargo",
        "expiry",
        "onward_to",
        "purpose_prefixes",
        "purposes",
        "ref",
        "rule",
        "topic_prefixes",
        "topics",
    )

    def __init__(self, rule: Forbid) -> None:
        self.rule = rule
        self.ref = RuleRef(rule.id, "forbid", rule.clause, rule.description)
        self.topics, self.topic_prefixes = _terms(rule.topics)
        self.purposes, self.purpose_prefixes = _terms(rule.purposes)
        self.embargo = _EMBARGO[rule.embargo]
        self.expiry = _EXPIRY[rule.expiry]
        self.onward_to = rule.onward_to

    def matches(
        self,
        topics: frozenset[str],
        purposes: frozenset[str],
        embargoed: bool,
        has_expiry: bool,
        onward_to: str | None,
    ) -> bool:
        # A forbid matches when any term of the request is within one of its terms; a request
        # without the attribute cannot rule the forbid out, so it matches too (fail closed).
        exact = self.topics
        if exact is not None and topics:
            prefixes = self.topic_prefixes
            for t in topics:
                if t in exact or t.startswith(prefixes):
                    break
            else:
                return False
        exact = self.purposes
        if exact is not None and purposes:
            prefixes = self.purpose_prefixes
            for t in purposes:
                if t in exact or t.startswith(prefixes):
                    break
            else:
                return False
        embargo = self.embargo
        if embargo and embargoed is (embargo == _ENDED):
            return False
        expiry = self.expiry
        if expiry and has_expiry is (expiry == _UNSET):
            return False
        return not (
            self.onward_to is not None and onward_to is not None and onward_to not in self.onward_to
        )


class _Compiled:
    """A policy ready for evaluation: its rules bucketed by (action, TLP label)."""

    __slots__ = ("buckets", "candidates", "policy", "ref", "valid_from", "valid_until")

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.ref = PolicyRef(policy.id, policy.version, policy.sha256)
        self.valid_from = policy.valid_from
        self.valid_until = policy.valid_until
        permits = [_CPermit(r) for r in sorted(policy.permits, key=lambda r: r.id)]
        forbids = [_CForbid(r) for r in sorted(policy.forbids, key=lambda r: r.id)]
        self.candidates = {a: tuple(p for p in permits if a in p.rule.actions) for a in ACTIONS}
        self.buckets: dict[tuple[str, str], tuple[tuple[_CForbid, ...], tuple[_CPermit, ...]]]
        self.buckets = {
            (action, label): (
                tuple(
                    f
                    for f in forbids
                    if action in f.rule.actions and (f.rule.tlp is None or label in f.rule.tlp)
                ),
                tuple(p for p in self.candidates[action] if label in p.rule.tlp),
            )
            for action in ACTIONS
            for label in TLP_LABELS
        }


def compile_policy(policy: Policy) -> _Compiled:
    return _Compiled(policy)


# --- decisions --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Decision:
    """The outcome of one evaluation, with everything needed to explain and record it.

    ``rules`` are the deciding rules: the matching permits of an allow, the matching forbids of a
    forbidden deny, none otherwise. ``unmet`` lists every candidate permit (those covering the
    action) that did not hold, with its unmet conditions. ``policy`` identifies the exact policy
    file (id, version, SHA-256) and is what a signed manifest records, as :attr:`policy_ref`.
    """

    allowed: bool
    reason: str
    request: Request
    now: datetime
    rules: tuple[RuleRef, ...] = ()
    obligations: tuple[Obligation, ...] = ()
    policy: PolicyRef | None = None
    detail: str = ""
    _compiled: _Compiled | None = field(default=None, repr=False, compare=False)

    @property
    def effect(self) -> str:
        return "allow" if self.allowed else "deny"

    @property
    def policy_ref(self) -> dict[str, Any] | None:
        return self.policy.to_json() if self.policy else None

    @cached_property
    def unmet(self) -> tuple[Unmet, ...]:
        """Each candidate permit that did not hold, with the conditions it needed."""
        if self._compiled is None:
            return ()
        out = []
        for cp in self._compiled.candidates.get(self.request.action, ()):
            checks = _permit_checks(cp.rule, self.request, self.now)
            missing = tuple(text for ok, text in checks if not ok)
            if missing:
                out.append(Unmet(cp.ref, missing))
        return tuple(out)

    @cached_property
    def findings(self) -> dict[str, tuple[str, ...]]:
        """For each deciding rule id, the conditions of that rule that held."""
        if self._compiled is None:
            return {}
        policy = self._compiled.policy
        by_id = {r.id: r for r in policy.rules}
        out: dict[str, tuple[str, ...]] = {}
        for ref in self.rules:
            rule = by_id[ref.id]
            checks = (
                _permit_checks(rule, self.request, self.now)
                if isinstance(rule, Permit)
                else _forbid_checks(rule, self.request, self.now)
            )
            out[ref.id] = tuple(text for ok, text in checks if ok)
        return out

    @property
    def summary(self) -> str:
        """One line for a policy officer, a log line or a problem document's ``detail``."""
        from policies._explain import summarize

        return summarize(self)

    def to_json(self) -> dict[str, Any]:
        """The decision as recorded in manifests, audit events and problem documents."""
        return {
            "effect": self.effect,
            "reason": self.reason,
            "summary": self.summary,
            "request": self.request.to_json(),
            "evaluated_at": format_time(self.now),
            "rules": [r.to_json() for r in self.rules],
            "unmet": [u.to_json() for u in self.unmet],
            "obligations": [o.to_json() for o in self.obligations],
            "policy": self.policy_ref,
        }


def _decision(
    allowed: bool,
    reason: str,
    request: Request,
    now: datetime,
    rules: tuple[RuleRef, ...],
    obligations: tuple[Obligation, ...],
    compiled: _Compiled | None,
    detail: str,
) -> Decision:
    """Build a Decision without the dataclass ``__init__`` (one dict update; the hot path)."""
    decision = object.__new__(Decision)
    decision.__dict__.update(
        allowed=allowed,
        reason=reason,
        request=request,
        now=now,
        rules=rules,
        obligations=obligations,
        policy=compiled.ref if compiled is not None else None,
        detail=detail,
        _compiled=compiled,
    )
    return decision


def _deny(
    reason: str,
    request: Request,
    now: datetime,
    detail: str,
    compiled: _Compiled | None = None,
    rules: tuple[RuleRef, ...] = (),
) -> Decision:
    return _decision(False, reason, request, now, rules, (), compiled, detail)


def evaluate(policy_set: PolicySet, request: Request, *, now: datetime) -> Decision:
    """Decide ``request`` against the partner's policy in ``policy_set`` at time ``now``.

    Never raises: an error while evaluating is a deny with reason ``error``.
    """
    try:
        return _evaluate(policy_set, request, now)
    except Exception as exc:
        return Decision(
            False, ERROR, request, now, detail=f"the request could not be evaluated ({exc!r})"
        )


def _evaluate(policy_set: PolicySet, request: Request, now: datetime) -> Decision:
    action = request.action
    tlp = request.tlp
    topics = request.topics
    purposes = request.purposes
    onward_to = request.onward_to
    # 1. The request itself: known vocabulary, well-formed terms.
    if action not in ACTIONS:
        return _deny(INVALID_REQUEST, request, now, f"unknown action {action!r}")
    if tlp is None:
        return _deny(INVALID_REQUEST, request, now, "the request has no TLP label")
    for t in topics:
        if not is_term(t):
            return _deny(INVALID_REQUEST, request, now, f"invalid topic {t!r}")
    for t in purposes:
        if not is_term(t):
            return _deny(INVALID_REQUEST, request, now, f"invalid purpose {t!r}")
    if onward_to is not None and not is_node_id(onward_to):
        return _deny(INVALID_REQUEST, request, now, f"invalid onward node id {onward_to!r}")
    # 2. The partner's policy, in force now.
    policy = policy_set.policies.get(request.partner)
    if policy is None:
        return _deny(NO_POLICY, request, now, f"no policy for partner {request.partner!r}")
    compiled: _Compiled = policy._compiled
    if not compiled.valid_from <= now < compiled.valid_until:
        return _deny(
            NOT_IN_FORCE,
            request,
            now,
            f"policy {policy.id} version {policy.version} is in force from "
            f"{format_time(compiled.valid_from)} until {format_time(compiled.valid_until)}",
            compiled,
        )
    bucket = compiled.buckets.get((action, tlp))
    if bucket is None:
        return _deny(INVALID_REQUEST, request, now, f"unknown TLP label {tlp!r}")
    # 3. Facts about the artifact at this time.
    expires_at = request.expires_at
    has_expiry = expires_at is not None
    if expires_at is not None and now >= expires_at:
        return _deny(
            EXPIRED, request, now, f"the artifact expired at {format_time(expires_at)}", compiled
        )
    embargo_until = request.embargo_until
    embargoed = embargo_until is not None and now < embargo_until
    forbids, permits = bucket
    # 4. Forbid overrides permit.
    hits = [f.ref for f in forbids if f.matches(topics, purposes, embargoed, has_expiry, onward_to)]
    if hits:
        return _deny(FORBIDDEN, request, now, "", compiled, tuple(hits))
    # 5. Deny unless a permit holds; an allow carries the union of the matching obligations.
    approved = request.originator_approved is True
    matched = [
        p for p in permits if p.holds(topics, purposes, embargoed, has_expiry, onward_to, approved)
    ]
    if not matched:
        return _deny(NO_MATCHING_PERMIT, request, now, "", compiled)
    if len(matched) == 1:
        obligations = matched[0].sorted_obligations
    else:
        obligations = tuple(sorted(frozenset().union(*(p.obligations for p in matched))))
    return _decision(
        True,
        PERMITTED,
        request,
        now,
        tuple(p.ref for p in matched),
        obligations,
        compiled,
        "",
    )


# --- explanations (slow path) -----------------------------------------------------------------


def _labels(labels: Iterable[str]) -> str:
    return ", ".join(t for t in TLP_LABELS if t in set(labels))


def _list(values: Iterable[str]) -> str:
    return ", ".join(sorted(values))


def _embargo_text(request: Request) -> str:
    until = request.embargo_until
    return f"the artifact is under embargo until {format_time(until) if until else '?'}"


def _permit_checks(rule: Permit, request: Request, now: datetime) -> list[tuple[bool, str]]:
    """Every condition of a permit as (holds, sentence)."""
    out: list[tuple[bool, str]] = []
    if request.tlp in rule.tlp:
        out.append((True, f"{request.tlp} is one of {_labels(rule.tlp)}"))
    elif request.tlp is None:
        out.append((False, f"the request has no TLP label; the rule needs {_labels(rule.tlp)}"))
    else:
        out.append((False, f"{request.tlp} is not one of {_labels(rule.tlp)}"))
    for name, singular in (("topics", "topic"), ("purposes", "purpose")):
        scopes: frozenset[str] | None = getattr(rule, name)
        values: frozenset[str] = getattr(request, name)
        if scopes is None:
            continue
        if not values:
            out.append((False, f"the request names no {singular}; the rule needs {_list(scopes)}"))
            continue
        for value in sorted(values):
            inside = [s for s in sorted(scopes) if within(value, s)]
            if inside:
                out.append((True, f"{singular} {value} is within {inside[0]}"))
            else:
                out.append((False, f"{singular} {value} is not within {_list(scopes)}"))
    embargoed = request.embargo_until is not None and now < request.embargo_until
    if rule.embargo == "ended":
        if embargoed:
            out.append((False, _embargo_text(request) + "; the rule applies once it has ended"))
        else:
            out.append((True, "the artifact is not under embargo"))
    elif rule.embargo == "active":
        if embargoed:
            out.append((True, _embargo_text(request)))
        else:
            out.append((False, "the artifact is not under embargo; the rule applies during one"))
    if rule.expiry == "set":
        if request.expires_at is None:
            out.append((False, "the artifact has no expiry; the rule needs one"))
        else:
            out.append((True, f"the artifact expires at {format_time(request.expires_at)}"))
    elif rule.expiry == "unset":
        if request.expires_at is None:
            out.append((True, "the artifact has no expiry"))
        else:
            out.append((False, "the artifact has an expiry; the rule applies only without one"))
    if rule.onward_to is not None:
        if request.onward_to is None:
            out.append((False, "the request names no onward recipient"))
        elif request.onward_to in rule.onward_to:
            out.append((True, f"{request.onward_to} is one of {_list(rule.onward_to)}"))
        else:
            out.append((False, f"{request.onward_to} is not one of {_list(rule.onward_to)}"))
    if rule.originator_approval:
        if request.originator_approved is True:
            out.append((True, "the originator approved it"))
        else:
            out.append((False, "the originator has not approved it"))
    return out


def _forbid_checks(rule: Forbid, request: Request, now: datetime) -> list[tuple[bool, str]]:
    """Every condition of a forbid as (holds, sentence)."""
    out: list[tuple[bool, str]] = []
    if rule.tlp is not None:
        if request.tlp in rule.tlp:
            out.append((True, f"{request.tlp} is one of {_labels(rule.tlp)}"))
        else:
            out.append((False, f"{request.tlp} is not one of {_labels(rule.tlp)}"))
    for name, singular in (("topics", "topic"), ("purposes", "purpose")):
        scopes: frozenset[str] | None = getattr(rule, name)
        values: frozenset[str] = getattr(request, name)
        if scopes is None:
            continue
        if not values:
            out.append(
                (True, f"the request names no {singular}, so {_list(scopes)} cannot be ruled out")
            )
            continue
        hits = [(v, s) for v in sorted(values) for s in sorted(scopes) if within(v, s)]
        if hits:
            out.extend((True, f"{singular} {v} is within forbidden {s}") for v, s in hits)
        else:
            out.append((False, f"no {singular} is within {_list(scopes)}"))
    embargoed = request.embargo_until is not None and now < request.embargo_until
    if rule.embargo == "active":
        if embargoed:
            out.append((True, _embargo_text(request)))
        else:
            out.append((False, "the artifact is not under embargo"))
    elif rule.embargo == "ended":
        out.append((not embargoed, "the artifact is not under embargo"))
    if rule.expiry == "unset":
        out.append((request.expires_at is None, "the artifact has no expiry"))
    elif rule.expiry == "set":
        out.append((request.expires_at is not None, "the artifact has an expiry"))
    if rule.onward_to is not None:
        if request.onward_to is None:
            out.append((True, "the request names no onward recipient"))
        else:
            out.append(
                (
                    request.onward_to in rule.onward_to,
                    f"{request.onward_to} is one of {_list(rule.onward_to)}",
                )
            )
    if not out:
        out.append((True, f"the rule forbids every {request.action}"))
    return out
