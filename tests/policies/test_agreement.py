"""Agreements as documents (pure): bilateral and multilateral terms, common terms with bilateral
overrides, the documents decisions name, amendments' windows, and what a node assembles."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import pytest

from policies import PolicySet, Request, diff, evaluate, explain
from policies._agreement import EVERY, Agreement, Terms
from policies._assemble import Held, assemble, partner_accepts
from policies.errors import PolicyLoadError

NOW = datetime(2026, 6, 1, tzinfo=UTC)
DAY = timedelta(days=1)
HEAD = """\
format: entente.policy/v1
id: {id}
version: 1
mou: Network terms [example]
partner: '{partner}'
valid_from: {valid_from}
valid_until: {valid_until}
approved_by:
  - {{name: T. Officer, role: Policy officer, date: 2024-12-01}}
"""
PERMIT = """\
  - id: {rule}
    clause: {clause}
    actions: [share, receive]
    tlp: [{tlp}]
    topics: [evaluation]
"""
NETWORK = ("ca-aisi", "uk-aisi", "us-aisi")


def policy(
    partner: str,
    *,
    permit: Sequence[tuple[str, str, str]] = (),
    forbid: str = "",
    valid_from: str = "2025-01-01",
    valid_until: str = "2030-12-31",
) -> str:
    head = HEAD.format(id="net", partner=partner, valid_from=valid_from, valid_until=valid_until)
    text = head + "permit:" + ("\n" if permit else " []\n")
    for rule, clause, tlp in permit:
        text += PERMIT.format(rule=rule, clause=clause, tlp=tlp)
    if forbid:
        text += f"forbid:\n  - id: {forbid}\n    clause: Bilateral §9\n    actions: [share]\n"
        text += "    tlp: [TLP:AMBER]\n"
    return text


COMMON = Terms(
    EVERY, EVERY, "network.yaml", policy("*", permit=[("net-open", "Net §1", "TLP:GREEN")])
)


def network(*bilateral: Terms, common: Terms = COMMON) -> Agreement:
    return Agreement(
        "net", 1, "Network [example]", NETWORK, NOW - timedelta(days=30), (common, *bilateral)
    )


def share(partner: str, tlp: str) -> Request:
    return Request(partner, "share", tlp, frozenset({"evaluation"}))


def test_common_terms_apply_to_every_ordered_pair_and_name_their_document() -> None:
    a = network()
    for x in NETWORK:
        for y in NETWORK:
            if x != y:
                p = a.policy(x, y)
                assert p is not None and p.partner == y
    held = Held("net.agreement.json", a, frozenset(NETWORK))
    mine = assemble("ca-aisi", local=[], held=[held], require_signed=True).policies
    decision = evaluate(mine, share("us-aisi", "TLP:GREEN"), now=NOW)
    assert decision.allowed
    assert decision.rules[0].to_json()["document"] == "net v1, common terms (network.yaml)"
    assert "[net v1, common terms (network.yaml)]" in explain(decision)
    assert not evaluate(mine, share("us-aisi", "TLP:AMBER"), now=NOW).allowed


def test_bilateral_terms_add_to_the_common_ones_and_a_forbid_of_either_wins() -> None:
    us_uk = Terms("us-aisi", "uk-aisi", "uk-aisi.yaml",
                  policy("uk-aisi", permit=[("bi-amber", "US-UK §2", "TLP:AMBER")]))  # fmt: skip
    a = network(us_uk)
    held = Held("net.agreement.json", a, frozenset(NETWORK))
    us = assemble("us-aisi", local=[], held=[held], require_signed=True).policies
    amber = evaluate(us, share("uk-aisi", "TLP:AMBER"), now=NOW)
    assert amber.allowed and amber.rules[0].id == "bi-amber"
    assert amber.rules[0].document == "net v1, us-aisi's terms with uk-aisi (uk-aisi.yaml)"
    assert evaluate(us, share("uk-aisi", "TLP:GREEN"), now=NOW).allowed  # the common permit
    assert not evaluate(us, share("ca-aisi", "TLP:AMBER"), now=NOW).allowed  # no override there
    # A forbid in the common terms beats a bilateral permit (deny overrides).
    rules = [("net-open", "Net §1", "TLP:GREEN")]
    strict = Terms(EVERY, EVERY, "network.yaml", policy("*", permit=rules, forbid="no-amber"))
    held = Held("net.agreement.json", network(us_uk, common=strict), frozenset(NETWORK))
    us = assemble("us-aisi", local=[], held=[held], require_signed=True).policies
    denied = evaluate(us, share("uk-aisi", "TLP:AMBER"), now=NOW)
    assert not denied.allowed and denied.rules[0].id == "no-amber"


def test_every_pair_needs_terms_and_common_terms_must_name_every_partner() -> None:
    lone = Terms(
        "us-aisi", "uk-aisi", "uk-aisi.yaml", policy("uk-aisi", permit=[("r", "c", "TLP:GREEN")])
    )
    with pytest.raises(PolicyLoadError, match="no terms of ca-aisi with uk-aisi"):
        Agreement("net", 1, "Network", NETWORK, NOW, (lone,))
    wrong = Terms(EVERY, EVERY, "network.yaml", policy("uk-aisi", permit=[("r", "c", "TLP:GREEN")]))
    with pytest.raises(PolicyLoadError, match="must say partner: '\\*'"):
        network(common=wrong)
    clash = Terms("us-aisi", "uk-aisi", "uk-aisi.yaml",
                  policy("uk-aisi", permit=[("net-open", "dup", "TLP:AMBER")]))  # fmt: skip
    with pytest.raises(PolicyLoadError, match="duplicate rule id 'net-open'"):
        network(clash)


def test_a_partly_signed_agreement_enforces_nothing_and_an_amendment_takes_over_at_its_time() -> (
    None
):
    v1 = network()
    later = NOW + timedelta(days=10)
    amber = Terms(
        EVERY,
        EVERY,
        "network.yaml",
        policy("*", permit=[("net-open", "Net §1 (amended)", "TLP:AMBER")]),
    )
    v2 = Agreement("net", 2, "Network", NETWORK, later, (amber,), v1.sha256)
    held = [Held("v1", v1, frozenset(NETWORK)), Held("v2", v2, frozenset({"us-aisi"}))]
    out = assemble("us-aisi", local=[], held=held, require_signed=True)
    assert [(a.version, a.state) for a in out.agreements] == [(2, "proposed"), (1, "adopted")]
    assert not evaluate(out.policies, share("uk-aisi", "TLP:AMBER"), now=later).allowed
    held[1] = Held("v2", v2, frozenset(NETWORK))
    out = assemble("us-aisi", local=[], held=held, require_signed=True)
    assert [(a.version, a.state) for a in out.agreements] == [(1, "superseded"), (2, "adopted")]
    assert not evaluate(out.policies, share("uk-aisi", "TLP:AMBER"), now=NOW).allowed
    assert evaluate(out.policies, share("uk-aisi", "TLP:AMBER"), now=later).allowed


def test_the_partners_signed_terms_are_checked_before_a_share_leaves() -> None:
    us_uk = Terms("us-aisi", "uk-aisi", "uk-aisi.yaml",
                  policy("uk-aisi", permit=[("bi-amber", "US-UK §2", "TLP:AMBER")]))  # fmt: skip
    held = Held("n", network(us_uk), frozenset(NETWORK))
    out = assemble("us-aisi", local=[], held=[held], require_signed=True)
    ours = evaluate(out.policies, share("uk-aisi", "TLP:AMBER"), now=NOW)
    assert ours.allowed
    checked = partner_accepts(ours, out.theirs["uk-aisi"], "us-aisi")
    assert not checked.allowed and checked.reason == "partner-refuses"
    assert checked.rules[0].id == "net-open"  # the UK's closest permit, and what it lacks
    assert "TLP" in checked.detail
    green = evaluate(out.policies, share("uk-aisi", "TLP:GREEN"), now=NOW)
    assert partner_accepts(green, out.theirs["uk-aisi"], "us-aisi") is green


def test_the_signed_bytes_must_be_canonical() -> None:
    a = network()
    assert Agreement.from_payload(a.payload()) == a
    with pytest.raises(PolicyLoadError, match="not canonical"):
        Agreement.from_payload(a.payload().replace(b'","', b'", "', 1))


# --- each rule is in force only within the window of the terms entry it comes from ----------

EARLY = datetime(2025, 1, 1, tzinfo=UTC)
MID_2026 = datetime(2026, 6, 1, tzinfo=UTC)
MID_2027 = datetime(2027, 6, 1, tzinfo=UTC)


def windowed(common: Terms, *bilateral: Terms) -> Agreement:
    """The network's terms in force from the start of 2025 (before every window below)."""
    return Agreement("net", 1, "Network [example]", NETWORK, EARLY, (common, *bilateral))


