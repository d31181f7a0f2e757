"""Every benchmark still runs (in its --quick mode). No timing is asserted: speed and memory
targets are checked by the benchmarks themselves, on a quiet machine, never by tests."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import ROOT, require_tool

pytestmark = [pytest.mark.slow, pytest.mark.age_cli]


def test_all_benchmarks_run_in_quick_mode(tmp_path: Path) -> None:
    require_tool("age", "age")  # the seal benchmark's peer
    docs = tmp_path / "performance.md"
    result = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--results", str(tmp_path), "--docs", str(docs)],
        cwd=ROOT, capture_output=True, text=True, timeout=1200, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    data = json.loads((tmp_path / "latest-quick.json").read_text())
    assert set(data["results"]) == {"seal", "policy", "api", "sync", "audit", "profile"}
    for name, figures in data["results"].items():
        assert isinstance(figures, dict) and figures, name
    assert "| seal | seal 1 GiB" in result.stdout  # the table is printed
    assert not docs.exists()  # quick runs never overwrite the published report
