"""M5: `entente audit verify` cannot be shown a truncated or rewritten history.

The attack of the finding, on real nodes: the UK operator stops its node, deletes two entries
logged after an old checkpoint that both witnesses cosigned, and re-signs the checkpoints from
there on (the old cosigned checkpoint, and its cosignatures, still verify). `audit verify --home
--min-cosignatures 2` used to say VERIFIED: the old cosigned checkpoint satisfied the flag. Now
the cosignature requirement applies to the LATEST checkpoint, the verifier asks each witness for
the checkpoint it holds, and it fails naming the gap when the log is behind one of them, or
inconsistent with it.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from crypto import merkle
from service.audit.entries import log_signer
from service.audit.sequencer import sequence
from service.node import load_node
from service.settings import Settings
from tests.nodes import PASSPHRASE, Federation, base_env, run_cli, start_federation

pytestmark = pytest.mark.integration

UK = "uk-aisi"


def wait_for(check: Callable[[], Any], timeout: float = 60.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    federation = start_federation(
        tmp_path_factory.mktemp("m5"),
        ENTENTE_CHECKPOINT_INTERVAL_SECONDS="0.2",
        ENTENTE_RETRY_BASE_SECONDS="0.2",
        ENTENTE_RETRY_MAX_SECONDS="1",
    )
    yield federation
    federation.stop()


def _cosigned_by_both(fed: Federation) -> int | None:
    """The size of the latest checkpoint if both witnesses cosigned it."""
    uk = fed.nodes[UK]
    latest = httpx.get(f"{uk.url}/audit/v1/checkpoint", headers=fed.auth(UK, "auditor"))
    both = httpx.get(
        f"{uk.url}/audit/v1/checkpoint",
        params={"min_cosignatures": 2},
        headers=fed.auth(UK, "auditor"),
    )
    if latest.status_code != 200 or both.status_code != 200 or latest.text != both.text:
        return None
    return int(latest.text.split("\n")[1])


def _grow(fed: Federation, n: int) -> None:
    uk = fed.nodes[UK]
    for _ in range(n):  # each read of the log is itself logged
        r = httpx.get(f"{uk.url}/audit/v1/entries?limit=1", headers=fed.auth(UK, "auditor"))
        assert r.status_code == 200


def _verify(home: Path, state: Path, *extra: str) -> dict[str, Any]:
    out = run_cli(
        "audit", "verify", "--home", str(home), "--state", str(state),
        "--min-cosignatures", "2", "--json", *extra, env=base_env(),
    )  # fmt: skip
    assert out.stdout.strip(), out.stderr
    verdict: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    assert (out.returncode == 0) == verdict["ok"], out
    return verdict


def _entries(home: Path) -> int:
    """Every entry of the stopped node's log, sequenced or not."""
    with sqlite3.connect(home / "entente.db") as conn:
        (count,) = conn.execute("SELECT COUNT(*) FROM audit_entries").fetchone()
    return int(count)


def _cut_and_resign(home: Path, *, keep: int, drop: int) -> int:
    """Delete ``drop`` entries logged after seq ``keep`` and re-sign the log: the checkpoint at
    ``keep`` comes out identical (its stored cosignatures still verify), later ones are new."""
    db_path = home / "entente.db"
    with sqlite3.connect(db_path) as conn:
        ids = [r[0] for r in conn.execute(
            "SELECT id FROM audit_entries WHERE seq >= ? ORDER BY seq LIMIT ?", (keep, drop)
        )]  # fmt: skip
        assert len(ids) == drop
        conn.executemany("DELETE FROM audit_entries WHERE id = ?", [(i,) for i in ids])
        conn.execute("UPDATE audit_entries SET seq = NULL")
        conn.execute("DELETE FROM audit_merkle_nodes")
        conn.execute("DELETE FROM audit_checkpoints")
        # A careful operator also drops the cosignatures that the new checkpoints would betray
        # (how many there are depends on where the sequencer's batches fell).
        conn.execute("DELETE FROM audit_cosignatures WHERE checkpoint_size > ?", (keep,))
        conn.execute("UPDATE audit_log_head SET size = 0, root = ?", (merkle.EMPTY_ROOT,))
    settings = Settings.load(home=home, passphrase=PASSPHRASE, scrypt_work_factor=10)
    node = load_node(settings, migrate=False)
    try:
        with node.db.session() as s:
            first = sequence(s, signer=log_signer(node), now=node.now(), batch_max=keep)
        assert first.size == keep
        with node.db.session() as s:
            result = sequence(s, signer=log_signer(node), now=node.now())
        with node.db.engine.connect() as conn:
            kept = conn.execute(
                sa.text("SELECT COUNT(*) FROM audit_cosignatures WHERE checkpoint_size = :k"),
                {"k": keep},
            ).scalar_one()
        assert kept == 2  # the old cosigned checkpoint is still there, cosigned by both
        return result.size
    finally:
        node.db.dispose()


