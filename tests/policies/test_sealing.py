"""The ``sealing`` condition: terms that require post-quantum protection for some labels."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from policies import PolicyLoadError, PolicySet, Request, diff, evaluate, explain, load_policy
from policies._summary import summarize_policy

POLICY = """\
format: entente.policy/v1
id: node-a.partner-a
version: 1
mou: Test MOU [example]
partner: partner-a
valid_from: 2025-01-01
valid_until: 2027-12-31
approved_by:
  - {name: T. Officer, role: Policy officer, date: 2024-12-01}
permit:
  - id: share-any-sealing
    clause: Test MOU §1
    actions: [share, receive]
    tlp: [TLP:CLEAR, TLP:GREEN, TLP:AMBER]
  - id: share-strict-post-quantum
    clause: Test MOU §2 (post-quantum for the most sensitive findings)
    actions: [share, receive]
    tlp: [TLP:AMBER+STRICT, TLP:RED]
    sealing: post-quantum
forbid:
  - id: no-classic-amber
    clause: Test MOU §3
    actions: [share]
    tlp: [TLP:AMBER]
    sealing: classic
"""
NOW = datetime(2026, 6, 1, tzinfo=UTC)
SET = PolicySet.from_policies([load_policy(POLICY, source="a.yaml")])


def ask(tlp: str, sealing: str | None, action: str = "share") -> tuple[bool, str, list[str]]:
    d = evaluate(SET, Request("partner-a", action, tlp, sealing=sealing), now=NOW)
    return d.allowed, d.reason, [r.id for r in d.rules]


@pytest.mark.parametrize(
    ("tlp", "sealing", "expected"),
    [
        ("TLP:GREEN", "classic", (True, "permitted", ["share-any-sealing"])),
        ("TLP:GREEN", "post-quantum", (True, "permitted", ["share-any-sealing"])),
        ("TLP:GREEN", None, (True, "permitted", ["share-any-sealing"])),
        ("TLP:RED", "post-quantum", (True, "permitted", ["share-strict-post-quantum"])),
        ("TLP:RED", "classic", (False, "no-matching-permit", [])),
        ("TLP:RED", None, (False, "no-matching-permit", [])),  # unknown never meets the rule
        ("TLP:AMBER", "classic", (False, "forbidden", ["no-classic-amber"])),
        ("TLP:AMBER", None, (False, "forbidden", ["no-classic-amber"])),  # cannot be ruled out
        ("TLP:AMBER", "post-quantum", (True, "permitted", ["share-any-sealing"])),
    ],
)
def test_sealing_condition(tlp: str, sealing: str | None, expected: object) -> None:
    assert ask(tlp, sealing) == expected


def test_an_unknown_sealing_kind_is_an_invalid_request() -> None:
    assert ask("TLP:GREEN", "quantum-ish")[:2] == (False, "invalid-request")


def test_the_explanation_names_the_unmet_sealing() -> None:
    d = evaluate(SET, Request("partner-a", "share", "TLP:RED", sealing="classic"), now=NOW)
    text = explain(d)
    assert "sealed classic; the rule needs post-quantum" in text
    assert "share-strict-post-quantum" in text


def test_a_bad_sealing_value_is_a_load_error_naming_the_line() -> None:
    bad = POLICY.replace("sealing: post-quantum", "sealing: quantum")
    with pytest.raises(PolicyLoadError, match="sealing"):
        load_policy(bad, source="bad.yaml")


def test_round_trip_summary_and_diff() -> None:
    policy = SET.get("partner-a")
    assert policy is not None
    again = load_policy(POLICY, source="again.yaml")
    assert again.to_document() == policy.to_document()
    assert any(r.conditions.endswith("sealed post-quantum") for r in summarize_policy(policy))
    loosened = load_policy(POLICY.replace("    sealing: post-quantum\n", ""), source="b.yaml")
    changes = diff(SET, PolicySet.from_policies([loosened]))
    assert any("sealing: post-quantum -> any" in c.detail for c in changes)
