"""The auditor's memory of logs: a node re-created under the same id is a new log. Verifying it
fails until its key is confirmed with --fingerprint, and then the old log's remembered checkpoint
is replaced instead of failing every verification after."""

from __future__ import annotations

import json
from pathlib import Path

from service.audit.sequencer import run_sequencer
from tests.nodes import run_cli
from tests.service.nodekit import Kit, make_node


def _node(root: Path) -> Kit:
    root.mkdir()
    kit = make_node(root, "uk-aisi", policies=False)
    run_sequencer(kit.node)  # sequences the log and signs its checkpoint
    kit.node.db.dispose()
    return kit


def test_a_recreated_node_is_a_new_log_once_its_key_is_confirmed(tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    first = _node(tmp_path / "a")
    args = ("audit", "verify", "--no-ask-witnesses", "--state", str(state))
    ok = run_cli(*args, "--home", str(first.node.home.path))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    again = _node(tmp_path / "b")  # the same node id, a new key and a new log
    refused = run_cli(*args, "--home", str(again.node.home.path))
    assert refused.returncode != 0
    assert "changed since the last verification" in refused.stdout + refused.stderr
    fp = again.node.keys.signing.fingerprint
    confirmed = run_cli(*args, "--home", str(again.node.home.path), "--fingerprint", fp)
    assert confirmed.returncode == 0, confirmed.stdout + confirmed.stderr
    assert "it is replaced by this verification" in confirmed.stdout
    remembered = json.loads(state.read_text())["logs"]["entente.dev/audit/uk-aisi"]
    assert remembered["fingerprint"] == fp
    # From now on the new log verifies without --fingerprint.
    assert run_cli(*args, "--home", str(again.node.home.path)).returncode == 0


def test_forget_drops_one_log_and_says_when_there_is_none(tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    kit = _node(tmp_path / "a")
    args = ("audit", "verify", "--no-ask-witnesses", "--state", str(state))
    assert run_cli(*args, "--home", str(kit.node.home.path)).returncode == 0
    assert "entente.dev/audit/uk-aisi" in json.loads(state.read_text())["logs"]
    gone = run_cli("audit", "forget", "uk-aisi", "--state", str(state))
    assert gone.returncode == 0, gone.stderr
    assert json.loads(state.read_text())["logs"] == {}
    again = run_cli("audit", "forget", "uk-aisi", "--state", str(state))
    assert again.returncode != 0 and "no remembered checkpoint" in again.stderr


def test_a_quorum_of_no_witness_is_not_met(tmp_path: Path) -> None:
    """A node whose database lists no witness (its operator's choice) made `--require-quorum`
    say "quorum met: 0 of 0" and pass; keys read from the audited node were not flagged."""
    kit = _node(tmp_path / "a")
    home = str(kit.node.home.path)
    args = ("audit", "verify", "--home", home, "--state", str(tmp_path / "s.json"))
    required = run_cli(*args, "--require-quorum")
    assert required.returncode == 1, required.stdout
    assert "quorum NOT met: 0 of 0 trusted witnesses vouch" in required.stdout
    assert "the audited party's choice: pin your own with --witness" in required.stdout
    assert run_cli(*args).returncode == 0  # reported; fatal only when required
