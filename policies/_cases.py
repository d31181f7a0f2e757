"""Golden cases: requests beside a policy, each with the decision and clause it must give.

A case file (``<partner>.cases.yaml``, beside the policy) names its policy file, a default time,
and cases of ``request -> expect``. :func:`load_cases` reads one from text (strictly, against
``schema/cases.schema.json``); :func:`run_cases` evaluates every case against a loaded policy and
reports what differs. Neither reads files: the caller finds the policy the case file names.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from policies._decision import Decision
from policies._evaluate import evaluate
from policies._loader import decode, parse_time, validate
from policies._model import Policy, Request
from policies._set import PolicySet
from policies.errors import PolicyLoadError

__all__ = ["Case", "CaseFile", "CaseResult", "Expectation", "load_cases", "run_cases"]


@dataclass(frozen=True)
class Expectation:
    """What a case must decide; ``None`` fields are not checked. Sets are compared exactly."""

    decision: str
    reason: str | None = None
    rules: frozenset[str] | None = None
    clauses: frozenset[str] | None = None
    obligations: frozenset[str] | None = None


@dataclass(frozen=True)
class Case:
    name: str
    line: int
    request: Request  # with partner "" when the case uses the policy's partner
    now: datetime
    expect: Expectation


@dataclass(frozen=True)
class CaseFile:
    source: str
    policy: str  # the file name of the policy, beside the case file
    cases: tuple[Case, ...]


@dataclass(frozen=True)
class CaseResult:
    case: Case
    decision: Decision
    failures: tuple[str, ...]

    @property
    def passed(self) -> bool:
        return not self.failures


def _strings(value: list[str] | None) -> frozenset[str] | None:
    return None if value is None else frozenset(value)


def load_cases(text: str | bytes, *, source: str = "<cases>") -> CaseFile:
    """Load a golden-case file from its content; ``source`` names it in errors."""
    decoded, _ = decode(text, source)
    parsed = validate(decoded, source, "cases")
    data: dict[str, Any] = parsed.data
    problems: list[tuple[int, str]] = []

    def time(value: str | None, path: tuple[str | int, ...]) -> datetime | None:
        if value is None:
            return None
        try:
            return parse_time(value)
        except ValueError as exc:
            problems.append((parsed.line(path), str(exc)))
            return None

    default_now = time(data["now"], ("now",))
    cases = []
    names: set[str] = set()
    for i, item in enumerate(data["cases"]):
        path = ("cases", i)
        line = parsed.line(path)
        if item["name"] in names:
            problems.append((line, f"duplicate case name {item['name']!r}"))
        names.add(item["name"])
        req = item["request"]
        request = Request(
            partner=req.get("partner", ""),
            action=req["action"],
            tlp=req.get("tlp"),
            topics=frozenset(req.get("topics", ())),
            purposes=frozenset(req.get("purposes", ())),
            embargo_until=time(req.get("embargo_until"), (*path, "request", "embargo_until")),
            expires_at=time(req.get("expires_at"), (*path, "request", "expires_at")),
            onward_to=req.get("onward_to"),
            sealing=req.get("sealing"),
            originator_approved=req.get("originator_approved", False),
        )
        now = time(item.get("now"), (*path, "now")) or default_now
        exp = item["expect"]
        expect = Expectation(
            decision=exp["decision"],
            reason=exp.get("reason"),
            rules=_strings(exp.get("rules")),
            clauses=_strings(exp.get("clauses")),
            obligations=_strings(exp.get("obligations")),
        )
        if now is not None:
            cases.append(Case(item["name"], line, request, now, expect))
    if problems:
        raise PolicyLoadError(source, problems)
    return CaseFile(source, data["policy"], tuple(cases))


def _names(values: frozenset[str] | set[str]) -> str:
    return "[" + ", ".join(sorted(values)) + "]"


def run_cases(case_file: CaseFile, policy: Policy) -> tuple[CaseResult, ...]:
    """Evaluate every case against ``policy`` (alone in its set) and compare."""
    policy_set = PolicySet.from_policies([policy])
    results = []
    for case in case_file.cases:
        request = case.request
        if not request.partner:
            request = replace(request, partner=policy.partner)
        decision = evaluate(policy_set, request, now=case.now)
        expect = case.expect
        failures = []
        if decision.effect != expect.decision:
            failures.append(f"expected {expect.decision}, got {decision.summary}")
        if expect.reason is not None and decision.reason != expect.reason:
            failures.append(f"expected reason {expect.reason}, got {decision.reason}")
        rules = {r.id for r in decision.rules}
        if expect.rules is not None and rules != expect.rules:
            failures.append(f"expected rules {_names(expect.rules)}, got {_names(rules)}")
        clauses = {r.clause for r in decision.rules}
        if expect.clauses is not None and clauses != expect.clauses:
            failures.append(f"expected clauses {_names(expect.clauses)}, got {_names(clauses)}")
        kinds = {o.kind for o in decision.obligations}
        if expect.obligations is not None and kinds != expect.obligations:
            failures.append(
                f"expected obligations {_names(expect.obligations)}, got {_names(kinds)}"
            )
        results.append(CaseResult(case, decision, tuple(failures)))
    return tuple(results)
