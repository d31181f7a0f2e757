"""The evaluator's semantics, case by case, and the explanations it gives."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from policies import (
    Decision,
    Obligation,
    PolicySet,
    Request,
    evaluate,
    explain,
    load_policy,
)

POLICY = """\
format: entente.policy/v1
id: node-a.partner-a
version: 3
mou: Test MOU [example]
partner: partner-a
valid_from: 2025-01-01
valid_until: 2026-12-31
approved_by:
  - {name: T. Officer, role: Policy officer, date: 2024-12-01}
permit:
  - id: share-eval
    clause: Test MOU §1
    actions: [share]
    tlp: [TLP:CLEAR, TLP:GREEN, TLP:AMBER]
    topics: [evaluation]
    purposes: [evaluation]
    embargo: any
    obligations: {attribute: Node A, retain_max: {days: 365}}
  - id: share-amber-inform
    clause: Test MOU §2
    actions: [share]
    tlp: [TLP:AMBER]
    topics: [evaluation]
    purposes: [evaluation]
    embargo: any
    obligations: {inform: true, retain_max: {days: 90}}
  - id: share-red-team
    clause: Test MOU §3
    actions: [share]
    tlp: [TLP:CLEAR]
    topics: [evaluation]
    purposes: [evaluation/red-teaming]
  - id: read-with-expiry
    clause: Test MOU §4
    actions: [read]
    tlp: [TLP:GREEN]
    expiry: set
  - id: onward
    clause: Test MOU §5
    actions: [onward_share]
    tlp: [TLP:GREEN]
    onward_to: [node-c]
    originator_approval: true
    obligations: {onward: {to: [node-d], originator_approval: true}}
forbid:
  - id: no-red-team-of-minors
    clause: Test MOU §6
    actions: [share]
    purposes: [evaluation/red-teaming/minors]
  - id: no-embargoed-amber
    clause: Test MOU §7
    actions: [share]
    tlp: [TLP:AMBER]
    embargo: active
  - id: not-to-node-x
    clause: Test MOU §8
    actions: [onward_share]
    onward_to: [node-x]