def us_uk(rule: str, tlp: str, **window: str) -> Terms:
    text = policy("uk-aisi", permit=[(rule, "US-UK §2", tlp)], **window)
    return Terms("us-aisi", "uk-aisi", "uk-aisi.yaml", text)


def common(rule: str, tlp: str, name: str = "network.yaml", **window: str) -> Terms:
    return Terms(EVERY, EVERY, name, policy("*", permit=[(rule, "Net §1", tlp)], **window))


def us_policies(agreement: Agreement) -> list[PolicySet]:
    """us-aisi's terms with uk-aisi both as signed and as the node assembles them."""
    signed = agreement.policy("us-aisi", "uk-aisi")
    assert signed is not None
    held = Held("net.agreement.json", agreement, frozenset(NETWORK))
    assembled = assemble("us-aisi", local=[], held=[held], require_signed=True).policies
    return [PolicySet.from_policies([signed]), assembled]


def test_common_terms_that_lapsed_do_not_grant_while_a_bilateral_entry_is_in_force() -> None:
    a = windowed(
        common("share-green-common", "TLP:GREEN", valid_until="2025-12-31"),
        us_uk("bi-amber", "TLP:AMBER", valid_until="2029-12-31"),
    )
    for policies in us_policies(a):
        lapsed = evaluate(policies, share("uk-aisi", "TLP:GREEN"), now=MID_2027)
        assert not lapsed.allowed and lapsed.reason == "no-matching-permit", lapsed.summary
        unmet = {u.rule.id: u.conditions for u in lapsed.unmet}
        assert unmet["share-green-common"] == (
            "not in force: its terms run from 2025-01-01T00:00:00Z until 2026-01-01T00:00:00Z",
        )
        assert "not in force" in lapsed.summary
        assert evaluate(policies, share("uk-aisi", "TLP:AMBER"), now=MID_2027).allowed
        assert evaluate(policies, share("uk-aisi", "TLP:GREEN"), now=MID_2026 - 365 * DAY).allowed


