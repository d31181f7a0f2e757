"""Crash safety: real ``entente serve`` processes killed (``os._exit(137)``, as by ``kill -9``)
at each step of sharing and receiving where a crash could leave something half done, then
restarted. After each crash and restart:

- the blob store holds exactly the blobs the artifact rows refer to (the start-up sweep removed
  any orphan and any abandoned temporary file) and no row lacks its blob;
- every artifact has its audit event and vice versa (the action and its audit event commit
  together or not at all), every sent artifact its outbox rows;
- a share that committed before the crash is delivered, exactly once, with a receipt; a
  delivery interrupted at the receiver completes on retry, exactly once;
- ``entente audit verify --home`` passes, consistent with what it verified before the crash.

Fault points (``service/faults.py``): ``ENTENTE_FAULT_POINT=<name>`` in the node's environment.
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

from service.faults import EXIT_CODE
from tests.nodes import Federation, NodeProcess, base_env, run_cli, start_federation

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SHARE_POINTS = [
    "share.sealed",
    "share.blob_committed",
    "share.before_db_commit",
    "share.db_committed",
]
RECEIVE_POINTS = ["receive.staged", "receive.blob_committed", "receive.db_committed"]
ENV = {
    "ENTENTE_SYNC_INTERVAL_SECONDS": "0.2",
    "ENTENTE_RETRY_BASE_SECONDS": "0.2",
    "ENTENTE_RETRY_MAX_SECONDS": "1",
    "ENTENTE_CHECKPOINT_INTERVAL_SECONDS": "0.5",
    "ENTENTE_BLOB_ORPHAN_GRACE_SECONDS": "0",  # sweep whatever a crash left, at once
}


def wait_for(check: Callable[[], Any], what: str, timeout: float = 120.0) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    federation = start_federation(tmp_path_factory.mktemp("crash"), ("uk-aisi", "us-aisi"), **ENV)
    yield federation
    federation.stop()


def restart(node: NodeProcess, fault: str | None) -> None:
    """Start ``node`` (stopped or crashed) again, armed with ``fault`` or clean."""
    env = base_env(**ENV)
    if fault:
        env["ENTENTE_FAULT_POINT"] = fault
    node.stop()
    node.env = env
    node.start()  # service.localnet.START_SECONDS: generous, for a loaded machine


def crashed(node: NodeProcess) -> None:
    assert node.proc is not None
    code = node.proc.wait(timeout=180)
    assert code == EXIT_CODE, f"{node.node_id} exited with {code}, not at its fault point"
    node.proc = None


def share(fed: Federation, title: str) -> httpx.Response:
    uk = fed.nodes["uk-aisi"]
    b = "crash-test"
    meta = {
        "title": title,
        "tlp": "TLP:GREEN",
        "topics": ["evaluation"],
        "purposes": ["evaluation"],
        "partners": ["us-aisi"],
    }
    body = (
        (
            f'--{b}\r\nContent-Disposition: form-data; name="metadata"\r\n\r\n{json.dumps(meta)}'
            f'\r\n--{b}\r\nContent-Disposition: form-data; name="file"; filename="f"\r\n\r\n'
        ).encode()
        + title.encode() * 5000
        + f"\r\n--{b}--\r\n".encode()
    )
    return httpx.post(
        f"{uk.url}/v1/artifacts",
        content=body,
        headers={
            "Content-Type": f"multipart/form-data; boundary={b}",
            **fed.auth("uk-aisi", "publisher"),
        },
        timeout=60,
    )


# --- what "consistent" means ---------------------------------------------------------------------


def query(node: NodeProcess, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    with sqlite3.connect(node.home / "entente.db", timeout=30) as conn:
        return list(conn.execute(sql, args))


def store(node: NodeProcess) -> tuple[set[str], list[Path]]:
    root = node.home / "blobs"
    blobs = {p.name for p in root.glob("??/??/*") if len(p.name) == 64}
    return blobs, list((root / "tmp").glob("*"))


def problems(node: NodeProcess) -> list[str]:
    """Everything inconsistent about one node's database and blob store (empty: consistent)."""
    found: list[str] = []
    rows = query(node, "SELECT id, direction, blob FROM artifacts")
    referenced = {blob for _, _, blob in rows if blob}
    blobs, temporary = store(node)
    found += [f"orphaned blob {b}" for b in sorted(blobs - referenced)]
    found += [f"artifact row without its blob {b}" for b in sorted(referenced - blobs)]
    found += [f"abandoned temporary file {p.name}" for p in temporary]
    events = query(
        node,
        "SELECT kind, artifact_id, count(*) FROM audit_entries "
        "WHERE kind IN ('share.allowed', 'receive.accepted') GROUP BY kind, artifact_id",
    )
    audited = {(kind, ident): n for kind, ident, n in events}
    for ident, direction, _ in rows:
        kind = "share.allowed" if direction == "sent" else "receive.accepted"
        if audited.get((kind, ident)) != 1:
            found.append(f"{direction} artifact {ident} has {audited.get((kind, ident), 0)} {kind}")
    known = {ident for ident, _, _ in rows}
    found += [f"{kind} for missing artifact {i}" for (kind, i) in audited if i not in known]
    for (ident,) in query(
        node,
        "SELECT a.id FROM artifacts a WHERE a.direction = 'sent' AND NOT EXISTS "
        "(SELECT 1 FROM outbox o WHERE o.artifact_id = a.id AND o.kind = 'deliver')",
    ):
        found.append(f"sent artifact {ident} has no outbox row")
    return found


