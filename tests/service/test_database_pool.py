"""The node's PostgreSQL pool follows ``ENTENTE_DATABASE_POOL_SIZE``: a busy node reuses its
connections instead of opening one per burst (each one a process the server forks)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from threading import Barrier

import pytest
import sqlalchemy as sa

from service.node import load_node
from tests.service.nodekit import make_node

pytestmark = pytest.mark.postgres


def _sessions(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        conn.execute(sa.text("SELECT pg_stat_force_next_flush()"))
        return int(
            conn.execute(
                sa.text("SELECT sessions FROM pg_stat_database WHERE datname = current_database()")
            ).scalar_one()
        )


def test_a_burst_within_the_pool_opens_no_connection_twice(tmp_path: Path, pg_url: str) -> None:
    made = make_node(tmp_path, "uk-aisi", db_url=pg_url)  # the home, the database migrated
    node = load_node(made.node.settings.model_copy(update={"database_pool_size": 12}))
    engine = node.db.engine
    assert engine.pool.size() == 12  # type: ignore[attr-defined]
    together = Barrier(12)

    def hold() -> None:
        with engine.connect() as conn:
            together.wait(timeout=30)  # twelve connections checked out at once
            conn.execute(sa.text("SELECT 1"))

    def burst() -> None:
        with ThreadPoolExecutor(12) as pool:
            for f in [pool.submit(hold) for _ in range(12)]:
                f.result()

    burst()  # the pool fills
    before = _sessions(engine)
    for _ in range(5):
        burst()
    try:
        assert _sessions(engine) - before <= 1  # the counting query's own, at most
    finally:
        engine.dispose()
