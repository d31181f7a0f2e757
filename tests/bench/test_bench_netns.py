"""``bench/network.py --netns`` still runs: nodes in network namespaces with 50 ms round trips
between them, then a partition of one node healed (root and iproute2; in CI it must run). No
timing is asserted."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.netns import require_namespaces
from tests.support import ROOT

pytestmark = [pytest.mark.slow, pytest.mark.integration]


@pytest.mark.timeout(900)
def test_the_network_benchmark_runs_in_namespaces() -> None:
    require_namespaces()
    result = subprocess.run(
        [sys.executable, "bench/network.py", "--quick", "--netns", "--rtt-ms", "50"],
        cwd=ROOT, capture_output=True, text=True, timeout=840, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    data = json.loads(result.stdout.splitlines()[-1])
    assert data["loopback"] is False and data["rtt_ms"] == 50.0
    row = data["sizes"]["3"]
    assert row["shares"] == 6 and row["partners_per_share"] == 2
    assert row["witness_requests"] > 0  # the nodes witnessed each other across their links
    # each node's connections, counted in its own namespace's tables (the root namespace's hold none
    # of its sockets: read there, the count would be 0)
    assert row["connections_per_node_max"] >= row["connections_per_node_mean"] > 0
    # one of the three cut off, two shares from each of the other two, all receipted in the end
    assert row["partitioned_nodes"] == 1 and row["partition_shares"] == 4
    assert row["converged_s"] >= 0
