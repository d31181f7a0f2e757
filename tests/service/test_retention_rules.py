"""The pure retention rules: when a copy must be deleted, whose term says so, and which share
terms contradict each other."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.artifacts.retention_rules import (
    RetentionFacts,
    Term,
    deletion_due,
    inconsistent_terms,
    next_due,
    terms_of_decision,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)
AT_EXPIRY = Term("delete_at_expiry", rule="share-evaluation", clause="§2(a)", stated_by="origin")
OWN_AT_EXPIRY = Term("delete_at_expiry", rule="read-exchanged", clause="§3(b)")
KEEP_30 = Term("retain_max", days=30, rule="read-amber-inform", clause="§4(b)")
KEEP_730 = Term("retain_max", days=730, rule="read-amber-inform", clause="§4(b)")


def facts(**kw: object) -> RetentionFacts:
    base: dict[str, object] = {"artifact_id": "art_1", "recorded_at": T0, "holds_ciphertext": True}
    base.update(kw)
    return RetentionFacts(**base)  # type: ignore[arg-type]


# (facts, now, expected (reason, rule, clause, due_at) or None)
CASES = [
    pytest.param(facts(), T0 + timedelta(days=9999), None, id="no-terms-kept"),
    pytest.param(
        facts(expires_at=T0 + timedelta(days=1)), T0 + timedelta(days=2), None,
        id="expired-without-delete_at_expiry-kept",
    ),
    pytest.param(
        facts(expires_at=T0 + timedelta(days=1), terms=(AT_EXPIRY,)), T0 + timedelta(hours=23),
        None, id="before-expiry-kept",
    ),
    pytest.param(
        facts(expires_at=T0 + timedelta(days=1), terms=(AT_EXPIRY,)), T0 + timedelta(days=1),
        ("expired", "share-evaluation", "§2(a)", T0 + timedelta(days=1)), id="at-expiry-deleted",
    ),
    pytest.param(
        facts(expires_at=T0 + timedelta(days=1), terms=(OWN_AT_EXPIRY, AT_EXPIRY)),
        T0 + timedelta(days=3),
        ("expired", "share-evaluation", "§2(a)", T0 + timedelta(days=1)),
        id="tie-names-the-origins-term",
    ),
    pytest.param(
        facts(terms=(KEEP_730,)), T0 + timedelta(days=729), None, id="within-retention-kept"
    ),
    pytest.param(
        facts(terms=(KEEP_730, KEEP_30)), T0 + timedelta(days=824),
        ("retention", "read-amber-inform", "§4(b)", T0 + timedelta(days=30)),
        id="shortest-retention-binds",
    ),
    pytest.param(
        facts(expires_at=T0 + timedelta(days=100), terms=(AT_EXPIRY, KEEP_30)),
        T0 + timedelta(days=200),
        ("retention", "read-amber-inform", "§4(b)", T0 + timedelta(days=30)),
        id="earliest-due-obligation-named",
    ),
    pytest.param(
        facts(revoked_at=T0 + timedelta(days=5), terms=(KEEP_30,)), T0 + timedelta(days=6),
        ("revoked", "revoked", None, T0 + timedelta(days=5)), id="revoked-and-still-held",
    ),
    pytest.param(
        facts(revoked_at=T0, holds_ciphertext=False, expires_at=T0, terms=(AT_EXPIRY,)),
        T0 + timedelta(days=6), None, id="already-deleted-nothing-to-do",
    ),
]  # fmt: skip


@pytest.mark.parametrize(("given", "now", "expected"), CASES)
def test_deletion_due(
    given: RetentionFacts, now: datetime, expected: tuple[str, str, str | None, datetime] | None
) -> None:
    got = deletion_due(given, now=now)
    if expected is None:
        assert got is None
    else:
        assert got is not None
        assert (got.reason, got.rule, got.clause, got.due_at) == expected


_DAYS = st.integers(min_value=-1000, max_value=1000)
_TERMS = st.lists(
    st.one_of(
        st.just(AT_EXPIRY),
        st.just(OWN_AT_EXPIRY),
        st.builds(Term, st.just("retain_max"), st.integers(min_value=0, max_value=2000)),
        st.builds(Term, st.just("retain_max")),  # no days: binds nothing
    ),
    max_size=4,
)


@settings(max_examples=400, deadline=None)
@given(
    terms=_TERMS,
    expires=st.none() | _DAYS,
    revoked=st.none() | _DAYS,
    holds=st.booleans(),
    now=_DAYS,
)
def test_next_due_is_the_first_moment_deletion_is_due(
    terms: list[Term], expires: int | None, revoked: int | None, holds: bool, now: int
) -> None:
    """What the retention worker stores (``next_due``) agrees with the rule it stands for: not
    yet due before it, due from it on (a revocation: due at once, whenever it was)."""
    on = facts(
        terms=tuple(terms),
        expires_at=None if expires is None else T0 + timedelta(days=expires, hours=7),
        revoked_at=None if revoked is None else T0 + timedelta(days=revoked),
        holds_ciphertext=holds,
    )
    when = T0 + timedelta(days=now, hours=now % 24)
    first = next_due(on)
    if on.revoked_at is not None and holds:
        assert deletion_due(on, now=when) is not None and first == on.revoked_at
        return
    assert (deletion_due(on, now=when) is not None) == (first is not None and when >= first)
    if first is not None:
        due = deletion_due(on, now=first)
        assert due is not None and due.due_at == first
        assert deletion_due(on, now=first - timedelta(microseconds=1)) is None


def test_terms_of_a_decision_name_the_rule_that_states_each() -> None:
    entry = {
        "rules": [
            {"id": "read-exchanged", "kind": "permit", "clause": "§3(b)"},
            {"id": "read-amber-inform", "kind": "permit", "clause": "§4(b)"},
        ],
        "obligations": [
            {"kind": "delete_at_expiry"}, {"kind": "inform"}, {"kind": "retain_max", "days": 730},
            {"kind": "retain_max", "days": 0}, {"kind": "retain_max"}, "junk",
        ],
    }  # fmt: skip
    permits = {
        "read-exchanged": {("delete_at_expiry", None)},
        "read-amber-inform": {("inform", None), ("retain_max", 730)},
    }
    got = terms_of_decision(entry, stated_by="own", permits=permits)
    assert got == [
        Term("delete_at_expiry", None, "read-exchanged", "§3(b)", "own"),
        Term("retain_max", 730, "read-amber-inform", "§4(b)", "own"),
    ]
    # Without the policy (the origin's decision, at a recipient): every deciding rule is named.
    unknown = terms_of_decision(entry, stated_by="origin")
    assert [t.rule for t in unknown] == ["read-exchanged,read-amber-inform"] * 2
    assert [t.clause for t in unknown] == ["§3(b); §4(b)"] * 2
    assert terms_of_decision({"rules": "x", "obligations": None}, stated_by="own") == []


@pytest.mark.parametrize(
    ("embargo", "expiry", "retention", "reason"),
    [
        (None, None, KEEP_30, None),
        (T0 + timedelta(days=1), T0 + timedelta(days=2), None, None),
        (T0 + timedelta(days=2), T0 + timedelta(days=2), None, "embargo-after-expiry"),
        (T0 + timedelta(days=3), T0 + timedelta(days=2), None, "embargo-after-expiry"),
        (T0 + timedelta(days=29), None, KEEP_30, None),
        (T0 + timedelta(days=30), None, KEEP_30, "retention-before-embargo"),
        (T0 + timedelta(days=90), T0 + timedelta(days=900), KEEP_30, "retention-before-embargo"),
    ],
)
def test_inconsistent_terms(
    embargo: datetime | None, expiry: datetime | None, retention: Term | None, reason: str | None
) -> None:
    got = inconsistent_terms(embargo_until=embargo, expires_at=expiry, retention=retention, now=T0)
    assert (got[0] if got else None) == reason
    if got and retention is not None:
        assert retention.rule in got[1]


def test_retention_terms_name_the_rule_of_the_version_that_decided(tmp_path: Path) -> None:
    """After an amendment changes a rule's retain_max, a decision taken under the first version
    is attributed with the first version's obligations (not the latest's)."""
    from types import SimpleNamespace

    from policies import PolicySet, examples_dir, load_file
    from service.artifacts.retention import _permits

    text = examples_dir().joinpath("uk-aisi", "us-aisi.yaml").read_text()
    first = text.replace("valid_until: 2029-03-31", "valid_until: 2026-12-31")
    second = (
        text.replace("version: 1", "version: 2")
        .replace("valid_from: 2024-04-01", "valid_from: 2027-01-01")
        .replace("retain_max: {days: 730}", "retain_max: {days: 365}")
    )
    (tmp_path / "v1").mkdir()
    (tmp_path / "v2").mkdir()
    (tmp_path / "v1" / "us-aisi.yaml").write_text(first)
    (tmp_path / "v2" / "us-aisi.yaml").write_text(second)
    policies = PolicySet.from_policies(
        load_file(tmp_path / v / "us-aisi.yaml") for v in ("v1", "v2")
    )
    node = SimpleNamespace(policies=SimpleNamespace(current=policies))
    before = _permits(node, "us-aisi", datetime(2026, 6, 1, tzinfo=UTC))  # type: ignore[arg-type]
    after = _permits(node, "us-aisi", datetime(2027, 6, 1, tzinfo=UTC))  # type: ignore[arg-type]
    assert before is not None and after is not None
    assert ("retain_max", 730) in before["read-amber-inform"]
    assert ("retain_max", 365) in after["read-amber-inform"]
