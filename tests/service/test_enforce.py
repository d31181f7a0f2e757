"""The enforcement step's pure parts: a policy request from an artifact's facts, and the rule a
refusal cites. (Its audit entries are checked end to end by the share, read, receive and onward
tests.)"""

from __future__ import annotations

from datetime import UTC, datetime
from types import SimpleNamespace

from policies import Decision, Request, RuleRef
from service.artifacts.enforce import Facts, audit_rule, first_rule

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def test_a_request_carries_the_facts_the_manifest_states() -> None:
    manifest = SimpleNamespace(
        tlp="amber", topics=("eval", "bio"), purposes=["research"],
        embargo_until=NOW, expires_at=None,
    )  # fmt: skip
    request = Facts.of(manifest).request("us-aisi", "onward_share", onward_to="jp-aisi")
    assert request == Request(
        partner="us-aisi",
        action="onward_share",
        tlp="amber",
        topics=frozenset({"eval", "bio"}),
        purposes=frozenset({"research"}),
        embargo_until=NOW,
        onward_to="jp-aisi",
    )


def test_a_refusal_cites_the_first_rule_or_else_the_reason() -> None:
    request = Request(partner="us-aisi", action="share", tlp="green")
    rules = (RuleRef("no-red", "forbid", "4.2"), RuleRef("other", "forbid", "4.3"))
    named = Decision(allowed=False, reason="forbidden", request=request, now=NOW, rules=rules)
    bare = Decision(allowed=False, reason="no-permit", request=request, now=NOW)
    assert first_rule(named) == rules[0] and audit_rule(named) == "no-red"
    assert first_rule(bare) is None and audit_rule(bare) == "no-permit"
