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
    # the limits beside the figures: SQLite alone, and reading + hashing with no re-encoding
    assert done.stdout.count("   limit:") == 2
    assert result["appends"]["sqlite_insert_limit_per_s"] > 0
    limit = result["verify"]["limit"]
    assert limit["entries"] == 5_000 and limit["cores"] >= 1
    assert limit["row_read_us"] > 0 and limit["leaf_hash_us"] > 0
    assert limit["read_and_hash_per_s"] > 0
    assert list(tmp_path.iterdir()) == [out]  # the scratch folder is gone
