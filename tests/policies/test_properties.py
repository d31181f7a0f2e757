"""Properties of the evaluator, checked with Hypothesis on generated policies and requests.

Each property is stated as in issue #4. The first test also checks every decision against a
reference evaluator written straight from the spec (no buckets, no precompilation).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from policies import (
    ACTIONS,
    Decision,
    Forbid,
    Permit,
    Policy,
    PolicySet,
    Request,
    evaluate,
    load_policy,
)
from tests.policies.strategies import (
    INSIDE,
    PARTNER,
    VALID_FROM,
    VALID_UNTIL,
    Scenario,
    forbid_matches,
    forbid_st,
    make_policy,
    permit_holds,
    policy_st,
    reference,
    request_st,
    scenario_st,
)

Rule = Permit | Forbid

# Bounded so the whole policies suite stays within a few seconds.
BOUNDED = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def decide(policy: Policy | None, request: Request, now: object) -> Decision:
    policy_set = PolicySet.from_policies([policy] if policy is not None else [])
    return evaluate(policy_set, request, now=now)  # type: ignore[arg-type]


def outcome(d: Decision) -> tuple[bool, str, frozenset[str], tuple[object, ...]]:
    return d.allowed, d.reason, frozenset(r.id for r in d.rules), d.obligations


@BOUNDED
@given(scenario_st())
def test_decisions_agree_with_the_reference_evaluator(s: Scenario) -> None:
    d = decide(s.policy, s.request, s.now)
    want = reference(s.policy, s.request, s.now)
    assert d.allowed == want.allowed
    assert {r.id for r in d.rules} == set(want.rules)
    assert set(d.obligations) == set(want.obligations)


@BOUNDED
@given(scenario_st())
def test_an_allow_names_a_permit_whose_conditions_all_hold(s: Scenario) -> None:
    d = decide(s.policy, s.request, s.now)
    if not d.allowed:
        assert not any(r.kind == "permit" for r in d.rules)
        return
    assert d.rules
    by_id = {p.id: p for p in s.policy.permits}
    for ref in d.rules:
        assert ref.kind == "permit"
        assert ref.clause == by_id[ref.id].clause
        assert permit_holds(by_id[ref.id], s.request, s.now)
    assert not {u.rule.id for u in d.unmet} & {r.id for r in d.rules}


@BOUNDED
@given(scenario_st())
def test_any_matching_forbid_gives_deny(s: Scenario) -> None:
    d = decide(s.policy, s.request, s.now)
    matching = {f.id for f in s.policy.forbids if forbid_matches(f, s.request, s.now)}
    if matching and s.request.partner == PARTNER:
        assert not d.allowed
        expired = s.request.expires_at is not None and s.now >= s.request.expires_at
        if not expired:  # an expired artifact is denied before any rule is looked at
            assert d.reason == "forbidden"
            assert {r.id for r in d.rules} == matching
            assert all(r.kind == "forbid" for r in d.rules)
            assert all(d.findings[r.id] for r in d.rules)  # each says why it matched


@BOUNDED
@given(request_st(VALID_FROM + timedelta(days=100)), policy_st())
def test_an_empty_or_missing_policy_denies_everything(request: Request, policy: Policy) -> None:
    now = VALID_FROM + timedelta(days=100)
    assert not evaluate(PolicySet.empty(), request, now=now).allowed
    assert evaluate(PolicySet.empty(), request, now=now).reason == "no-policy"
    other = dataclasses.replace(request, partner="nobody")
    assert not decide(policy, other, now).allowed
    no_permits = make_policy([], list(policy.forbids))
    assert not decide(no_permits, request, now).allowed


@BOUNDED
@given(scenario_st(), st.data())
def test_adding_a_forbid_never_turns_deny_into_allow(s: Scenario, data: st.DataObject) -> None:
    extra = data.draw(forbid_st("extra"))
    before = decide(s.policy, s.request, s.now)
    after = decide(
        make_policy(list(s.policy.permits), [*s.policy.forbids, extra]), s.request, s.now
    )
    assert before.allowed or not after.allowed
    if after.allowed:
        assert outcome(after) == outcome(before)


@BOUNDED
@given(scenario_st(), st.data())
def test_removing_a_permit_never_turns_deny_into_allow(s: Scenario, data: st.DataObject) -> None:
    if not s.policy.permits:
        return
    i = data.draw(st.integers(0, len(s.policy.permits) - 1))
    fewer = make_policy(
        [p for j, p in enumerate(s.policy.permits) if j != i], list(s.policy.forbids)
    )
    before = decide(s.policy, s.request, s.now)
    after = decide(fewer, s.request, s.now)
    assert before.allowed or not after.allowed


@BOUNDED
@given(scenario_st(), st.randoms(use_true_random=False))
def test_shuffling_rules_changes_nothing(s: Scenario, rnd: object) -> None:
    permits, forbids = list(s.policy.permits), list(s.policy.forbids)
    rnd.shuffle(permits)  # type: ignore[attr-defined]
    rnd.shuffle(forbids)  # type: ignore[attr-defined]
    a = decide(s.policy, s.request, s.now)
    b = decide(make_policy(permits, forbids), s.request, s.now)
    assert outcome(a) == outcome(b)
    assert a.rules == b.rules  # same order too: deciding rules are listed by id
    assert a.unmet == b.unmet
    assert a.summary == b.summary


@BOUNDED
@given(
    policy_st(),
    st.one_of(
        st.integers(1, 10_000).map(lambda h: VALID_FROM - timedelta(hours=h)),
        st.integers(0, 10_000).map(lambda h: VALID_UNTIL + timedelta(hours=h)),
    ),
    st.data(),
)
def test_outside_the_validity_window_gives_deny(
    policy: Policy, now: object, data: st.DataObject
) -> None:
    request = data.draw(request_st(now))  # type: ignore[arg-type]
    d = decide(policy, dataclasses.replace(request, partner=PARTNER), now)
    assert not d.allowed
    assert d.reason == "not-in-force"


@BOUNDED
@given(scenario_st(), st.integers(1, 10_000))
def test_before_the_embargo_ends_gives_deny(s: Scenario, seconds: int) -> None:
    # Permits apply after any embargo unless they say otherwise; with none saying so, an
    # embargoed request is denied, whatever else it asks.
    ended_only = make_policy(
        [dataclasses.replace(p, embargo="ended") for p in s.policy.permits],
        list(s.policy.forbids),
    )
    embargoed = dataclasses.replace(s.request, embargo_until=s.now + timedelta(seconds=seconds))
    assert not decide(ended_only, embargoed, s.now).allowed
    # And with the generated permits: an allow under embargo names only permits that opt in.
    d = decide(s.policy, embargoed, s.now)
    by_id = {p.id: p for p in s.policy.permits}
    assert all(by_id[r.id].embargo in ("active", "any") for r in d.rules if d.allowed)


@BOUNDED
@given(scenario_st(), st.sampled_from(["tlp", "topics", "purposes", "onward_to", "expires_at"]))
def test_a_request_missing_an_attribute_a_rule_needs_gives_deny(s: Scenario, name: str) -> None:
    empty: object = frozenset() if name in ("topics", "purposes") else None
    request = dataclasses.replace(s.request, **{name: empty})
    d = decide(s.policy, request, s.now)
    if name == "tlp":
        assert not d.allowed and d.reason == "invalid-request"
        return
    by_id = {p.id: p for p in s.policy.permits}
    for ref in d.rules if d.allowed else ():
        rule = by_id[ref.id]
        if name == "expires_at":
            assert rule.expiry != "set"
        else:
            assert getattr(rule, name) is None, (name, rule)


@BOUNDED
@given(scenario_st())
def test_obligations_are_the_union_of_the_matching_permits(s: Scenario) -> None:
    d = decide(s.policy, s.request, s.now)
    if not d.allowed:
        assert d.obligations == ()
        return
    holding = [p for p in s.policy.permits if permit_holds(p, s.request, s.now)]
    union = set().union(*(set(p.obligations) for p in holding))
    assert set(d.obligations) == union
    assert list(d.obligations) == sorted(union)  # one canonical order


@BOUNDED
@given(scenario_st())
def test_evaluation_is_pure_and_deterministic(s: Scenario) -> None:
    policy_set = PolicySet.from_policies([s.policy])
    a = evaluate(policy_set, s.request, now=s.now)
    b = evaluate(policy_set, s.request, now=s.now)
    assert a == b
    assert a.to_json() == b.to_json()


@BOUNDED
@given(policy_st(max_permits=4, max_forbids=2), INSIDE)
def test_any_error_while_evaluating_means_deny(policy: Policy, now: object) -> None:
    for bad in (
        Request(PARTNER, "share", "TLP:CLEAR", embargo_until=VALID_FROM.replace(tzinfo=None)),
        Request(PARTNER, "share", "TLP:CLEAR", topics=frozenset({3})),  # type: ignore[arg-type]
        Request(PARTNER, "fly", "TLP:CLEAR"),
        Request(PARTNER, "share", "TLP:PURPLE"),
        Request(PARTNER, "share", "TLP:CLEAR", topics=frozenset({"A/../b"})),
    ):
        d = decide(policy, bad, now)
        assert not d.allowed and d.reason in ("error", "invalid-request"), d
    naive = now.replace(tzinfo=None)  # type: ignore[attr-defined]
    for action in ACTIONS:
        assert not decide(policy, Request(PARTNER, action, "TLP:CLEAR"), naive).allowed


@settings(max_examples=60, deadline=None)
@given(policy_st())
def test_a_policy_round_trips_through_its_yaml_document(policy: Policy) -> None:
    if not policy.permits:
        return  # a file needs at least one permit; the model alone may have none
    text = yaml.safe_dump(policy.to_document(), sort_keys=False, allow_unicode=True)
    assert load_policy(text) == policy


HOURS = st.integers(-365 * 24, 3 * 365 * 24).map(lambda h: VALID_FROM + timedelta(hours=h))


@BOUNDED
@given(scenario_st(), st.data())
def test_a_rule_with_its_own_window_counts_only_within_it(s: Scenario, data: st.DataObject) -> None:
    # Rules of an agreement's terms carry their entry's window (which may begin or end before,
    # inside or after the policy's): at any time, the policy decides as the same policy with
    # only the rules in force then, and no rule windows.
    times = st.just(s.now) | HOURS
    windows = st.none() | st.tuples(times, times).filter(lambda w: w[0] < w[1])

    def windowed(rules: Sequence[Rule]) -> list[Any]:
        return [dataclasses.replace(r, window=data.draw(windows)) for r in rules]

    def in_force_now(rules: list[Any]) -> list[Any]:
        return [
            dataclasses.replace(r, window=None)
            for r in rules
            if r.window is None or r.window[0] <= s.now < r.window[1]
        ]

    permits, forbids = windowed(s.policy.permits), windowed(s.policy.forbids)
    a = decide(make_policy(permits, forbids), s.request, s.now)
    b = decide(make_policy(in_force_now(permits), in_force_now(forbids)), s.request, s.now)
    assert outcome(a) == outcome(b)
    assert a.rules == b.rules
