"""service/network.py without running nodes: a network's homes join through one roster (N
imports, each audited, every member pinned) and hold one agreement whose common terms every
officer signed; ``network down`` stops detached nodes from the state file, and only those."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlmodel import select

from crypto.descriptor import verify_descriptor
from crypto.roster import Roster
from policies import Request, evaluate
from policies._assemble import assemble
from service.agreements import AgreementKeys
from service.db import open_database
from service.errors import NodeProcessError
from service.home import open_home
from service.models import AuditEntry, Partner
from service.network import network_ids, prepare_network, read_state, stop_network
from service.roster import read_roster
from tests.nodes import PASSPHRASE, SCRYPT_WORK_FACTOR, alive, base_env

WAITS = (sys.executable, "-c", "import time; time.sleep(600)")  # stands in for `entente serve`


def test_ids_are_the_example_institutes_then_numbered() -> None:
    assert network_ids(3) == ["us-aisi", "uk-aisi", "ca-aisi"]
    ids = network_ids(22)
    assert len(set(ids)) == 22 and ids[-2:] == ["node-21", "node-22"]
    with pytest.raises(ValueError, match="2 to 64"):
        network_ids(1)
    with pytest.raises(ValueError, match="2 to 64"):
        network_ids(65)


def test_every_node_pins_every_other_through_one_roster_and_holds_the_signed_terms(
    tmp_path: Path,
) -> None:
    ids = network_ids(4)
    net = prepare_network(
        tmp_path / "net", ids, passphrase=PASSPHRASE, scrypt_work_factor=SCRYPT_WORK_FACTOR,
        env=base_env(), command=WAITS,
    )  # fmt: skip
    roster = read_roster((tmp_path / "net" / "roster.json").read_bytes())
    envelope, parsed = roster
    assert isinstance(parsed, Roster) and parsed.sha256 == net.roster_sha256
    assert len(envelope.signatures) == 2 * len(ids)  # every member, Ed25519 + ML-DSA-65
    now = datetime.now(UTC)
    for node_id in ids:
        home = open_home(tmp_path / "net" / node_id)
        db = open_database(f"sqlite:///{home.path / 'entente.db'}")
        try:
            with db.session() as session:
                partners = {p.node_id: p.fingerprint for p in session.exec(select(Partner))}
                kinds = [e.kind for e in session.exec(select(AuditEntry))]
            assert partners == {n: net.fingerprints[n] for n in ids if n != node_id}
            assert kinds.count("roster.imported") == 1  # one import, not N-1 partner adds
            assert kinds.count("partner.added") == len(ids) - 1
            assert kinds.count("agreement.officer_certified") == 1
            # The agreement in its policies verifies against the keys this node pinned, every
            # party signed it, and its common terms decide for every partner.
            raw = (home.policies_dir / "local-network-terms.agreement.json").read_bytes()
            descriptor = verify_descriptor(home.descriptor_envelope(), now=now)
            checker = AgreementKeys(node_id, [descriptor.keyset], db, require_signed=True)
            held = checker.held("local-network-terms.agreement.json", raw, now=now, strict=True)
        finally:
            db.dispose()
        assert held is not None and held.signed_by == frozenset(ids)
        assert held.agreement.sha256 == net.agreement["sha256"]
        policies = assemble(node_id, local=[], held=[held], require_signed=True).policies
        for other in ids:
            if other == node_id:
                continue
            green = Request(other, "share", "TLP:GREEN", frozenset({"evaluation"}),
                            frozenset({"evaluation"}))  # fmt: skip
            decision = evaluate(policies, green, now=now)
            assert decision.allowed, decision
            assert "common terms (network.yaml)" in str(decision.rules[0].document)
            amber = Request(other, "share", "TLP:AMBER", frozenset({"evaluation"}),
                            frozenset({"evaluation"}))  # fmt: skip
            denied = evaluate(policies, amber, now=now)
            assert not denied.allowed and denied.rules[0].id == "net-above-green"
        tokens = json.loads(net.tokens_file(node_id).read_text())
        assert set(tokens) >= {"publisher", "reader", "auditor", "admin"}
        assert net.tokens_file(node_id).stat().st_mode & 0o777 == 0o600
    state = read_state(tmp_path / "net")
    assert [n["node_id"] for n in state["nodes"]] == ids
    assert state["agreement"] == net.agreement and state["roster_sha256"] == net.roster_sha256


def test_network_down_stops_the_detached_nodes_a_finished_process_left(tmp_path: Path) -> None:
    """A process starts two detached stand-in nodes, records them and exits; they outlive it,
    and ``stop_network`` stops them from the state file. A pid that is no longer that node's
    (here: this test's own) is left alone."""
    script = textwrap.dedent(
        f"""
        import sys
        from pathlib import Path
        sys.path.insert(0, {str(Path(__file__).resolve().parents[2])!r})
        from service.localnet import Federation
        from service.network import Network, write_state
        from service.localnet import NodeProcess
        root = Path({str(tmp_path)!r})
        nodes = {{n: NodeProcess(root / n, n, command={WAITS!r}, detached=True)
                 for n in ("aa", "bb")}}
        for node in nodes.values():
            (root / node.node_id).mkdir()
            node.spawn()
        network = Network(root, "t", Federation(nodes), {{"aa": "0" * 64, "bb": "1" * 64}},
                          "2" * 64, {{}})
        write_state(network)
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120)
    state = read_state(tmp_path)
    pids = {n["node_id"]: n["pid"] for n in state["nodes"]}
    assert all(alive(pid) for pid in pids.values())  # they outlived the process
    state["nodes"].append({"node_id": "cc", "pid": 1, "home": str(tmp_path / "cc")})
    (tmp_path / "network.json").write_text(json.dumps(state))
    outcome = stop_network(tmp_path, timeout=30)
    assert outcome == {"aa": "stopped", "bb": "stopped", "cc": "not running"}
    deadline = time.monotonic() + 10
    while any(alive(pid) for pid in pids.values()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(alive(pid) for pid in pids.values())
    assert stop_network(tmp_path, timeout=5) == {
        "aa": "not running", "bb": "not running", "cc": "not running"
    }  # fmt: skip


def test_network_down_without_a_state_file_says_so(tmp_path: Path) -> None:
    with pytest.raises(NodeProcessError, match="no network state"):
        stop_network(tmp_path)
