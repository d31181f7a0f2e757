"""`entente demo` end to end, as a user runs it: its outcome, not just its exit code."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from tests.nodes import ENTENTE

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_demo_runs_the_whole_story() -> None:
    # os.environ, not the process's C environment: readline (loaded by pytest) exports
    # COLUMNS=80 there, and a pipe with COLUMNS set is laid out at that width
    result = subprocess.run(
        [ENTENTE, "demo", "--json"], capture_output=True, text=True, timeout=300, check=False,
        env=dict(os.environ),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    nodes = {n["node_id"]: n for n in summary["nodes"]}
    assert set(nodes) == {"us-aisi", "uk-aisi", "ca-aisi"}
    for node in nodes.values():
        assert node["url"].startswith("http://127.0.0.1:")
        assert set(node["tokens"]) == {"publisher", "reader", "auditor", "admin", "metrics"}
    outcome = summary["outcome"]
    assert outcome["artifact_id"].startswith("art_")
    assert outcome["denied"]["rule"] == "declaration-only-clear-green"
    assert "Bletchley Declaration" in outcome["denied"]["clause"]
    assert outcome["read_ok"] is True
    assert outcome["access_notice"] is True
    assert outcome["revoked"] is True
    assert outcome["sealing"] == "post-quantum"  # every demo node has a hybrid identity
    assert outcome["expired_deleted"] is True  # delete_at_expiry carried out at both nodes
    assert outcome["amendment"] is True  # both nodes hold the same countersigned versions
    for node_id, verdict in outcome["audit"].items():
        assert verdict["ok"] is True, (node_id, verdict)
        assert len(verdict["witnesses"]) == 2, verdict
    # The story is told for people on stderr (stdout carries only the JSON line with --json).
    for step in ("shares an evaluation finding", "protection post-quantum", "DENIED",
                 "Bletchley Declaration, para 8 [example]", "opens the finding",
                 "deleted at both nodes when it expires", "awaiting us-aisi",
                 "us-uk-mou v2: adopted at us-aisi, adopted at uk-aisi", "VERIFIED"):  # fmt: skip
        assert step in result.stderr
    # The denial names its rule and clause once each, then why; the table keeps fingerprints whole.
    assert result.stderr.count("declaration-only-clear-green") == 1
    assert result.stderr.count("Bletchley Declaration, para 8 [example]") == 1
    assert "why    TLP:AMBER is one of" in result.stderr
    assert "HTTP 410 Gone" in result.stderr  # a revoked artifact at the recipient
    for fingerprint in (n["fingerprint"] for n in summary["nodes"]):
        grouped = " ".join(fingerprint[i : i + 4] for i in range(0, len(fingerprint), 4))
        assert grouped in result.stderr
