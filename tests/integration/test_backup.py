"""Backup and restore with real nodes (``entente backup``, ``entente restore``, ``entente serve``).

1. A backup taken while shares flow, restored to a new home: ``entente audit verify`` passes on
   it, and the restored node resumes where the snapshot was: a delivery queued for a partner
   that was down is sent once, and what partners acknowledged before the snapshot is not sent
   again.
2. A backup older than what the witnesses cosigned: the restore says so, ``entente audit
   verify`` fails naming it, and the restored node (told at the restore, or finding out when
   it starts) signs no checkpoint over sizes its witness cosigned, and logs why.
"""

from __future__ import annotations

import json
import re
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.localnet import NodeProcess as Node
from tests.integration.test_federation import upload, wait_for
from tests.nodes import Federation, NodeProcess, base_env, run_cli, start_federation

pytestmark = pytest.mark.integration

FAST = {
    "ENTENTE_SYNC_INTERVAL_SECONDS": "0.1",
    "ENTENTE_RETRY_BASE_SECONDS": "0.2",
    "ENTENTE_RETRY_MAX_SECONDS": "1",
}


def query(db: Path, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    with sqlite3.connect(db) as conn:
        return conn.execute(sql, args).fetchall()


def share(node: Node, partners: list[str], n: int) -> str:
    meta = {
        "title": f"finding {n}",
        "tlp": "TLP:GREEN",
        "topics": ["evaluation"],
        "purposes": ["evaluation"],
        "partners": partners,
    }
    body, headers = upload(meta, f"finding number {n}\n".encode() * 200)
    r = httpx.post(
        f"{node.url}/v1/artifacts", content=body, headers={**headers, **node.auth("publisher")}
    )
    assert r.status_code == 201, r.text
    art: str = r.json()["id"]
    return art


def printed_digest(stdout: str) -> str:
    """The manifest digest `entente backup` printed."""
    found = re.search(r"manifest\s+sha256 ([0-9a-f]{64})", stdout)
    assert found, stdout
    return found.group(1)


def restored_node(original: Node, home: Path, **env: str) -> NodeProcess:
    """The node restored into ``home``, on the original's port (its URL, as partners pin it)."""
    return NodeProcess(
        home, original.node_id, port=original.port, env=base_env(**env), tokens=original.tokens
    )


@pytest.fixture
def fed(tmp_path: Path) -> Iterator[Federation]:
    # The log's checkpoints are signed and witnessed at start only (a long interval), so the
    # snapshot taken under load is not older than what the witnesses hold: case 2 is the other.
    (tmp_path / "nodes").mkdir()
    federation = start_federation(
        tmp_path / "nodes", ENTENTE_CHECKPOINT_INTERVAL_SECONDS="600", **FAST
    )
    yield federation
    federation.stop()


def test_a_backup_under_load_restores_verifies_and_resumes(fed: Federation, tmp_path: Path) -> None:
    uk, ca = fed.nodes["uk-aisi"], fed.nodes["ca-aisi"]
    ca.stop()  # its deliveries queue
    shared: list[str] = []
    stop = threading.Event()

    def load() -> None:
        n = 0
        while not stop.is_set():
            shared.append(share(uk, ["us-aisi", "ca-aisi"], n))
            n += 1

    worker = threading.Thread(target=load)
    worker.start()
    try:
        wait_for(lambda: len(shared) >= 5, timeout=60, what="shares flowing")
        made = run_cli("backup", "--home", str(uk.home), "-o", str(tmp_path / "b.tar"))
        assert made.returncode == 0, made.stderr
        after = len(shared)
        wait_for(lambda: len(shared) >= after + 3, timeout=60, what="shares after the backup")
    finally:
        stop.set()
        worker.join()
    assert "Backup written" in made.stdout
    uk.stop()

    home = tmp_path / "uk-restored"
    digest = printed_digest(made.stdout)
    done = run_cli(
        "restore", str(tmp_path / "b.tar"), "--home", str(home), "--manifest-sha256", digest
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "witness ca-aisi not confirmed" in done.stderr  # it is down: asked again at start
    db = home / "entente.db"
    ids = {row[0] for row in query(db, "SELECT id FROM artifacts")}
    assert ids and ids <= set(shared)
    acknowledged = {
        row[0]: row[1]
        for row in query(
            db, "SELECT artifact_id, delivered_at FROM outbox WHERE kind='deliver' AND "
            "state='delivered'"
        )
    }  # fmt: skip
    queued_ca = {
        row[0]
        for row in query(
            db, "SELECT artifact_id FROM outbox WHERE partner='ca-aisi' AND kind='deliver' "
            "AND state='pending'"
        )
    }  # fmt: skip
    assert queued_ca == ids and acknowledged  # CA was down; the US acknowledged some
    restored_at = query(db, "SELECT max(id) FROM audit_entries")[0][0]

    verified = run_cli(
        "audit", "verify", "--home", str(home), "--state", str(tmp_path / "state.json")
    )
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "VERIFIED" in verified.stdout

    node = restored_node(uk, home, **FAST)
    node.start()
    ca.start()
    try:
        wait_for(
            lambda: query(
                db, "SELECT count(*) FROM outbox WHERE kind='deliver' AND state!='delivered'"
            )[0][0] == 0,
            timeout=120, what="every queued delivery sent",
        )  # fmt: skip
        # each delivery queued for Canada was sent once; nothing acknowledged went again
        sent = query(
            db, "SELECT partner, artifact_id FROM audit_entries WHERE kind='delivery.sent' "
            "AND id > ?", restored_at,
        )  # fmt: skip
        to_ca = [a for p, a in sent if p == "ca-aisi"]
        assert sorted(to_ca) == sorted(queued_ca)
        assert not {a for p, a in sent if p == "us-aisi"} & set(acknowledged)
        for art, delivered_at in acknowledged.items():
            assert query(
                db, "SELECT delivered_at FROM outbox WHERE artifact_id=? AND partner='us-aisi'",
                art,
            ) == [(delivered_at,)]  # fmt: skip
        received = query(ca.home / "entente.db", "SELECT id, count(*) FROM artifacts GROUP BY id")
        assert dict(received) == dict.fromkeys(queued_ca, 1)
        # the restored log is witnessed again, and verifies with what its witnesses hold
        wait_for(
            lambda: query(db, "SELECT count(*) FROM audit_rollbacks")[0][0] == 0,
            timeout=60, what="Canada confirming the restored log",
        )  # fmt: skip
        wait_for(
            lambda: query(db, "SELECT count(*) FROM audit_cosignatures")[0][0] > 0,
            timeout=60, what="a cosigned checkpoint of the restored log",
        )  # fmt: skip
        again = run_cli(
            "audit", "verify", "--home", str(home), "--state", str(tmp_path / "state.json")
        )
        assert again.returncode == 0, again.stdout + again.stderr
    finally:
        node.stop()


def test_an_older_snapshot_never_signs_over_what_its_witness_cosigned(tmp_path: Path) -> None:
    (tmp_path / "nodes").mkdir()
    fed = start_federation(
        tmp_path / "nodes", ("uk-aisi", "us-aisi"), ENTENTE_CHECKPOINT_INTERVAL_SECONDS="0.3",
        **FAST,
    )  # fmt: skip
    uk, us = fed.nodes["uk-aisi"], fed.nodes["us-aisi"]
    witness_db = us.home / "entente.db"

    def held() -> int:
        rows = query(witness_db, "SELECT size FROM witness_logs WHERE origin LIKE '%uk-aisi'")
        return int(rows[0][0]) if rows else 0

    try:
        share(uk, ["us-aisi"], 0)
        wait_for(lambda: held() > 0, timeout=60, what="the US cosigning the UK's log")
        made = run_cli("backup", "--home", str(uk.home), "-o", str(tmp_path / "old"))
        assert made.returncode == 0, made.stderr
        snapshot = json.loads((tmp_path / "old" / "manifest.json").read_text())
        size = snapshot["database"]["log_size"]
        for n in range(1, 4):
            share(uk, ["us-aisi"], n)
        wait_for(lambda: held() > size, timeout=60, what="the US cosigning a newer checkpoint")
        uk.stop()
        cosigned = held()

        # told at the restore (the witness is up)
        told = tmp_path / "uk-told"
        digest = printed_digest(made.stdout)
        done = run_cli(
            "restore", str(tmp_path / "old"), "--home", str(told), "--manifest-sha256", digest
        )
        assert done.returncode == 2, done.stdout + done.stderr
        assert "LOG BEHIND ITS WITNESSES" in done.stderr
        assert f"cosigned size {cosigned}" in done.stderr
        verdict = run_cli(
            "audit", "verify", "--home", str(told), "--state", str(tmp_path / "s.json")
        )
        assert verdict.returncode == 1
        assert "restored from an older snapshot" in verdict.stdout
        assert f"us-aisi: it cosigned size {cosigned}" in verdict.stdout

        # finding out when it starts (restored without asking)
        home = tmp_path / "uk-restored"
        quiet = run_cli(
            "restore", str(tmp_path / "old"), "--home", str(home), "--no-ask-witnesses",
            "--manifest-sha256", digest,
        )  # fmt: skip
        assert quiet.returncode == 0, quiet.stderr
        db = home / "entente.db"
        node = restored_node(uk, home, ENTENTE_CHECKPOINT_INTERVAL_SECONDS="0.3", **FAST)
        node.start()
        try:
            wait_for(
                lambda: query(db, "SELECT state FROM audit_rollbacks") == [("behind",)],
                timeout=60, what="the restored node noticing",
            )  # fmt: skip
            share(node, ["us-aisi"], 99)  # it still works; its entries wait, unsequenced
            wait_for(
                lambda: query(
                    db, "SELECT count(*) FROM audit_entries WHERE kind='delivery.sent' AND "
                    "seq IS NULL"
                )[0][0] > 0,
                timeout=60, what="the new share delivered",
            )  # fmt: skip
            assert query(db, "SELECT max(size) FROM audit_checkpoints") == [(size,)]
            assert held() == cosigned  # the witness was never asked to cosign a fork
            assert query(witness_db, "SELECT count(*) FROM witness_evidence") == [(0,)]
            found = query(
                db, "SELECT partner, detail FROM audit_entries WHERE kind='audit.rollback_detected'"
            )
            assert len(found) == 1 and found[0][0] == "us-aisi"
            assert json.loads(found[0][1])["held_size"] == cosigned
            assert node.log_path is not None
            log = node.log_path.read_text()
            assert "AUDIT LOG ROLLED BACK" in log and "signing no checkpoint" in log
        finally:
            node.stop()
    finally:
        fed.stop()
