"""``diff``: what an MOU amendment changes, per partner and action, and in which direction."""

from __future__ import annotations

from pathlib import Path

import policies
from policies import Change, PolicySet, diff, load_policy

EXAMPLES = Path(str(policies.examples_dir()))
UK_US = (EXAMPLES / "uk-aisi" / "us-aisi.yaml").read_text()


def amend(text: str, *edits: tuple[str, str]) -> str:
    for old, new in edits:
        assert old in text, old
        text = text.replace(old, new, 1)
    return text


AMENDED = amend(
    UK_US,
    ("version: 1", "version: 2"),
    ("valid_until: 2029-03-31", "valid_until: 2030-03-31"),
    # share-information now covers AMBER too.
    (
        "    tlp: [TLP:CLEAR, TLP:GREEN]\n    topics: [evaluation, safety-research, policy]\n",
        "    tlp: [TLP:CLEAR, TLP:GREEN, TLP:AMBER]\n"
        "    topics: [evaluation, safety-research, policy]\n",
    ),
    # share-research narrows to one sub-topic.
    ("    topics: [safety-research]\n", "    topics: [safety-research/interpretability]\n"),
    # Two years of retention become one.
    ("      retain_max: {days: 730}", "      retain_max: {days: 365}"),
    # A new forbid.
    (
        "forbid:\n",
        "forbid:\n  - id: no-bio\n    clause: US-UK MOU 2024 §6(b) [example]\n"
        "    actions: [share]\n    topics: [bio]\n\n",
    ),
)


def changes(old: str, new: str) -> tuple[Change, ...]:
    return diff(
        PolicySet.from_policies([load_policy(old)]), PolicySet.from_policies([load_policy(new)])
    )


def test_identical_policies_have_no_changes() -> None:
    assert changes(UK_US, UK_US) == ()


def test_an_amendment_is_described_per_action_with_its_direction() -> None:
    found = {(c.action, c.subject, c.detail, c.effect) for c in changes(UK_US, AMENDED)}
    assert ("*", "policy", "version: 1 -> 2", "neutral") in found
    assert (
        "*",
        "policy",
        "valid_until: 2029-04-01T00:00:00Z -> 2030-04-01T00:00:00Z",
        "widens",
    ) in found
    assert (
        "share",
        "permit share-information",
        "tlp: TLP:CLEAR, TLP:GREEN -> TLP:CLEAR, TLP:GREEN, TLP:AMBER",
        "widens",
    ) in found
    assert (
        "share",
        "permit share-research",
        "topics: safety-research -> safety-research/interpretability",
        "narrows",
    ) in found
    assert (
        "read",
        "permit read-amber-inform",
        "obligation added: retain at most 365 days",
        "narrows",
    ) in found
    assert (
        "read",
        "permit read-amber-inform",
        "obligation removed: retain at most 730 days",
        "widens",
    ) in found
    added = [c for c in changes(UK_US, AMENDED) if c.subject == "forbid no-bio"]
    assert [(c.action, c.change, c.effect) for c in added] == [("share", "added", "narrows")]
    assert added[0].detail == "US-UK MOU 2024 §6(b) [example]; tlp any; topics bio"


def test_a_permit_or_policy_removed_narrows_and_added_widens() -> None:
    without = amend(
        UK_US,
        (
            UK_US[UK_US.index("  - id: onward-to-signatories") : UK_US.index("forbid:")],
            "",
        ),
    )
    removed = [c for c in changes(UK_US, without) if c.subject == "permit onward-to-signatories"]
    assert [(c.action, c.change, c.effect) for c in removed] == [
        ("onward_share", "removed", "narrows")
    ]
    back = [c for c in changes(without, UK_US) if c.subject == "permit onward-to-signatories"]
    assert [(c.action, c.change, c.effect) for c in back] == [("onward_share", "added", "widens")]

    ca = load_policy((EXAMPLES / "uk-aisi" / "ca-aisi.yaml").read_bytes())
    us = load_policy(UK_US)
    grown = diff(PolicySet.from_policies([us]), PolicySet.from_policies([us, ca]))
    assert [(c.partner, c.action, c.change, c.effect) for c in grown] == [
        ("ca-aisi", "*", "added", "widens")
    ]


def test_an_action_dropped_from_a_forbid_widens_and_an_unchanged_version_is_flagged() -> None:
    lifted = amend(
        UK_US,
        (
            "    actions: [share, receive, onward_share]\n    tlp: [TLP:AMBER+",
            "    actions: [share, onward_share]\n    tlp: [TLP:AMBER+",
        ),
    )
    found = {(c.action, c.subject, c.detail, c.effect) for c in changes(UK_US, lifted)}
    assert found == {
        ("*", "policy", "warning: the terms changed but the version is still 1", "mixed"),
        ("receive", "forbid above-amber", "no longer covers receive", "widens"),
    }
    bumped = amend(lifted, ("version: 1", "version: 2"))
    assert {c.detail for c in changes(bumped, UK_US)} == {
        "version: 2 -> 1",
        "warning: the version went down",
        "now covers receive",
    }