def test_a_cut_and_resigned_log_fails_against_its_witnesses(
    fed: Federation, tmp_path: Path
) -> None:
    uk = fed.nodes[UK]
    _grow(fed, 2)
    keep = wait_for(lambda: _cosigned_by_both(fed), what="a checkpoint cosigned by both")
    _grow(fed, 6)
    waited = wait_for(
        lambda: (s := _cosigned_by_both(fed)) is not None and s >= keep + 6 and s,
        what="a later checkpoint cosigned by both",
    )
    uk.stop()

    # The honest log verifies, and both witnesses vouch for its latest checkpoint.
    honest = _verify(uk.home, tmp_path / "honest.json")
    assert honest["ok"], honest
    assert honest["latest"]["size"] >= waited
    witnesses = {"entente.dev/witness/us-aisi", "entente.dev/witness/ca-aisi"}
    assert set(honest["vouched"]) == witnesses
    # Between the wait and the stop the node may have signed, and its witnesses cosigned, a
    # later checkpoint (the polling reads above are logged too, and it checkpoints every 0.2 s):
    # what the witnesses hold after the stop is what the cut must fall behind.
    assert set(honest["witnessed"]) == witnesses, honest
    held = min(honest["witnessed"].values())
    assert held >= waited, honest

    # The operator deletes entries logged after `keep` (two, or as many as put the log behind
    # both witnesses) and re-signs everything.
    size = _cut_and_resign(uk.home, keep=keep, drop=max(2, _entries(uk.home) - held + 1))
    assert size < held
    verdict = _verify(uk.home, tmp_path / "fresh.json")  # no state file from an earlier run
    assert not verdict["ok"], verdict
    assert "behind witness" in verdict["problem"], verdict["problem"]
    cosigned = [f"it cosigned size {n}" for n in honest["witnessed"].values()]
    assert any(c in verdict["problem"] for c in cosigned), verdict["problem"]
    assert f"latest checkpoint has {size}" in verdict["problem"]

    # Without the witnesses' view, the old cosigned checkpoint no longer satisfies the flag:
    # the requirement applies to the latest checkpoint.
    offline = _verify(uk.home, tmp_path / "fresh2.json", "--no-ask-witnesses")
    assert not offline["ok"], offline
    assert f"latest checkpoint (size {size}) is vouched for by 0" in offline["problem"]


def test_a_rewritten_log_padded_past_the_witnesses_is_inconsistent(
    fed: Federation, tmp_path: Path
) -> None:
    uk = fed.nodes[UK]  # stopped and cut by the test above; its witnesses still hold `held`
    with sqlite3.connect(uk.home / "entente.db") as conn:
        (size,) = conn.execute("SELECT size FROM audit_log_head").fetchone()
        # pad the cut log with new entries until it is longer than what the witnesses hold
        rows = conn.execute(
            "SELECT created_at, kind, actor, detail FROM audit_entries ORDER BY seq LIMIT 1"
        ).fetchall()
        for _ in range(10):
            conn.execute(
                "INSERT INTO audit_entries (created_at, kind, actor, detail) VALUES (?, ?, ?, ?)",
                rows[0],
            )
    settings = Settings.load(home=uk.home, passphrase=PASSPHRASE, scrypt_work_factor=10)
    node = load_node(settings, migrate=False)
    try:
        with node.db.session() as s:
            grown = sequence(s, signer=log_signer(node), now=node.now()).size
    finally:
        node.db.dispose()
    assert grown == size + 10
    verdict = _verify(uk.home, tmp_path / "fresh.json")
    assert not verdict["ok"], verdict
    assert "not consistent with the checkpoint witness" in verdict["problem"], verdict
