"""bench/seal.py runs (quick mode) and reports what it promises. It asserts no timing target:
benchmarks measure, tests check behaviour."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import ROOT, require_tool

pytestmark = pytest.mark.age_cli


def test_seal_benchmark_quick_mode_runs_and_reports(tmp_path: Path) -> None:
    require_tool("age", "age")
    require_tool("sha256sum", "coreutils")
    out = tmp_path / "result.json"
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "seal.py"),
            "--quick",
            "--json",
            str(out),
            "--dir",
            str(tmp_path),
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "seal: entente" in done.stdout
    assert "open: entente" in done.stdout
    result = json.loads(out.read_text())
    assert result["size_bytes"] == 16 * 1024 * 1024
    for op in ("seal", "open"):
        figures = result[op]
        for key in ("entente_mb_s", "peer_mb_s", "ratio", "peak_rss_mib"):
            assert figures[key] > 0
        assert figures["child_third_party_modules"] == []  # only crypto and service.files
    # the limit beside them: the primitives alone, over the same file (its digest checked)
    assert result["limit_mb_s"] > 0
    assert "limit:" in done.stdout
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]  # scratch files removed
