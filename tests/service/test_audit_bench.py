"""bench/audit.py runs (quick mode) and reports what it promises. It asserts no timing target:
benchmarks measure, tests check behaviour."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.support import ROOT


def test_audit_benchmark_quick_mode_runs_and_reports(tmp_path: Path) -> None:
    out = tmp_path / "result.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "audit.py"), "--quick", "--json", str(out),
         "--dir", str(tmp_path)],
        check=True,
        capture_output=True,
        text=True,
        timeout=180,
    )  # fmt: skip
    for line in ("appends:", "proofs:", "verify:", "Tessera"):
        assert line in done.stdout
    result = json.loads(out.read_text())
    assert result["bench"] == "audit" and result["quick"] is True
    assert result["appends"]["appends"] == 1_000
    assert result["appends"]["durable_appends_per_s"] > 0
    assert result["proofs"]["tree_size"] == 20_000
    assert 0 < result["proofs"]["proof_ms_p50"] <= result["proofs"]["proof_ms_p99"]
    assert result["verify"]["entries"] == 5_000
    assert result["verify"]["verify_db_entries_per_s"] > 0
    assert result["peer"]["tessera_nvme_writes_per_s"] == 10_000
    assert list(tmp_path.iterdir()) == [out]  # the scratch folder is gone
