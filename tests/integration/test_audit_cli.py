"""`entente audit` against real `entente serve` processes: a log cosigned by a partner witness
verifies over HTTP; the same log, tampered with in its SQLite file, fails offline verification
naming the entry."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.nodes import Federation, base_env, run_cli, start_federation

pytestmark = pytest.mark.integration


def wait_for(check: Callable[[], Any], timeout: float = 20.0, what: str = "condition") -> Any:
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
        tmp_path_factory.mktemp("audit"),
        ("uk-aisi", "us-aisi"),
        ENTENTE_CHECKPOINT_INTERVAL_SECONDS="0.2",
        ENTENTE_RETRY_BASE_SECONDS="0.2",
        ENTENTE_RETRY_MAX_SECONDS="1",
    )
    yield federation
    federation.stop()


def _cosigned(fed: Federation) -> bool:
    uk = fed.nodes["uk-aisi"]
    response = httpx.get(
        f"{uk.url}/audit/v1/checkpoint",
        params={"min_cosignatures": 1},
        headers=fed.auth("uk-aisi", "auditor"),
    )
    return response.status_code == 200


def test_verify_online_then_tamper_and_verify_offline(fed: Federation, tmp_path: Path) -> None:
    uk, us = fed.nodes["uk-aisi"], fed.nodes["us-aisi"]
    wait_for(lambda: _cosigned(fed), what="a checkpoint cosigned by us-aisi")
    # The auditor pins the witness key the witness itself publishes (out of band, in real life).
    witness = httpx.get(f"{us.url}/audit/v1/witnesses", headers=fed.auth("us-aisi", "auditor"))
    vkey = witness.json()["witness"]["vkey"]
    state = tmp_path / "audit-state.json"
    env = base_env(ENTENTE_TOKEN=fed.tokens["uk-aisi"]["auditor"])
    args = ("audit", "verify", "--url", uk.url, "--state", str(state))
    pinned = ("--witness", vkey, "--min-cosignatures", "1")

    first = run_cli(*args, *pinned, env=env)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "VERIFIED" in first.stdout
    assert "entente.dev/witness/us-aisi" in first.stdout
    remembered = json.loads(state.read_text())["logs"]["entente.dev/audit/uk-aisi"]

    again = run_cli(*args, *pinned, "--json", env=env)
    assert again.returncode == 0, again.stderr
    verdict = json.loads(again.stdout)
    assert verdict["ok"] is True
    assert verdict["remembered_size"] == remembered["size"]
    assert verdict["entries"] >= remembered["size"]
    assert verdict["cosigned"]["witnesses"] == ["entente.dev/witness/us-aisi"]
    # One trusted witness, and it vouches: the quorum (a majority of one) is met.
    assert verdict["quorum"] == {"witnesses": 1, "needed": 1, "vouching": 1, "met": True}
    # A quorum of two among one witness cannot be met: reported, and fatal when required.
    strict = run_cli(*args, *pinned, "--quorum", "2", "--require-quorum", env=env)
    assert strict.returncode == 1, strict.stdout
    assert "quorum NOT met: 1 of 1 trusted witnesses vouch, 2 needed" in strict.stdout

    # A reader's token may not read the audit log.
    reader = run_cli(*args, env=base_env(ENTENTE_TOKEN=fed.tokens["uk-aisi"]["reader"]))
    assert reader.returncode == 1
    assert "403" in reader.stdout + reader.stderr

    # Stop the node and edit one logged row in its database file.
    uk.stop()
    with sqlite3.connect(uk.home / "entente.db") as conn:
        (entry_id,) = conn.execute("SELECT id FROM audit_entries WHERE seq = 2").fetchone()
        conn.execute("UPDATE audit_entries SET actor = 'admin:mallory' WHERE seq = 2")
    offline = ("audit", "verify", "--home", str(uk.home), "--state", str(state))
    before = state.read_text()
    failed = run_cli(*offline)
    assert failed.returncode == 1
    assert "FAILED" in failed.stdout
    assert f"first bad entry: seq 2 (id {entry_id})" in failed.stdout
    as_json = json.loads(run_cli(*offline, "--json").stdout)
    assert (as_json["ok"], as_json["bad_seq"], as_json["bad_id"]) == (False, 2, entry_id)
    assert state.read_text() == before  # a failed verification remembers nothing


def test_export_and_checkpoint_commands(fed: Federation, tmp_path: Path) -> None:
    us = fed.nodes["us-aisi"]
    env = base_env(ENTENTE_TOKEN=fed.tokens["us-aisi"]["auditor"])
    out = tmp_path / "us.jsonl"
    exported = run_cli("audit", "export", "--url", us.url, "--raw", "-o", str(out), env=env)
    assert exported.returncode == 0, exported.stderr
    lines = out.read_bytes().splitlines()
    assert lines and [json.loads(line)["seq"] for line in lines] == list(range(len(lines)))
    # A bundle of the same log over the API, checked with the node's descriptor alone.
    bundle = tmp_path / "us-bundle.jsonl"
    done = run_cli("audit", "export", "--url", us.url, "--to", "1", "-o", str(bundle), env=env)
    assert done.returncode == 0, done.stderr
    descriptor = tmp_path / "us-descriptor.json"
    descriptor.write_bytes(httpx.get(f"{us.url}/.well-known/entente.json").content)
    checked = run_cli("audit", "verify-export", str(bundle), "--descriptor", str(descriptor))
    assert checked.returncode == 0, checked.stdout
    assert "every entry from 0 to 1 is present" in checked.stdout
    note = run_cli("audit", "checkpoint", "--url", us.url, env=env)
    assert note.returncode == 0, note.stderr
    assert note.stdout.startswith("entente.dev/audit/us-aisi\n")
    assert "\u2014 entente.dev/audit/us-aisi " in note.stdout