"""
SET = PolicySet.from_policies([load_policy(POLICY, source="a.yaml")])
NOW = datetime(2026, 3, 1, 12, tzinfo=UTC)


def ask(*, now: datetime = NOW, **fields: object) -> Decision:
    defaults: dict[str, object] = {
        "partner": "partner-a",
        "action": "share",
        "tlp": "TLP:GREEN",
        "topics": frozenset({"evaluation"}),
        "purposes": frozenset({"evaluation"}),
    }
    return evaluate(SET, Request(**{**defaults, **fields}), now=now)  # type: ignore[arg-type]


def rule_ids(d: Decision) -> list[str]:
    return [r.id for r in d.rules]


def test_allow_carries_rules_clauses_obligations_and_the_policy() -> None:
    d = ask()
    assert d.allowed and d.effect == "allow" and d.reason == "permitted"
    assert rule_ids(d) == ["share-eval"]
    assert d.rules[0].clause == "Test MOU §1"
    assert d.obligations == (Obligation.attribute("Node A"), Obligation.retain_max(365))
    policy = SET.get("partner-a")
    assert policy is not None
    assert d.policy_ref == {"id": "node-a.partner-a", "version": 3, "sha256": policy.sha256}


def test_obligations_of_all_matching_permits_are_united() -> None:
    d = ask(tlp="TLP:AMBER")
    assert rule_ids(d) == ["share-amber-inform", "share-eval"]
    assert {o.kind for o in d.obligations} == {"attribute", "inform", "retain_max"}
    # Both retain_max obligations are kept; the strictest is what binds.
    assert [o.days for o in d.obligations if o.kind == "retain_max"] == [90, 365]


@pytest.mark.parametrize(
    ("purposes", "allowed"),
    [
        ({"evaluation"}, True),
        ({"evaluation/red-teaming"}, True),  # below a permitted purpose
        ({"evaluation/red-teaming/jailbreaks"}, True),
        ({"evaluation-extra"}, False),  # a prefix of the text is not a parent
        ({"research"}, False),
        ({"evaluation", "research"}, False),  # every purpose must be covered
        (set(), False),  # missing: the rule needs one
    ],
)
def test_purposes_are_hierarchical_one_way(purposes: set[str], allowed: bool) -> None:
    assert ask(purposes=frozenset(purposes)).allowed is allowed


def test_a_broad_request_does_not_match_a_narrow_permit() -> None:
    # share-red-team permits purpose evaluation/red-teaming only; asking for all of
    # "evaluation" at TLP:CLEAR is covered by share-eval, not by it.
    d = ask(tlp="TLP:CLEAR", purposes=frozenset({"evaluation"}))
    assert rule_ids(d) == ["share-eval"]
    unmet = {u.rule.id: u.conditions for u in d.unmet}
    assert unmet["share-red-team"] == ("purpose evaluation is not within evaluation/red-teaming",)


def test_forbid_overrides_permit_with_the_same_hierarchy() -> None:
    below = ask(tlp="TLP:CLEAR", purposes=frozenset({"evaluation/red-teaming/minors/x"}))
    assert not below.allowed and rule_ids(below) == ["no-red-team-of-minors"]
    assert below.findings["no-red-team-of-minors"] == (
        "purpose evaluation/red-teaming/minors/x is within forbidden evaluation/red-teaming/minors",
    )
    # One term within the forbidden one is enough, whatever the others are.
    mixed = ask(purposes=frozenset({"evaluation", "evaluation/red-teaming/minors"}))
    assert mixed.reason == "forbidden"
    # A broader purpose is not the forbidden one (the same one-way rule as for permits).
    assert ask(purposes=frozenset({"evaluation/red-teaming"})).allowed
    assert ask(purposes=frozenset({"evaluation/capabilities"})).allowed


def test_a_forbid_cannot_be_ruled_out_without_the_attribute_it_tests() -> None:
    d = ask(purposes=frozenset())
    assert d.reason == "forbidden" and rule_ids(d) == ["no-red-team-of-minors"]
    assert "cannot be ruled out" in d.summary


def test_embargo_conditions() -> None:
    later = NOW + timedelta(days=3)
    assert ask(embargo_until=later).allowed  # share-eval applies during an embargo
    d = ask(tlp="TLP:AMBER", embargo_until=later)
    assert rule_ids(d) == ["no-embargoed-amber"]
    assert ask(tlp="TLP:AMBER", embargo_until=NOW).allowed  # the embargo ends at that instant
    d = ask(tlp="TLP:CLEAR", purposes=frozenset({"evaluation/red-teaming"}), embargo_until=later)
    assert rule_ids(d) == ["share-eval"]  # share-red-team waits for the embargo (its default)


def test_expiry() -> None:
    read = {"action": "read", "topics": frozenset(), "purposes": frozenset()}
    assert not ask(**read).allowed  # read-with-expiry needs an expiry
    assert ask(**read, expires_at=NOW + timedelta(days=1)).allowed
    expired = ask(**read, expires_at=NOW)
    assert not expired.allowed and expired.reason == "expired"
    assert "expired at 2026-03-01T12:00:00Z" in expired.summary


def test_onward_share() -> None:
    onward = {"action": "onward_share", "onward_to": "node-c", "originator_approved": True}
    d = ask(**onward)
    assert d.allowed and d.obligations == (Obligation.onward(["node-d"], originator_approval=True),)
    assert not ask(**{**onward, "originator_approved": False}).allowed
    assert not ask(**{**onward, "onward_to": "node-d"}).allowed
    assert rule_ids(ask(**{**onward, "onward_to": "node-x"})) == ["not-to-node-x"]
    missing = ask(**{**onward, "onward_to": None})
    assert missing.reason == "forbidden"  # node-x cannot be ruled out


@pytest.mark.parametrize(
    ("now", "allowed"),
    [
        (datetime(2024, 12, 31, 23, 59, 59, tzinfo=UTC), False),
        (datetime(2025, 1, 1, tzinfo=UTC), True),
        (datetime(2026, 12, 31, 23, 59, 59, tzinfo=UTC), True),  # the last day is included
        (datetime(2027, 1, 1, tzinfo=UTC), False),
    ],
)
def test_validity_window(now: datetime, allowed: bool) -> None:
    d = ask(now=now)
    assert d.allowed is allowed
    if not allowed:
        assert d.reason == "not-in-force"
        assert "in force from 2025-01-01T00:00:00Z until 2027-01-01T00:00:00Z" in d.summary


@pytest.mark.parametrize(
    ("fields", "reason", "words"),
    [
        ({"partner": "partner-z"}, "no-policy", "no policy for partner 'partner-z'"),
        ({"action": "publish"}, "invalid-request", "unknown action 'publish'"),
        ({"tlp": None}, "invalid-request", "the request has no TLP label"),
        ({"tlp": "TLP:WHITE"}, "invalid-request", "unknown TLP label 'TLP:WHITE'"),
        ({"topics": frozenset({"Evaluation"})}, "invalid-request", "invalid topic 'Evaluation'"),
        ({"purposes": frozenset({"a//b"})}, "invalid-request", "invalid purpose 'a//b'"),
        ({"embargo_until": datetime(2026, 4, 1)}, "error", "could not be evaluated"),
    ],
)
def test_bad_requests_are_denied_and_say_why(
    fields: dict[str, object], reason: str, words: str
) -> None:
    d = ask(**fields)
    assert not d.allowed and d.reason == reason
    assert words in d.summary
    assert d.obligations == ()


def test_a_naive_time_is_an_error_deny() -> None:
    d = evaluate(SET, Request("partner-a", "share", "TLP:GREEN"), now=datetime(2026, 3, 1))
    assert not d.allowed and d.reason == "error"


def test_request_rejects_a_string_for_a_collection() -> None:
    with pytest.raises(TypeError, match="topics must be a collection"):
        Request("partner-a", "share", "TLP:GREEN", topics="evaluation")  # type: ignore[arg-type]
    assert Request("p", "share", None, topics=["a", "a"]).topics == frozenset({"a"})  # type: ignore[arg-type]


def test_decision_json_is_stable_and_complete() -> None:
    d = ask(tlp="TLP:AMBER", purposes=frozenset({"research"}))
    doc = d.to_json()
    assert json.loads(json.dumps(doc)) == doc
    assert doc["effect"] == "deny" and doc["reason"] == "no-matching-permit"
    assert doc["rules"] == []
    assert [u["id"] for u in doc["unmet"]] == ["share-amber-inform", "share-eval", "share-red-team"]
    assert doc["unmet"][2]["unmet"] == [
        "TLP:AMBER is not one of TLP:CLEAR",
        "purpose research is not within evaluation/red-teaming",
    ]
    assert doc["policy"]["version"] == 3
    assert doc["request"]["tlp"] == "TLP:AMBER"
    assert doc["evaluated_at"] == "2026-03-01T12:00:00Z"


def test_explain_reads_like_a_policy_officer_would() -> None:
    text = explain(ask(tlp="TLP:AMBER"))
    lines = text.splitlines()
    assert lines[0] == "ALLOW share to partner-a"
    assert "  request    TLP:AMBER; topics evaluation; purposes evaluation" in lines
    assert "    share-amber-inform  Test MOU §2" in lines
    assert "    - inform the originator on read" in lines
    assert "    - retain at most 90 days" in lines
    assert "      - TLP:AMBER is not one of TLP:CLEAR" in lines  # share-red-team, not applicable
    deny = explain(ask(tlp="TLP:RED"))
    assert deny.splitlines()[0] == "DENY share to partner-a"
    assert "  no permit matches (deny by default)" in deny
    assert "      - TLP:RED is not one of TLP:CLEAR, TLP:GREEN, TLP:AMBER" in deny


def test_summary_of_a_denied_share_names_rule_and_clause() -> None:
    d = ask(tlp="TLP:AMBER", embargo_until=NOW + timedelta(days=1))
    assert d.summary == (
        "DENY share to partner-a: rule no-embargoed-amber (Test MOU §7) forbids it: "
        "TLP:AMBER is one of TLP:AMBER; "
        "the artifact is under embargo until 2026-03-02T12:00:00Z"
    )