def test_common_terms_still_in_force_grant_after_a_bilateral_entry_lapsed() -> None:
    a = windowed(
        common("share-green-common", "TLP:GREEN", valid_until="2030-12-31"),
        us_uk("bi-amber", "TLP:AMBER", valid_until="2026-12-31"),
    )
    for policies in us_policies(a):
        green = evaluate(policies, share("uk-aisi", "TLP:GREEN"), now=MID_2027)
        assert green.allowed and green.rules[0].id == "share-green-common", green.summary
        amber = evaluate(policies, share("uk-aisi", "TLP:AMBER"), now=MID_2027)
        assert not amber.allowed and amber.reason == "no-matching-permit", amber.summary
        assert evaluate(policies, share("uk-aisi", "TLP:AMBER"), now=MID_2026).allowed


def test_common_terms_do_not_grant_before_their_valid_from() -> None:
    a = windowed(
        common("share-green-common", "TLP:GREEN", valid_from="2027-01-01"),
        us_uk("bi-amber", "TLP:AMBER", valid_from="2025-01-01"),
    )
    for policies in us_policies(a):
        early = evaluate(policies, share("uk-aisi", "TLP:GREEN"), now=MID_2026)
        assert not early.allowed and early.reason == "no-matching-permit", early.summary
        assert evaluate(policies, share("uk-aisi", "TLP:AMBER"), now=MID_2026).allowed
        assert evaluate(policies, share("uk-aisi", "TLP:GREEN"), now=MID_2027).allowed


