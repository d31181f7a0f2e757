"""A second ``entente serve`` on a home that a running node serves is refused with one line
(on SQLite a node runs in one process; ``--workers N`` is how it gets more), while replicas on
PostgreSQL start and say that they join as a replica. The SQLite database and its WAL and
shared-memory files are private to the node's user (0600), like the key files."""

from __future__ import annotations

import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.hardening.kit import postgres_database
from tests.nodes import ENTENTE, NodeProcess, base_env, free_port, run_cli

pytestmark = pytest.mark.integration


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def node(tmp_path: Path) -> Iterator[NodeProcess]:
    n = NodeProcess(tmp_path / "uk-aisi", "uk-aisi")
    n.init()
    n.start()
    try:
        yield n
    finally:
        n.stop()


def test_a_second_serve_on_a_served_sqlite_home_is_refused(node: NodeProcess) -> None:
    port = free_port()
    second = run_cli("serve", "--home", str(node.home), "--port", str(port), timeout=60)
    assert second.returncode != 0
    err = second.stderr.strip()
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1, err
    assert err.startswith("entente: ")
    assert "already served" in err and str(node.proc.pid) in err  # type: ignore[union-attr]
    assert "--workers" in err
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
    assert httpx.get(f"{node.url}/healthz", timeout=5).status_code == 200


def test_the_home_is_free_again_once_the_node_stops(node: NodeProcess) -> None:
    assert node.stop() == 0
    node.start()
    assert httpx.get(f"{node.url}/healthz", timeout=5).status_code == 200


def test_the_sqlite_files_are_private(node: NodeProcess) -> None:
    db = node.home / "entente.db"
    files = [db, db.with_name("entente.db-wal"), db.with_name("entente.db-shm")]
    assert all(p.exists() for p in files), [p.name for p in node.home.iterdir()]
    assert {p.name: _mode(p) for p in files} == {p.name: 0o600 for p in files}


def test_an_existing_world_readable_database_is_made_private(tmp_path: Path) -> None:
    node = NodeProcess(tmp_path / "uk-aisi", "uk-aisi")
    node.init()
    db = node.home / "entente.db"
    os.chmod(db, 0o644)  # as homes created before this fix have it
    assert node.cli("db", "status").returncode == 0
    assert _mode(db) == 0o600


def test_replicas_on_postgresql_start_and_say_so(tmp_path: Path) -> None:
    with postgres_database() as pg_url:
        env = base_env(ENTENTE_DATABASE_URL=pg_url)
        first = NodeProcess(tmp_path / "uk-aisi", "uk-aisi", env=env)
        first.init()
        second = NodeProcess(tmp_path / "uk-aisi", "uk-aisi", env=env)
        second.log_path = tmp_path / "uk-aisi-b.log"
        first.start()
        try:
            second.start()
            assert httpx.get(f"{second.url}/healthz", timeout=5).status_code == 200
            second.stop()
            assert second.log_path is not None
            log = second.log_path.read_text()
            assert "replica" in log and str(first.proc.pid) in log  # type: ignore[union-attr]
        finally:
            second.stop()
            first.stop()


def test_serve_of_a_missing_home_is_one_line(tmp_path: Path) -> None:
    result = subprocess.run(
        [ENTENTE, "serve", "--home", str(tmp_path / "nothing"), "--port", str(free_port())],
        env=base_env(), capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode != 0
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "not a node home" in result.stderr


def test_serve_with_workers_is_one_claim_and_still_serves(tmp_path: Path) -> None:
    node = NodeProcess(tmp_path / "uk-aisi", "uk-aisi", env=base_env(ENTENTE_WORKERS="2"))
    node.init()
    node.start(timeout=90)
    try:
        for _ in range(4):  # whichever worker process answers
            assert httpx.get(f"{node.url}/healthz", timeout=5).status_code == 200
        second = run_cli("serve", "--home", str(node.home), "--port", str(free_port()))
        assert second.returncode != 0
        assert "already served" in second.stderr
    finally:
        assert node.stop() == 0
