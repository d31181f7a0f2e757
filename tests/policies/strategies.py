"""Hypothesis strategies for policies and requests, and a reference evaluator written from the spec.

The vocabularies are deliberately tiny (a few hierarchical terms, three nodes, a two-year window)
so that generated requests often meet generated rules, partly or fully.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from hypothesis import strategies as st

from crypto.vocab import TLP_LABELS
from policies import (
    ACTIONS,
    Approval,
    Forbid,
    Obligation,
    Permit,
    Policy,
    Request,
)
from policies._vocab import within

PARTNER = "partner-a"
TERMS = ("a", "a/b", "a/b/c", "a/d", "e", "e/f")
NODES = ("n1", "n2", "n3")
VALID_FROM = datetime(2025, 1, 1, tzinfo=UTC)
VALID_UNTIL = datetime(2027, 1, 1, tzinfo=UTC)
INSIDE = st.integers(0, 2 * 365 * 24 - 1).map(lambda h: VALID_FROM + timedelta(hours=h))


def subsets(values: tuple[str, ...], *, min_size: int = 0) -> st.SearchStrategy[frozenset[str]]:
    """A subset as one integer bit mask: one draw, no rejected duplicates, shrinks to few."""
    low = 0 if min_size == 0 else 1
    return st.integers(low, 2 ** len(values) - 1).map(
        lambda mask: frozenset(v for i, v in enumerate(values) if mask >> i & 1)
    )


# Strategies are built once: building them inside a composite on every draw is what makes
# Hypothesis slow, not the evaluator.
ANY_TERMS = subsets(TERMS)
SOME_TERMS = subsets(TERMS, min_size=1)
OPTIONAL_TERMS = st.none() | SOME_TERMS
SOME_LABELS = subsets(TLP_LABELS, min_size=1)
OPTIONAL_LABELS = st.none() | SOME_LABELS
SOME_NODES = subsets(NODES, min_size=1)
OPTIONAL_NODES = st.none() | SOME_NODES
LOCAL_ACTIONS = subsets(("share", "receive", "read"), min_size=1)
SOME_ACTIONS = subsets(ACTIONS, min_size=1)
PERMIT_EMBARGO = st.sampled_from(("ended", "ended", "active", "any"))
FORBID_EMBARGO = st.sampled_from(("any", "any", "active", "ended"))
EXPIRY = st.sampled_from(("any", "any", "set", "unset"))
SEALING = st.sampled_from(("any", "any", "any", "post-quantum", "classic"))
REQUEST_SEALING = st.sampled_from((None, "post-quantum", "post-quantum", "classic"))
_OBLIGATION_POOL = (
    Obligation.attribute("X"),
    Obligation.attribute("Y"),
    Obligation.retain_max(30),
    Obligation.retain_max(365),
    Obligation.delete_at_expiry(),
    Obligation.inform(),
    Obligation.onward(["n1"], originator_approval=True),
    Obligation.onward(["n1", "n2"], originator_approval=False),
)
# At most one obligation of each kind per rule, as in a file.
OBLIGATIONS = st.integers(0, 2 ** len(_OBLIGATION_POOL) - 1).map(
    lambda mask: tuple(
        sorted({o.kind: o for i, o in enumerate(_OBLIGATION_POOL) if mask >> i & 1}.values())
    )
)


@st.composite
def permit_st(draw: st.DrawFn, rule_id: str) -> Permit:
    onward = draw(st.booleans())
    return Permit(
        id=rule_id,
        clause=f"clause of {rule_id}",
        actions=frozenset({"onward_share"}) if onward else draw(LOCAL_ACTIONS),
        tlp=draw(SOME_LABELS),
        topics=draw(OPTIONAL_TERMS),
        purposes=draw(OPTIONAL_TERMS),
        embargo=draw(PERMIT_EMBARGO),
        expiry=draw(EXPIRY),
        sealing=draw(SEALING),
        onward_to=draw(SOME_NODES) if onward else None,
        originator_approval=draw(st.booleans()) if onward else False,
        obligations=draw(OBLIGATIONS),
    )


@st.composite
def forbid_st(draw: st.DrawFn, rule_id: str) -> Forbid:
    actions = draw(SOME_ACTIONS)
    return Forbid(
        id=rule_id,
        clause=f"clause of {rule_id}",
        actions=actions,
        tlp=draw(OPTIONAL_LABELS),
        topics=draw(OPTIONAL_TERMS),
        purposes=draw(OPTIONAL_TERMS),
        embargo=draw(FORBID_EMBARGO),
        expiry=draw(EXPIRY),
        sealing=draw(SEALING),
        onward_to=draw(OPTIONAL_NODES) if actions == {"onward_share"} else None,
    )


PERMITS = [permit_st(f"p{i}") for i in range(8)]
FORBIDS = [forbid_st(f"f{i}") for i in range(8)]


def make_policy(permit_rules: list[Permit], forbid_rules: list[Forbid]) -> Policy:
    return Policy(
        id="generated",
        version=1,
        mou="generated MOU",
        partner=PARTNER,
        valid_from=VALID_FROM,
        valid_until=VALID_UNTIL,
        approved_by=(Approval("T. Officer", "Policy officer", date(2024, 12, 1)),),
        permits=tuple(permit_rules),
        forbids=tuple(forbid_rules),
    )


@st.composite
def policy_st(draw: st.DrawFn, *, max_permits: int = 6, max_forbids: int = 3) -> Policy:
    n_permits = draw(st.integers(0, max_permits))
    n_forbids = draw(st.integers(0, max_forbids))
    return make_policy(
        [draw(PERMITS[i]) for i in range(n_permits)],
        [draw(FORBIDS[i]) for i in range(n_forbids)],
    )


PARTNERS = st.sampled_from((PARTNER, PARTNER, PARTNER, "partner-b"))
OFFSETS = st.none() | st.integers(-30, 30).map(lambda d: timedelta(days=d, seconds=1))
ONWARD = st.none() | st.sampled_from(NODES)


@st.composite
def request_st(draw: st.DrawFn, now: datetime) -> Request:
    action = draw(st.sampled_from(ACTIONS))
    embargo, expiry = draw(OFFSETS), draw(OFFSETS)
    return Request(
        partner=draw(PARTNERS),
        action=action,
        tlp=draw(st.sampled_from(TLP_LABELS)),
        topics=draw(ANY_TERMS),
        purposes=draw(ANY_TERMS),
        embargo_until=now + embargo if embargo is not None else None,
        expires_at=now + expiry if expiry is not None else None,
        onward_to=draw(ONWARD) if action == "onward_share" else None,
        originator_approved=draw(st.booleans()),
        sealing=draw(REQUEST_SEALING),
    )


@dataclass(frozen=True)
class Scenario:
    policy: Policy
    request: Request
    now: datetime


@st.composite
def scenario_st(draw: st.DrawFn) -> Scenario:
    now = draw(INSIDE)
    return Scenario(draw(policy_st()), draw(request_st(now)), now)


# --- the reference evaluator: the spec, literally, with no precompilation --------------------


def _terms_within(values: frozenset[str], scopes: frozenset[str] | None) -> bool:
    if scopes is None:
        return True
    return bool(values) and all(any(within(v, s) for s in scopes) for v in values)


def _terms_touch(values: frozenset[str], scopes: frozenset[str] | None) -> bool:
    if scopes is None or not values:
        return True
    return any(within(v, s) for v in values for s in scopes)


def _state(rule_state: str, embargoed: bool) -> bool:
    return rule_state == "any" or (rule_state == "active") == embargoed


def _expiry(rule_state: str, has_expiry: bool) -> bool:
    return rule_state == "any" or (rule_state == "set") == has_expiry


def _sealing_holds(rule_state: str, sealing: str | None) -> bool:
    return rule_state == "any" or sealing == rule_state


def _sealing_touches(rule_state: str, sealing: str | None) -> bool:
    return rule_state == "any" or sealing is None or sealing == rule_state


def permit_holds(rule: Permit, r: Request, now: datetime) -> bool:
    embargoed = r.embargo_until is not None and now < r.embargo_until
    return (
        r.action in rule.actions
        and r.tlp in rule.tlp
        and _terms_within(r.topics, rule.topics)
        and _terms_within(r.purposes, rule.purposes)
        and _state(rule.embargo, embargoed)
        and _expiry(rule.expiry, r.expires_at is not None)
        and _sealing_holds(rule.sealing, r.sealing)
        and (rule.onward_to is None or r.onward_to in rule.onward_to)
        and (not rule.originator_approval or r.originator_approved)
    )


def forbid_matches(rule: Forbid, r: Request, now: datetime) -> bool:
    embargoed = r.embargo_until is not None and now < r.embargo_until
    return (
        r.action in rule.actions
        and (rule.tlp is None or r.tlp in rule.tlp)
        and _terms_touch(r.topics, rule.topics)
        and _terms_touch(r.purposes, rule.purposes)
        and _state(rule.embargo, embargoed)
        and _expiry(rule.expiry, r.expires_at is not None)
        and _sealing_touches(rule.sealing, r.sealing)
        and (rule.onward_to is None or r.onward_to is None or r.onward_to in rule.onward_to)
    )


@dataclass(frozen=True)
class Expected:
    allowed: bool
    rules: frozenset[str]
    obligations: frozenset[Obligation]


def reference(policy: Policy | None, r: Request, now: datetime) -> Expected:
    deny = Expected(False, frozenset(), frozenset())
    if policy is None or r.partner != policy.partner or r.tlp is None:
        return deny
    if not policy.valid_from <= now < policy.valid_until:
        return deny
    if r.expires_at is not None and now >= r.expires_at:
        return deny
    hits = frozenset(f.id for f in policy.forbids if forbid_matches(f, r, now))
    if hits:
        return Expected(False, hits, frozenset())
    holding = [p for p in policy.permits if permit_holds(p, r, now)]
    if not holding:
        return deny
    return Expected(
        True,
        frozenset(p.id for p in holding),
        frozenset(o for p in holding for o in p.obligations),
    )