def audit_verifies(node: NodeProcess, state: Path) -> None:
    # The sequencer runs on its interval: wait until every entry has its place in the log.
    wait_for(
        lambda: not query(node, "SELECT 1 FROM audit_entries WHERE seq IS NULL LIMIT 1"),
        f"{node.node_id}'s audit log to be sequenced",
    )
    result = run_cli(
        "audit", "verify", "--home", str(node.home), "--state", str(state), env=node.env
    )
    assert result.returncode == 0, result.stdout + result.stderr


def consistent(node: NodeProcess, state: Path, timeout: float = 120.0) -> None:
    """Consistent once the start-up sweep has run (it runs in the background)."""
    deadline = time.monotonic() + timeout
    while (found := problems(node)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert found == [], f"{node.node_id} is not consistent"
    audit_verifies(node, state)


def artifact_titled(node: NodeProcess, title: str) -> list[str]:
    return [i for (i,) in query(node, "SELECT id FROM artifacts WHERE title = ?", title)]


def delivered_once(fed: Federation, artifact_id: str) -> None:
    uk, us = fed.nodes["uk-aisi"], fed.nodes["us-aisi"]
    wait_for(
        lambda: query(
            uk,
            "SELECT 1 FROM outbox WHERE artifact_id = ? AND kind = 'deliver' "
            "AND state = 'delivered'",
            artifact_id,
        ),
        f"the delivery of {artifact_id}",
        60,
    )
    assert query(us, "SELECT count(*) FROM artifacts WHERE id = ?", artifact_id) == [(1,)]
    receipts = query(
        uk, "SELECT count(*) FROM audit_entries WHERE kind = 'receipt.recorded' "
        "AND artifact_id = ?", artifact_id,
    )  # fmt: skip
    assert receipts == [(1,)]
    got = httpx.get(
        f"{us.url}/v1/artifacts/{artifact_id}/content", headers=fed.auth("us-aisi", "reader")
    )
    assert got.status_code == 200 and got.content.startswith(b"crash ")


# --- the tests -----------------------------------------------------------------------------------


def test_crash_during_share(fed: Federation, tmp_path: Path) -> None:
    """Each share point in turn; the node restarts armed with the next one (a share point only
    fires on a new share, so recovery from the previous crash is not disturbed)."""
    uk = fed.nodes["uk-aisi"]
    state = tmp_path / "uk-state.json"
    consistent(uk, state)
    restart(uk, SHARE_POINTS[0])
    for i, point in enumerate(SHARE_POINTS):
        title = f"crash {point}"
        with pytest.raises(httpx.TransportError):  # the node died mid-request: no answer
            share(fed, title)
        crashed(uk)
        restart(uk, SHARE_POINTS[i + 1] if i + 1 < len(SHARE_POINTS) else None)
        consistent(uk, state)
        stored = artifact_titled(uk, title)
        if point == "share.db_committed":  # committed: it must survive and be delivered
            assert len(stored) == 1
            delivered_once(fed, stored[0])
        else:  # not committed: nothing of it remains (the publisher saw the request fail)
            assert stored == []
    # The node works normally afterwards.
    r = share(fed, "crash after")
    assert r.status_code == 201, r.text
    delivered_once(fed, r.json()["id"])
    consistent(uk, state)


@pytest.mark.parametrize("point", RECEIVE_POINTS)
def test_crash_during_receive(fed: Federation, point: str, tmp_path: Path) -> None:
    us = fed.nodes["us-aisi"]
    restart(us, point)
    r = share(fed, f"crash {point}")
    assert r.status_code == 201, r.text
    crashed(us)  # the delivery killed the receiver at its fault point
    restart(us, None)
    delivered_once(fed, r.json()["id"])  # the origin's retry completes it, exactly once
    consistent(us, tmp_path / "us-state.json")
    consistent(fed.nodes["uk-aisi"], tmp_path / "uk-state.json")
