"""The golden cases beside the example MOUs: every request gets its expected decision and clause."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import policies
from policies import CaseFile, load_cases

EXAMPLES = Path(str(policies.examples_dir()))
CASE_FILES = sorted(EXAMPLES.rglob("*.cases.yaml"))


def _load(path: Path) -> tuple[CaseFile, policies.Policy]:
    case_file = load_cases(path.read_bytes(), source=str(path))
    return case_file, policies.load_file(path.parent / case_file.policy)


def _params() -> list[Any]:
    params = []
    for path in CASE_FILES:
        case_file, _ = _load(path)
        rel = path.relative_to(EXAMPLES)
        params += [
            pytest.param(path, i, id=f"{rel}::{c.name}") for i, c in enumerate(case_file.cases)
        ]
    return params


def test_every_example_policy_has_golden_cases() -> None:
    folders = [d for d in EXAMPLES.iterdir() if d.is_dir()]
    policy_files = sorted(p for d in folders for p in policies.policy_files(d))
    assert len(policy_files) == 6
    assert [p.with_suffix(".cases.yaml") for p in policy_files] == CASE_FILES


@pytest.mark.parametrize(("path", "index"), _params())
def test_golden_case(path: Path, index: int) -> None:
    case_file, policy = _load(path)
    result = policies.run_cases(case_file, policy)[index]
    assert result.passed, "\n".join(result.failures)
    # A deny that names rules names their clauses in its summary; so does an allow.
    for rule in result.decision.rules:
        assert rule.clause in result.decision.summary


def test_the_demo_denial_reads_well() -> None:
    """UK -> Canada, TLP:AMBER evaluation finding: denied, naming the declaration's clause."""
    uk = policies.load_dir(EXAMPLES / "uk-aisi")
    request = policies.Request(
        partner="ca-aisi",
        action="share",
        tlp="TLP:AMBER",
        topics=frozenset({"evaluation"}),
        purposes=frozenset({"evaluation/red-teaming"}),
    )
    decision = policies.evaluate(uk, request, now=policies.parse_time("2026-11-26T12:00:00Z"))
    assert not decision.allowed
    assert decision.summary == (
        "DENY share to ca-aisi: rule declaration-only-clear-green "
        "(Bletchley Declaration, para 8 [example]) forbids it: "
        "TLP:AMBER is one of TLP:AMBER, TLP:AMBER+STRICT, TLP:RED"
    )


def test_a_case_that_disagrees_is_reported() -> None:
    path = EXAMPLES / "uk-aisi" / "ca-aisi.cases.yaml"
    text = path.read_text().replace("decision: deny\n      reason: forbidden", "decision: allow", 1)
    case_file = load_cases(text, source="edited.cases.yaml")
    results = policies.run_cases(case_file, policies.load_file(path.parent / case_file.policy))
    failed = [r for r in results if not r.passed]
    assert len(failed) == 1
    assert failed[0].failures[0].startswith("expected allow, got DENY share to ca-aisi: rule ")


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("format: entente.policy-cases/v1\npolicy: a.yaml\nnow: 2026-01-01\ncases: []\n",
         "cases is empty"),
        ("format: entente.policy-cases/v1\npolicy: a.yaml\nnow: 2026-01-01\ncases:\n"
         "  - {name: x, request: {action: share}, expect: {decision: maybe}}\n",
         "case 'x': unknown decision 'maybe'"),
        ("format: entente.policy-cases/v1\npolicy: a.yaml\nnow: 2026-02-30\ncases:\n"
         "  - {name: x, request: {action: share}, expect: {decision: deny}}\n",
         "invalid date '2026-02-30'"),
        ("format: entente.policy-cases/v1\npolicy: a.yaml\nnow: 2026-01-01\ncases:\n"
         "  - {name: x, request: {action: share, colour: red}, expect: {decision: deny}}\n",
         "case 'x': unknown key 'colour'"),
        ("format: entente.policy/v1\n", "this is a policy, not a golden-case file"),
    ],
)  # fmt: skip
def test_malformed_case_files(text: str, words: str) -> None:
    with pytest.raises(policies.PolicyLoadError) as caught:
        load_cases(text, source="bad.cases.yaml")
    assert any(words in p for _, p in caught.value.problems), caught.value.problems
