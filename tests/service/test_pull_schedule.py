"""When the pull worker pulls each partner's feed: at once at start, then once per interval at
the pair's own moment, so a network's pulls are spread over the interval.

Found with bench/network_steady.py (20 nodes in network namespaces, 50 ms round trips): every
node pulled all its partners in the same round every 30 s, and twenty nodes started together
pulled their 380 feeds in the same second or two; the shares made during that burst waited for
the cores (p99 to the last receipt 7.1 s, the others under 1.4 s).
"""

from __future__ import annotations

import itertools
import threading
from collections import Counter
from types import SimpleNamespace
from typing import Any, cast

import pytest

from service.federation import pull
from service.federation.client import PartnerClient
from service.federation.pull import OVERDUE_RECHECK, PullLoops, next_pull, pull_phase

INTERVAL = 30.0
NODES = [f"n{i:02d}-aisi" for i in range(20)]


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def started(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str, float]]:
    """Every pull started, as (puller, partner, clock time); the pulls finish at once."""
    calls: list[tuple[str, str, float]] = []
    lock = threading.Lock()

    def fake_pull(node: Any, client: Any, partner: Any) -> int:
        with lock:
            calls.append((node.node_id, partner.node_id, node.clock_now()))
        return 0

    monkeypatch.setattr(pull, "_pull_isolated", fake_pull)
    monkeypatch.setattr(pull, "_partners", lambda node: list(node.partners))
    return calls


def _node(node_id: str, partners: list[str], clock: FakeClock) -> Any:
    return SimpleNamespace(
        node_id=node_id,
        partners=[SimpleNamespace(node_id=p) for p in partners],
        clock_now=clock,
    )


def _loops(node: Any, clock: FakeClock) -> PullLoops:
    return PullLoops(node, cast(PartnerClient, None), interval=INTERVAL, clock=clock)


def _drain(loops: PullLoops) -> None:
    """Wait for the pulls in flight (they return at once) so the next round may start them."""
    for future in list(loops._running.values()):
        future.result(timeout=10)


def _run(loops: list[PullLoops], clock: FakeClock, seconds: float) -> None:
    """Each node's worker as the app runs it: a round, then sleep ``until_next``."""
    wake = dict.fromkeys(range(len(loops)), clock.now)
    end = clock.now + seconds
    while True:
        i = min(wake, key=lambda k: wake[k])
        if wake[i] > end:
            return
        clock.now = wake[i]
        loops[i].round()
        _drain(loops[i])
        wake[i] = clock.now + loops[i].until_next()


def test_phases_are_fixed_per_pair_and_spread() -> None:
    assert pull_phase("uk-aisi", "us-aisi") == pull_phase("uk-aisi", "us-aisi")
    assert pull_phase("uk-aisi", "us-aisi") != pull_phase("us-aisi", "uk-aisi")
    phases = [pull_phase(a, b) for a in NODES for b in NODES if a != b]
    assert all(0.0 <= p < 1.0 for p in phases)
    # 380 pairs in 30 one-second slots: about 13 each; none near all of them.
    slots = Counter(int(p * 30) for p in phases)
    assert max(slots.values()) <= 30, slots


@pytest.mark.parametrize("now", [0.0, 12.5, 1_000_000.25, 1_764_000_000.0])
@pytest.mark.parametrize("phase", [0.0, 0.3, 0.999])
def test_next_pull_is_at_the_phase_between_a_half_and_one_and_a_half_intervals(
    now: float, phase: float
) -> None:
    due = next_pull(now, INTERVAL, phase)
    assert INTERVAL / 2 < due - now <= 1.5 * INTERVAL + 1e-6
    off = (due / INTERVAL - phase) % 1.0  # a whole number of intervals past the phase
    assert min(off, 1.0 - off) < 1e-6
    assert next_pull(due, INTERVAL, phase) == pytest.approx(due + INTERVAL)


def test_each_partner_is_pulled_at_start_then_once_per_interval(
    started: list[tuple[str, str, float]],
) -> None:
    clock = FakeClock()
    partners = [p for p in NODES if p != "n00-aisi"]
    loops = _loops(_node("n00-aisi", partners, clock), clock)
    t0 = clock.now
    try:
        assert loops.round() == len(partners)  # the catch-up at start: all at once
        _drain(loops)
        assert loops.round() == 0  # nothing is due again right after
        assert 0 < loops.until_next() <= INTERVAL
        _run([loops], clock, 10 * INTERVAL)
    finally:
        loops.close()
    per_partner = Counter(p for _, p, _ in started)
    assert set(per_partner) == set(partners)
    # At start, then once in each later interval (the first between 0.5 and 1.5 intervals).
    assert all(10 <= n <= 11 for n in per_partner.values()), per_partner
    for partner in partners:
        times = [t for _, p, t in started if p == partner]
        assert times[0] == t0
        gaps = [b - a for a, b in itertools.pairwise(times[1:])]
        assert all(g == pytest.approx(INTERVAL) for g in gaps), (partner, gaps)


def test_a_network_started_together_spreads_its_pulls(
    started: list[tuple[str, str, float]],
) -> None:
    clock = FakeClock()
    loops = [_loops(_node(n, [p for p in NODES if p != n], clock), clock) for n in NODES]
    t0 = clock.now
    try:
        _run(loops, clock, 4 * INTERVAL)
    finally:
        for one in loops:
            one.close()
    after_start = [t for _, _, t in started if t > t0 + INTERVAL]
    assert len(after_start) >= 2 * len(NODES) * (len(NODES) - 1)  # every pair, every interval
    per_second = Counter(int(t) for t in after_start)
    # 380 pulls per 30 s is about 13 a second; they used to come all in the same second.
    assert max(per_second.values()) <= 40, per_second.most_common(3)


def test_a_partner_added_later_is_pulled_at_once_and_one_removed_is_dropped(
    started: list[tuple[str, str, float]],
) -> None:
    clock = FakeClock()
    node = _node("uk-aisi", ["us-aisi"], clock)
    loops = _loops(node, clock)
    try:
        assert loops.round() == 1
        _drain(loops)
        clock.now += 1
        node.partners.append(SimpleNamespace(node_id="ca-aisi"))
        assert loops.round() == 1  # the new partner, not waiting for its phase
        _drain(loops)
        assert started[-1][1] == "ca-aisi"
        node.partners[:] = [SimpleNamespace(node_id="ca-aisi")]
        loops.round()
        assert set(loops._due) == {"ca-aisi"}
    finally:
        loops.close()


def test_a_pull_still_running_is_not_started_twice(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = FakeClock()
    release = threading.Event()
    calls: list[str] = []

    def hanging(node: Any, client: Any, partner: Any) -> int:
        calls.append(partner.node_id)
        release.wait(10)
        return 0

    monkeypatch.setattr(pull, "_pull_isolated", hanging)
    monkeypatch.setattr(pull, "_partners", lambda node: list(node.partners))
    loops = _loops(_node("uk-aisi", ["us-aisi"], clock), clock)
    try:
        assert loops.round() == 1
        clock.now += 5 * INTERVAL  # long past its next moment, but still running
        assert loops.round() == 0
        assert loops.in_flight() == {"us-aisi"}
        # The worker does not spin on it: it looks again a second later, not at once.
        assert loops.until_next() == OVERDUE_RECHECK
        release.set()
        _drain(loops)
        assert loops.until_next() == 0.0  # overdue and finished: due now
        assert loops.round() == 1
        _drain(loops)
    finally:
        release.set()
        loops.close()
    assert calls == ["us-aisi", "us-aisi"]
