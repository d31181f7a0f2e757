"""``entente demo --keep`` never leaves node processes behind: stopped with SIGTERM it stops its
three nodes and cleans up; killed outright (SIGKILL, which it cannot handle) its nodes still end,
because the kernel signals them when their parent dies (PR_SET_PDEATHSIG)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.nodes import ENTENTE, alive, base_env

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(sys.platform != "linux", reason="PR_SET_PDEATHSIG is Linux's"),
]


def _children(pid: int) -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid:
            found.add(int(entry.name))
    return found


def _wait_until(check: Any, what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _start_demo(tmp_path: Path) -> tuple[subprocess.Popen[str], dict[str, Any], set[int]]:
    env = base_env(TMPDIR=str(tmp_path))
    with open(tmp_path / "demo.err", "w") as log:  # the child keeps its own descriptor
        demo = subprocess.Popen(
            [ENTENTE, "demo", "--keep", "--json"], stdout=subprocess.PIPE, stderr=log,
            text=True, env=env,
        )  # fmt: skip
    assert demo.stdout is not None
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(demo.stdout), daemon=True)  # type: ignore[arg-type]
    reader.start()
    try:
        _wait_until(lambda: lines or demo.poll() is not None, "the demo's JSON line", 300)
    except AssertionError:
        demo.kill()
        raise
    assert lines, (tmp_path / "demo.err").read_text()[-3000:]
    summary = json.loads(lines[-1])
    nodes = _children(demo.pid)
    return demo, summary, nodes


def _stop_all(demo: subprocess.Popen[str], nodes: set[int]) -> None:
    """Whatever a test's outcome, leave nothing running (these are the test's own processes)."""
    if demo.poll() is None:
        demo.kill()
        demo.wait(30)
    if demo.stdout is not None:
        demo.stdout.close()
    for pid in nodes:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


def _assert_all_gone(summary: dict[str, Any], nodes: set[int]) -> None:
    _wait_until(lambda: not any(alive(p) for p in nodes), "the node processes to end", 60)
    for node in summary["nodes"]:
        with pytest.raises(httpx.HTTPError):
            httpx.get(node["url"] + "/healthz", timeout=2)


def test_sigterm_stops_the_demos_nodes(tmp_path: Path) -> None:
    demo, summary, nodes = _start_demo(tmp_path)
    try:
        assert len(nodes) == 3, nodes
        for node in summary["nodes"]:
            assert httpx.get(node["url"] + "/healthz", timeout=5).status_code == 200
        demo.send_signal(signal.SIGTERM)
        assert demo.wait(60) == 0
        _assert_all_gone(summary, nodes)
        assert not any(Path(n["home"]).exists() for n in summary["nodes"]), "homes removed"
    finally:
        _stop_all(demo, nodes)


def test_sigkill_of_the_demo_still_ends_its_nodes(tmp_path: Path) -> None:
    demo, summary, nodes = _start_demo(tmp_path)
    try:
        assert len(nodes) == 3, nodes
        demo.kill()
        demo.wait(60)
        _assert_all_gone(summary, nodes)
    finally:
        _stop_all(demo, nodes)
