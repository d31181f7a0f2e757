"""Agreements as documents (pure): bilateral and multilateral terms, common terms with bilateral
overrides, the documents decisions name, amendments' windows, and what a node assembles."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import pytest

from policies import Request, evaluate, explain
from policies._agreement import EVERY, Agreement, Terms
from policies._assemble import Held, assemble, partner_accepts
from policies.errors import PolicyLoadError

NOW = datetime(2026, 6, 1, tzinfo=UTC)
HEAD = """\
format: entente.policy/v1
id: {id}
version: 1
mou: Network terms [example]
partner: '{partner}'
valid_from: 2025-01-01
valid_until: 2030-12-31
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


def policy(partner: str, *, permit: Sequence[tuple[str, str, str]] = (), forbid: str = "") -> str:
    text = HEAD.format(id="net", partner=partner) + "permit:" + ("\n" if permit else " []\n")
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
