"""``bench/network_steady.py`` still runs and its figures add up: three nodes sharing at a fixed
rate for a few seconds, on loopback. No timing is asserted."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.support import ROOT

pytestmark = [pytest.mark.slow, pytest.mark.integration]


@pytest.mark.timeout(600)
def test_the_fixed_rate_network_benchmark_runs_in_quick_mode() -> None:
    result = subprocess.run(
        [sys.executable, "bench/network_steady.py", "--quick"],
        cwd=ROOT, capture_output=True, text=True, timeout=540, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    data = json.loads(result.stdout.splitlines()[-1])
    assert data["loopback"] is True and data["quick"] is True
    row = data["sizes"]["3"]
    # 6 shares to all per node per minute over 10 s on 3 nodes: one every 3 1/3 s, from 0 s
    assert row["shares"] == 3 and row["rate_per_node_per_minute"] == 6.0
    assert 0 < row["p50_s"] <= row["p99_s"] <= row["max_s"]
    assert row["cpu_s_per_node_per_hour_mean"] > 0 and row["idle_cpu_s_per_node_per_hour"] >= 0
    assert row["active_cpu_s_per_node_per_hour_mean"] == pytest.approx(
        row["cpu_s_per_node_per_hour_mean"] - row["idle_cpu_s_per_node_per_hour"], abs=0.2
    )
    # each figure is rounded on its own (the mean to 0.1 s, the quotient to 0.01 s)
    assert row["active_cpu_s_per_node_per_hour_per_partner"] == pytest.approx(
        row["active_cpu_s_per_node_per_hour_mean"] / 2, abs=0.05
    )
