"""Benchmark: MOU policy decisions, Entente's evaluator and Cedar (cedarpy) side by side.

Target (DESIGN.md section 10): p50 under 20 microseconds per decision for a 50-rule policy.

Two 50-rule policies (40 permits, 10 forbids), generated from a fixed seed and loaded through the
real YAML loader:

- ``mixed``: rules spread over the four actions and five TLP labels, as a real MOU would be;
- ``dense``: every rule covers ``share`` at every label, so each decision looks at all 50.

The same decisions go through Cedar, via its Python binding ``cedarpy``, when it is installed:
each rule is translated to a Cedar ``permit`` or ``forbid`` over the request context, the policy
set and entities are parsed once, and every decision is checked to agree with Entente's. For
parity each request has one topic and one purpose (Cedar has no quantifier over sets, so
Entente's "every topic within a permitted one" is expressed as ``containsAny`` of the topic and
its ancestors, which is the same thing for one topic), and the Cedar context carries the
embargo, expiry and validity facts precomputed, outside the timed region.

Latency is timed per call (``perf_counter_ns``, whose own overhead is printed); throughput is the
median rate of ten batches in a separate loop without per-call timing.

Usage::

    python bench/policy.py                  # 50,000 decisions per policy (5,000 through Cedar)
    python bench/policy.py --quick          # 5,000 (1,000): only checks that everything runs
    python bench/policy.py --json result.json

Figures go to stdout; the JSON result is the last stdout line, or goes to ``--json PATH``.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import yaml

from crypto.vocab import TLP_LABELS
from policies import (
    ACTIONS,
    Permit,
    Policy,
    PolicySet,
    Request,
    evaluate,
    load_policy,
)

TARGET_P50_US = 20.0
PARTNER = "us-aisi"
NOW = datetime(2026, 6, 1, 12, tzinfo=UTC)
ROOTS = {
    "evaluation": ["capabilities", "red-teaming", "cyber", "bio", "chem"],
    "safety-research": ["interpretability", "robustness", "alignment"],
    "policy": ["standards", "incidents"],
    "personal-data": ["contacts"],
}
TOPICS = [*ROOTS, *(f"{r}/{c}" for r, cs in ROOTS.items() for c in cs)]
PURPOSES = [
    "evaluation",
    "evaluation/red-teaming",
    "evaluation/benchmarking",
    "research",
    "research/joint",
    "information-sharing",
]
NODES = ["au-aisi", "ca-aisi", "eu-ai-office", "jp-aisi", "kr-aisi", "sg-aisi"]


# --- the policies -------------------------------------------------------------------------------


def _rule(rng: random.Random, i: int, kind: str, dense: bool) -> dict[str, Any]:
    if dense:
        actions = ["share"]
    elif kind == "permit" and rng.random() < 0.15:
        actions = ["onward_share"]
    else:
        actions = rng.sample(["share", "receive", "read"], rng.randint(1, 2))
    rule: dict[str, Any] = {"id": f"{kind}-{i:02d}", "clause": f"Bench MOU §{i} [example]"}
    rule["actions"] = actions
    if kind == "permit" or rng.random() < 0.5:
        labels = TLP_LABELS if dense else rng.sample(TLP_LABELS[:3], rng.randint(1, 3))
        rule["tlp"] = [t for t in TLP_LABELS if t in labels]
    if kind == "permit":
        rule["topics"] = sorted(rng.sample(TOPICS[:3] + TOPICS[4:12], rng.randint(1, 3)))
        if rng.random() < 0.7:
            rule["purposes"] = sorted(rng.sample(PURPOSES, rng.randint(1, 2)))
        if rng.random() < 0.5:
            rule["embargo"] = "any"
        if rng.random() < 0.2:
            rule["expiry"] = "set"
        if actions == ["onward_share"]:
            rule["onward_to"] = sorted(rng.sample(NODES, 3))
            rule["originator_approval"] = True
        obligations: dict[str, Any] = {"attribute": "Bench institute"}
        if rng.random() < 0.5:
            obligations["retain_max"] = {"days": rng.choice([90, 365, 730])}
        if rng.random() < 0.3:
            obligations["inform"] = True
        rule["obligations"] = obligations
    else:
        choice = rng.random()
        if choice < 0.4:
            rule["topics"] = [rng.choice(["personal-data", "evaluation/bio", "evaluation/chem"])]
        elif choice < 0.7:
            rule["purposes"] = [rng.choice(["evaluation/red-teaming", "research/joint"])]
        else:
            rule["embargo"] = "active"
            rule.setdefault("tlp", ["TLP:AMBER", "TLP:AMBER+STRICT"])
    return rule


def policy_text(seed: int, *, dense: bool, permits: int = 40, forbids: int = 10) -> str:
    rng = random.Random(seed)
    doc = {
        "format": "entente.policy/v1",
        "id": f"bench.{'dense' if dense else 'mixed'}",
        "version": 1,
        "mou": "Bench MOU [example]",
        "partner": PARTNER,
        "valid_from": "2024-04-01",
        "valid_until": "2029-03-31",
        "approved_by": [{"name": "B. Ench", "role": "Benchmark", "date": "2024-04-01"}],
        "permit": [_rule(rng, i, "permit", dense) for i in range(permits)],
        "forbid": [_rule(rng, i, "forbid", dense) for i in range(forbids)],
    }
    return yaml.safe_dump(doc, sort_keys=False)


def requests(seed: int, n: int, *, dense: bool) -> list[Request]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        action = "share" if dense else rng.choice(ACTIONS)
        days = rng.choice([None, None, None, -5, 10])
        out.append(
            Request(
                partner=PARTNER,
                action=action,
                tlp=rng.choice(TLP_LABELS[:4]),
                topics=frozenset({rng.choice(TOPICS)}),
                purposes=frozenset({rng.choice(PURPOSES)}),
                embargo_until=NOW + timedelta(days=days) if days is not None else None,
                expires_at=rng.choice([None, None, NOW + timedelta(days=365)]),
                onward_to=rng.choice(NODES) if action == "onward_share" else None,
                originator_approved=rng.random() < 0.7,
            )
        )
    return out


# --- Cedar --------------------------------------------------------------------------------------


def _s(values: Sequence[str]) -> str:
    return "[" + ", ".join(json.dumps(v) for v in values) + "]"


def cedar_text(policy: Policy) -> str:
    """The policy in Cedar: the same rules, over a context the caller fills in."""
    out = [
        # The validity window and an expired artifact deny before any rule, as in Entente.
        "forbid (principal, action, resource) when { !context.in_force || context.expired };"
    ]
    for rule in sorted(policy.rules, key=lambda r: r.id):
        actions = ", ".join(f'Action::"{a}"' for a in ACTIONS if a in rule.actions)
        conds = []
        if rule.tlp is not None:
            conds.append(f"{_s([t for t in TLP_LABELS if t in rule.tlp])}.contains(context.tlp)")
        for name in ("topics", "purposes"):
            terms = getattr(rule, name)
            if terms is not None:
                conds.append(f"context.{name}.containsAny({_s(sorted(terms))})")
        if rule.embargo == "ended":
            conds.append("!context.embargoed")
        elif rule.embargo == "active":
            conds.append("context.embargoed")
        if rule.expiry == "set":
            conds.append("context.has_expiry")
        elif rule.expiry == "unset":
            conds.append("!context.has_expiry")
        if rule.onward_to is not None:
            conds.append(f"{_s(sorted(rule.onward_to))}.contains(context.onward_to)")
        if isinstance(rule, Permit) and rule.originator_approval:
            conds.append("context.approved")
        effect = "permit" if isinstance(rule, Permit) else "forbid"
        when = " && ".join(conds) or "true"
        out.append(
            f'@id("{rule.id}")\n{effect} (principal == Partner::"{policy.partner}", '
            f"action in [{actions}], resource) when {{ {when} }};"
        )
    return "\n".join(out)


def _scope(terms: frozenset[str]) -> list[str]:
    """Each term and its ancestors: ``a/b`` -> ``a/b``, ``a``."""
    return sorted({t.rsplit("/", i)[0] for t in terms for i in range(t.count("/") + 1)})


def cedar_request(policy: Policy, r: Request, now: datetime) -> dict[str, Any]:
    return {
        "principal": f'Partner::"{r.partner}"',
        "action": f'Action::"{r.action}"',
        "resource": 'Artifact::"a"',
        "context": {
            "tlp": r.tlp,
            "topics": _scope(r.topics),
            "purposes": _scope(r.purposes),
            "embargoed": r.embargo_until is not None and now < r.embargo_until,
            "has_expiry": r.expires_at is not None,
            "expired": r.expires_at is not None and now >= r.expires_at,
            "in_force": policy.in_force(now),
            "onward_to": r.onward_to or "",
            "approved": r.originator_approved,
        },
    }


# --- measuring ----------------------------------------------------------------------------------


@dataclass
class Figures:
    engine: str
    scenario: str
    decisions: int
    p50_us: float
    p99_us: float
    mean_us: float
    per_second: float
    allowed: int

    def row(self) -> str:
        return (
            f"{self.engine:<8} {self.scenario:<6} {self.decisions:>8} {self.p50_us:>9.2f} "
            f"{self.p99_us:>9.2f} {self.mean_us:>9.2f} {self.per_second:>13,.0f} "
            f"{self.allowed / self.decisions:>7.0%}"
        )


def _percentile(sorted_ns: list[int], q: float) -> float:
    return sorted_ns[min(len(sorted_ns) - 1, int(q * len(sorted_ns)))] / 1000


def measure(
    engine: str, scenario: str, decide: Callable[[Any], bool], items: Sequence[Any]
) -> Figures:
    for item in items[:1000]:  # warm up
        decide(item)
    gc.collect()
    gc.disable()
    try:
        clock = time.perf_counter_ns
        samples = []
        allowed = 0
        for item in items:
            start = clock()
            ok = decide(item)
            samples.append(clock() - start)
            allowed += ok
        # Throughput: the median of ten batches, so a burst of load elsewhere on the machine
        # moves one batch, not the figure.
        rates = []
        size = max(1, len(items) // 10)
        for i in range(0, len(items) - size + 1, size):
            batch = items[i : i + size]
            began = time.perf_counter()
            for item in batch:
                decide(item)
            rates.append(len(batch) / (time.perf_counter() - began))
    finally:
        gc.enable()
    samples.sort()
    return Figures(
        engine,
        scenario,
        len(items),
        _percentile(samples, 0.50),
        _percentile(samples, 0.99),
        statistics.fmean(samples) / 1000,
        statistics.median(rates),
        allowed,
    )


def timer_overhead_ns() -> float:
    clock = time.perf_counter_ns
    samples = []
    for _ in range(10000):
        a = clock()
        samples.append(clock() - a)
    return statistics.median(samples)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--decisions", type=int, default=50_000, help="decisions per policy")
    parser.add_argument("--cedar-decisions", type=int, default=5_000, help="of them, via Cedar")
    parser.add_argument("--quick", action="store_true", help="5,000 decisions (1,000 via Cedar)")
    parser.add_argument("--json", type=Path, default=None, help="write the JSON result here")
    args = parser.parse_args(argv)
    if args.quick:
        args.decisions, args.cedar_decisions = 5_000, 1_000

    cedarpy: Any  # the module, or None when it is not installed
    try:
        import cedarpy as cedar_module  # type: ignore[import-not-found,unused-ignore]

        cedarpy = cedar_module
    except ImportError:
        cedarpy = None

    print("Policy decisions, 50-rule policies (40 permits, 10 forbids); target p50 < 20 us")
    print(f"python {platform.python_version()} on {platform.machine()}, {platform.system()}")
    print(f"timer overhead (included in latencies): {timer_overhead_ns():.0f} ns")
    results: list[Figures] = []
    notes: list[str] = []
    for scenario, dense in (("mixed", False), ("dense", True)):
        policy = load_policy(policy_text(7, dense=dense), source=f"bench-{scenario}.yaml")
        assert len(policy.rules) == 50
        policy_set = PolicySet.from_policies([policy])
        items = requests(11, args.decisions, dense=dense)
        results.append(
            measure(
                "entente",
                scenario,
                lambda r, s=policy_set: evaluate(s, r, now=NOW).allowed,  # type: ignore[misc,unused-ignore]
                items,
            )
        )
        if cedarpy is None:
            continue
        cedar_set = cedarpy.PolicySet.from_str(cedar_text(policy))
        entities = cedarpy.Entities.from_json_str("[]")
        sample = items[: args.cedar_decisions]
        cedar_items = [cedar_request(policy, r, NOW) for r in sample]
        mismatches = sum(
            cedarpy.is_authorized(c, cedar_set, entities).allowed
            != evaluate(policy_set, r, now=NOW).allowed
            for c, r in zip(cedar_items, sample, strict=True)
        )
        notes.append(
            f"{scenario}: Entente and Cedar agree on {len(sample) - mismatches}/{len(sample)} "
            "decisions"
        )
        results.append(
            measure(
                "cedarpy",
                scenario,
                lambda c, ps=cedar_set, es=entities: cedarpy.is_authorized(c, ps, es).allowed,  # type: ignore[misc,unused-ignore]
                cedar_items,
            )
        )
        start = time.perf_counter()
        cedarpy.is_authorized_batch(cedar_items, cedar_set, entities)
        batch = len(cedar_items) / (time.perf_counter() - start)
        notes.append(f"{scenario}: cedarpy is_authorized_batch: {batch:,.0f} decisions/s")

    print()
    print(f"{'engine':<8} {'policy':<6} {'decisions':>8} {'p50 us':>9} {'p99 us':>9} "
          f"{'mean us':>9} {'decisions/s':>13} {'allowed':>7}")  # fmt: skip
    for figures in results:
        print(figures.row())
    print()
    for note in notes:
        print(note)
    if cedarpy is None:
        print("cedarpy is not installed (pip install cedarpy): Cedar figures omitted")
    else:
        for scenario in ("mixed", "dense"):
            ours = next(f for f in results if f.engine == "entente" and f.scenario == scenario)
            theirs = next(f for f in results if f.engine == "cedarpy" and f.scenario == scenario)
            print(
                f"{scenario}: Entente p50 is {theirs.p50_us / ours.p50_us:.1f}x lower than "
                f"cedarpy's; throughput {ours.per_second / theirs.per_second:.1f}x"
            )
    worst = max(f.p50_us for f in results if f.engine == "entente")
    ok = worst < TARGET_P50_US
    print(
        f"target p50 < {TARGET_P50_US:.0f} us: {'met' if ok else 'NOT MET'} "
        f"(worst Entente p50 {worst:.2f} us)"
    )
    summary = {
        "benchmark": "policy",
        "ok": ok,
        "target_p50_us": TARGET_P50_US,
        "cedarpy": cedarpy is not None,
        "results": [f.__dict__ for f in results],
        "notes": notes,
    }
    line = json.dumps(summary, sort_keys=True)
    if args.json is not None:
        args.json.write_text(line + "\n")
    else:
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
