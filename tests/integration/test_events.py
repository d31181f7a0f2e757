"""Notice of arrivals between real nodes: ``entente inbox --follow`` on the receiving node sees
every arrival exactly once, across a restart of that node (it resumes from its last event id)."""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.integration.test_federation import upload, wait_for
from tests.nodes import ENTENTE, Federation, base_env, start_federation

pytestmark = pytest.mark.integration

GREEN = {
    "title": "Evaluation method notes",
    "tlp": "TLP:GREEN",
    "topics": ["evaluation"],
    "purposes": ["evaluation"],
    "partners": ["us-aisi"],
}


@pytest.fixture
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    federation = start_federation(
        tmp_path_factory.mktemp("events"),
        ("uk-aisi", "us-aisi"),
        ENTENTE_SYNC_INTERVAL_SECONDS="0.1",
        ENTENTE_RETRY_BASE_SECONDS="0.2",
        ENTENTE_RETRY_MAX_SECONDS="1",
        ENTENTE_CHECKPOINT_INTERVAL_SECONDS="0.2",
        ENTENTE_EVENTS_POLL_SECONDS="0.1",
        ENTENTE_EVENTS_MAX_STREAM_SECONDS="3",
    )
    yield federation
    federation.stop()


def share(fed: Federation, n: int) -> list[str]:
    uk = fed.nodes["uk-aisi"]
    ids = []
    for i in range(n):
        body, headers = upload({**GREEN, "title": f"note {i}"}, f"note {i}".encode())
        r = httpx.post(
            f"{uk.url}/v1/artifacts",
            content=body,
            headers={**headers, **fed.auth("uk-aisi", "publisher")},
        )
        assert r.status_code == 201, r.text
        ids.append(r.json()["id"])
    return ids


def _sigint_default() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class Follower:
    """``entente inbox --follow --json`` in its own process, its lines collected."""

    def __init__(self, fed: Federation) -> None:
        us = fed.nodes["us-aisi"]
        token = fed.auth("us-aisi", "reader")["Authorization"].split()[1]
        env = base_env(ENTENTE_URL=us.url, ENTENTE_TOKEN=token)
        self.proc = subprocess.Popen(
            [ENTENTE, "inbox", "--follow", "--after", "0", "--json"],
            env=env,
            # Ctrl-C as at a terminal: a suite started in the background by a shell without job
            # control inherits SIGINT ignored, and so would the follower (it then never stopped)
            preexec_fn=_sigint_default,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.events: list[dict[str, Any]] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.events.append(json.loads(line))

    def arrived(self) -> list[str]:
        return [e["artifact"]["id"] for e in list(self.events) if e["event"] == "arrived"]

    def stop(self) -> tuple[int, str]:
        self.proc.send_signal(signal.SIGINT)
        try:
            _out, err = self.proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _out, err = self.proc.communicate()
        self._reader.join(timeout=5)
        return self.proc.returncode, err


def test_a_follower_sees_every_arrival_once_across_a_restart(fed: Federation) -> None:
    follower = Follower(fed)
    try:
        before = share(fed, 3)
        wait_for(lambda: len(follower.arrived()) >= 3, timeout=60, what="the first arrivals")
        us = fed.nodes["us-aisi"]
        us.stop()
        during = share(fed, 2)  # queued at the UK while the US is down
        us.start()
        after = share(fed, 1)
        wait_for(lambda: len(follower.arrived()) >= 6, timeout=90, what="the later arrivals")
        time.sleep(3.5)  # past one more stream lifetime: a reconnect must repeat nothing
    finally:
        code, err = follower.stop()
    got = follower.arrived()
    assert sorted(got) == sorted(before + during + after)
    assert len(got) == len(set(got)) == 6
    assert got[:3] == before
    ids = [int(e["id"]) for e in follower.events]
    assert ids == sorted(ids) and len(ids) == len(set(ids))
    assert "reconnecting" in err  # the restart dropped the stream
    assert code == 0 and "stopped" in err
