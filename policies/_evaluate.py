"""The evaluator: a pure function of (policy set, request, now) to a :class:`Decision`.

Deny by default; a matching forbid overrides every permit; any error while evaluating is a deny;
rule order never matters; an allow carries the union of the obligations of every matching permit.

Each policy is precompiled once (``_compile``) into buckets keyed by (action, TLP label), so a
decision only looks at the rules that can apply, and each condition is a set lookup or a prefix
test. Explanations (unmet conditions, why a forbid matched) are computed only when a caller asks
for them (``_decision``), from the same request and time, so the hot path builds no strings.
"""

from __future__ import annotations

from datetime import datetime

from crypto.vocab import is_node_id, is_term
from policies._compile import Compiled, compiled_form
from policies._decision import (
    ERROR,
    EXPIRED,
    FORBIDDEN,
    INVALID_REQUEST,
    NO_MATCHING_PERMIT,
    NO_POLICY,
    NOT_IN_FORCE,
    PERMITTED,
    Decision,
)
from policies._model import Obligation, Request, RuleRef, format_time
from policies._set import PolicySet
from policies._vocab import ACTIONS, SEALING_KINDS

__all__ = ["evaluate"]


def _decision(
    allowed: bool,
    reason: str,
    request: Request,
    now: datetime,
    rules: tuple[RuleRef, ...],
    obligations: tuple[Obligation, ...],
    compiled: Compiled | None,
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
    compiled: Compiled | None = None,
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
    sealing = request.sealing
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
    if sealing is not None and sealing not in SEALING_KINDS:
        return _deny(INVALID_REQUEST, request, now, f"unknown sealing kind {sealing!r}")
    # 2. The partner's policy, in force now.
    policy = policy_set.at(request.partner, now)
    if policy is None:
        return _deny(NO_POLICY, request, now, f"no policy for partner {request.partner!r}")
    compiled: Compiled = policy._compiled or compiled_form(policy)  # one read on the hot path
    if not compiled.valid_from <= now < compiled.valid_until:
        return _deny(
            NOT_IN_FORCE,
            request,
            now,
            f"policy {policy.id} version {policy.version} is in force from "
            f"{format_time(compiled.valid_from)} until {format_time(compiled.valid_until)}",
            compiled,
        )
    bucket = compiled.buckets_at(now).get((action, tlp))  # only the rules in force now
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
    hits = [
        f.ref
        for f in forbids
        if f.matches(topics, purposes, embargoed, has_expiry, onward_to, sealing)
    ]
    if hits:
        return _deny(FORBIDDEN, request, now, "", compiled, tuple(hits))
    # 5. Deny unless a permit holds; an allow carries the union of the matching obligations.
    approved = request.originator_approved is True
    matched = [
        p
        for p in permits
        if p.holds(topics, purposes, embargoed, has_expiry, onward_to, approved, sealing)
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
