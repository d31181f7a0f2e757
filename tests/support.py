"""Shared test helpers: locating public vectors and external tools.

A test that needs something from outside the project (the public vectors, the ``age`` CLI,
PostgreSQL, Chromium) calls :func:`require`. Outside CI it skips and names what to install; with
``CI`` set it fails, because a CI run that silently skipped interop tests proves nothing.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

ROOT = Path(__file__).resolve().parent.parent
VECTORS = Path(os.environ.get("ENTENTE_VECTORS", ROOT.parent / "shared" / "vectors"))
IN_CI = os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


@contextmanager
def install_lock(folder: Path) -> Iterator[None]:
    """Hold an exclusive lock (``folder`` + ``.lock``, flock) while a test tool is checked and
    installed into ``folder`` of the test cache: test processes run side by side (``./dev test``
    runs pytest-xdist workers), and two installs into one folder would clobber each other."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.with_name(folder.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def require(available: bool, what: str, how: str) -> None:
    """Skip (or, in CI, fail) the calling test unless ``available``."""
    if available:
        return
    message = f"{what} is not available; {how}"
    if IN_CI:
        pytest.fail(f"CI=true and {message}", pytrace=False)
    pytest.skip(message)


def vectors_dir(*parts: str) -> Path:
    """The folder of public vectors (``../shared/vectors``), or skip/fail when it is missing."""
    path = VECTORS.joinpath(*parts)
    require(path.exists(), f"the public vectors at {path}", "check out shared/ beside the project")
    return path


def require_tool(name: str, package: str) -> str:
    path = shutil.which(name)
    require(
        path is not None, f"the {name!r} command", f"install it with: apt-get install {package}"
    )
    assert path is not None
    return path


def json_cases(folder: Path) -> Iterator[tuple[str, Any]]:
    """Every JSON file below ``folder``, sorted, as (relative name, parsed content)."""
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != "LICENSE"):
        yield str(path.relative_to(folder)), json.loads(path.read_text())


def vector_params(*parts: str, pattern: str = "*") -> list[Any]:
    """Parametrize over the files in a vectors folder (pyca's ``json_parametrize`` in spirit).

    Collection must not fail when the folder is missing, so a missing folder yields one param
    that the test turns into a skip (or, in CI, a failure) via :func:`vectors_dir`.
    """
    folder = VECTORS.joinpath(*parts)
    if not folder.is_dir():
        return [pytest.param(None, id="vectors-missing")]
    files = sorted(p for p in folder.rglob(pattern) if p.is_file() and p.name != "LICENSE")
    return [pytest.param(p, id=str(p.relative_to(folder))) for p in files]


def waits_for_a_lock(pg_url: str) -> bool:
    """Whether a session of ``pg_url``'s PostgreSQL database waits for a lock now."""
    engine = sa.create_engine(pg_url)
    try:
        with engine.connect() as conn:
            return bool(
                conn.execute(
                    sa.text(
                        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                        " AND wait_event_type = 'Lock'"
                    )
                ).scalar_one()
            )
    finally:
        engine.dispose()


def start_until_blocked(thread: threading.Thread, pg_url: str, *, timeout: float = 30) -> None:
    """Start ``thread``; return once it is done or a session of ``pg_url``'s database waits for
    a lock (a test interleaving two transactions by hand)."""
    thread.start()
    deadline = time.monotonic() + timeout
    while thread.is_alive() and not waits_for_a_lock(pg_url):
        assert time.monotonic() < deadline, "the thread neither ended nor waited for a lock"
        time.sleep(0.05)
