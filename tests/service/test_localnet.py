"""service/localnet.py without real nodes: stand-in processes (a Python one-liner in place of
``entente serve``) show how a start fails, that a failed federation start leaves nothing
running, and that a node dies with the process that started it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from service import localnet
from service.errors import NodeProcessError
from service.localnet import RECENT_PORTS, Federation, NodeProcess, free_port
from tests.nodes import alive

EXITS = (sys.executable, "-c", "import sys; print('cannot open the home'); sys.exit(3)")
WAITS = (sys.executable, "-c", "import time; time.sleep(600)")  # never answers /healthz


def test_a_node_that_exits_is_one_line_with_its_log_for_the_report(tmp_path: Path) -> None:
    node = NodeProcess(tmp_path / "uk-aisi", "uk-aisi", command=EXITS)
    with pytest.raises(NodeProcessError) as raised:
        node.start(timeout=60)
    error = raised.value
    assert error.message == (
        f"uk-aisi (entente serve) exited with code 3; see {tmp_path / 'uk-aisi.log'}"
    )
    assert "cannot open the home" in error.log_tail
    assert str(error) == f"{error.message}\n{error.log_tail}"
    node.stop()


def test_a_node_that_never_answers_is_stopped_at_the_deadline(tmp_path: Path) -> None:
    node = NodeProcess(tmp_path / "uk-aisi", "uk-aisi", command=WAITS)
    with pytest.raises(NodeProcessError, match=r"did not answer .*/healthz within 1 s"):
        node.start(timeout=1)
    assert node.stop() != 0  # still running until stopped (SIGTERM)
    assert node.proc is None


def test_a_failed_federation_start_stops_every_node(tmp_path: Path) -> None:
    failing = NodeProcess(tmp_path / "ca-aisi", "ca-aisi", command=EXITS)
    waiting = NodeProcess(tmp_path / "uk-aisi", "uk-aisi", command=WAITS)
    federation = Federation({"ca-aisi": failing, "uk-aisi": waiting})
    with pytest.raises(NodeProcessError, match="ca-aisi"):
        federation.start(timeout=60)
    assert failing.proc is None and waiting.proc is None


# Answers /healthz as the node whose home it is given, on the port it is given, as `serve` does.
ANSWERS = (
    sys.executable, "-c", textwrap.dedent("""
        import json, sys
        from http.server import BaseHTTPRequestHandler, HTTPServer
        from pathlib import Path
        arg = lambda name: sys.argv[sys.argv.index(name) + 1]
        home, port = Path(arg("--home")), int(arg("--port"))
        class Health(BaseHTTPRequestHandler):
            def do_GET(self):
                body = json.dumps({"status": "ok", "node_id": home.name}).encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
        HTTPServer(("127.0.0.1", port), Health).serve_forever()
    """),
)  # fmt: skip


def test_a_node_whose_port_another_node_answers_on_does_not_pass_as_started(
    tmp_path: Path,
) -> None:
    """Two nodes given one port: the second cannot listen, and the first's /healthz answered at
    the second's URL must not pass for the second's (every request would reach the wrong node:
    "unknown bearer token")."""
    first = NodeProcess(tmp_path / "ca-aisi", "ca-aisi", command=ANSWERS)
    second = NodeProcess(tmp_path / "uk-aisi", "uk-aisi", port=first.port, command=WAITS)
    try:
        first.start(timeout=60)
        with pytest.raises(NodeProcessError, match=r"answered as 'ca-aisi', not 'uk-aisi'"):
            second.start(timeout=60)
    finally:
        second.stop()
        first.stop()


def test_no_port_is_handed_out_twice_among_the_recent_ones() -> None:
    """The kernel's free port for bind(0) repeats (in about one network of five in 2,000):
    two nodes of one network must never be given the same port."""
    ports = [free_port() for _ in range(RECENT_PORTS)]
    assert len(set(ports)) == len(ports)


def test_processes_started_together_never_hand_out_the_same_port(tmp_path: Path) -> None:
    """The test suite's workers (and a demo beside them) are separate processes: each may be
    given, by the kernel, a port another has just handed out and not yet listened on. (Three
    takers of 300: within the RECENT_PORTS that the shared file keeps.)"""
    ports_file = tmp_path / "ports"
    script = textwrap.dedent(
        f"""
        import sys
        from pathlib import Path
        from service import localnet
        localnet.PORTS_FILE = Path({str(ports_file)!r})
        sys.stdin.readline()  # start together
        print(" ".join(str(localnet.free_port()) for _ in range(300)))
        """
    )
    command = [sys.executable, "-c", script]
    pipes = {"stdin": subprocess.PIPE, "stdout": subprocess.PIPE, "text": True}
    takers = [subprocess.Popen(command, **pipes) for _ in range(3)]
    for taker in takers:
        assert taker.stdin is not None
        taker.stdin.write("go\n")
        taker.stdin.flush()
    handed = [set(map(int, taker.communicate(timeout=120)[0].split())) for taker in takers]
    assert [len(ports) for ports in handed] == [300, 300, 300]
    assert handed[0].isdisjoint(handed[1] | handed[2]) and handed[1].isdisjoint(handed[2])


def test_a_damaged_or_unusable_ports_file_does_not_stop_a_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ports_file = tmp_path / "ports"
    ports_file.write_bytes(b"12345 not-a-time\n\xff\xfe\n99999999999999999999 1\n4")
    monkeypatch.setattr(localnet, "PORTS_FILE", ports_file)
    port = free_port()
    assert ports_file.read_text().split()[0] == str(port)  # the damaged lines dropped
    monkeypatch.setattr(localnet, "PORTS_FILE", tmp_path / "no-such-folder" / "ports")
    assert free_port() != port  # this process's own list still applies


@pytest.mark.timeout(60)
@pytest.mark.skipif(sys.platform != "linux", reason="reads Linux's ephemeral port range")
def test_a_ports_file_listing_every_port_cannot_stall_a_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only the newest RECENT_PORTS of the file count, however many it lists (here every port
    the kernel hands out for bind(0), which would otherwise leave none)."""
    low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    ports_file = tmp_path / "ports"
    now = time.time()
    ports_file.write_text("".join(f"{p} {now}\n" for p in range(low, high + 1)))
    monkeypatch.setattr(localnet, "PORTS_FILE", ports_file)
    assert low <= free_port() <= high
    assert len(ports_file.read_text().splitlines()) == localnet.RECENT_PORTS


@pytest.mark.skipif(sys.platform != "linux", reason="PR_SET_PDEATHSIG is Linux's")
def test_a_node_dies_with_the_process_that_started_it(tmp_path: Path) -> None:
    parent_script = textwrap.dedent(
        f"""
        import sys, time
        from pathlib import Path
        from service.localnet import NodeProcess
        node = NodeProcess(Path({str(tmp_path / "uk-aisi")!r}), "uk-aisi", command={WAITS!r})
        node.spawn()
        print(node.pid, flush=True)
        time.sleep(600)
        """
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", parent_script], stdout=subprocess.PIPE, text=True
    )
    node_pid = 0
    try:
        assert parent.stdout is not None
        node_pid = int(parent.stdout.readline())
        assert alive(node_pid)
        parent.kill()  # SIGKILL: the parent cannot stop its node itself
        parent.wait(30)
        deadline = time.monotonic() + 60
        while alive(node_pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not alive(node_pid)
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait(30)
        if parent.stdout is not None:
            parent.stdout.close()
        if node_pid and alive(node_pid):  # this test's own stand-in, if the check failed
            os.kill(node_pid, signal.SIGKILL)