def test_several_common_entries_each_keep_their_own_window() -> None:
    a = windowed(
        common("net-green", "TLP:GREEN", valid_until="2025-12-31"),
        common("net-amber", "TLP:AMBER", "amber.yaml", valid_until="2030-12-31"),
    )
    ca = a.policy("ca-aisi", "uk-aisi")  # a pair with no bilateral entry
    assert ca is not None
    policies = PolicySet.from_policies([ca])
    assert not evaluate(policies, share("uk-aisi", "TLP:GREEN"), now=MID_2027).allowed
    assert evaluate(policies, share("uk-aisi", "TLP:AMBER"), now=MID_2027).allowed
    assert evaluate(policies, share("uk-aisi", "TLP:GREEN"), now=MID_2026 - 365 * DAY).allowed


def test_a_forbid_binds_within_its_own_window_only() -> None:
    rules = [("net-open", "Net §1", "TLP:GREEN")]
    strict = Terms(
        EVERY,
        EVERY,
        "network.yaml",
        policy("*", permit=rules, forbid="no-amber", valid_until="2026-12-31"),
    )
    a = windowed(strict, us_uk("bi-amber", "TLP:AMBER", valid_until="2029-12-31"))
    for policies in us_policies(a):
        denied = evaluate(policies, share("uk-aisi", "TLP:AMBER"), now=MID_2026)
        assert not denied.allowed and denied.rules[0].id == "no-amber"
        assert evaluate(policies, share("uk-aisi", "TLP:AMBER"), now=MID_2027).allowed


def test_outside_every_window_of_its_terms_a_policy_is_not_in_force() -> None:
    a = windowed(
        common("share-green-common", "TLP:GREEN", valid_until="2025-12-31"),
        us_uk("bi-amber", "TLP:AMBER", valid_until="2026-12-31"),
    )
    for policies in us_policies(a):
        late = evaluate(policies, share("uk-aisi", "TLP:AMBER"), now=MID_2027)
        assert not late.allowed and late.reason == "not-in-force", late.summary


def test_an_amendment_that_shortens_the_common_terms_shows_in_the_diff() -> None:
    bilateral = us_uk("bi-amber", "TLP:AMBER", valid_until="2029-12-31")
    v1 = windowed(common("share-green-common", "TLP:GREEN", valid_until="2030-12-31"), bilateral)
    v2 = windowed(common("share-green-common", "TLP:GREEN", valid_until="2025-12-31"), bilateral)
    before, after = (v.policy("us-aisi", "uk-aisi") for v in (v1, v2))
    assert before is not None and after is not None
    changes = diff(PolicySet.from_policies([before]), PolicySet.from_policies([after]))
    shortened = [c for c in changes if c.subject == "permit share-green-common"]
    assert [(c.action, c.effect) for c in shortened] == [
        ("share", "narrows"),
        ("receive", "narrows"),
    ]
    assert "-> 2025-01-01T00:00:00Z until 2026-01-01T00:00:00Z" in shortened[0].detail
    assert not [c for c in changes if c.subject == "permit bi-amber"]
