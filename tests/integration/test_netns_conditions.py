"""The network conditions of ``service/netsim.py`` do what they say, measured from outside:

- loss: datagrams sent across a link with ``loss_percent=30`` arrive at about 70 %, and the
  link's nftables counters account for every one that did not (real drops, in the kernel);
- jitter: round trips through the delaying relay (``service/netsim_relay.py``) with a 20 ms delay
  and 30 ms of jitter each way spread between 40 and 100 ms, while the bytes keep their order.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.localnet import free_port
from tests.netns import RELAY, Link, Star, require_namespaces

pytestmark = [pytest.mark.integration]

DATAGRAMS = 3000
LOSS_PERCENT = 30.0
# The receiver runs inside the lossy node's namespace and prints how many datagrams arrived.
RECEIVER = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], int(sys.argv[2])))
s.settimeout(3)
print("ready", flush=True)
got = 0
try:
    while True:
        s.recv(64)
        got += 1
except TimeoutError:
    pass
print(got, flush=True)
"""


@pytest.fixture
def star(tmp_path: Path) -> Iterator[Star]:
    require_namespaces(loss=True)
    built = Star({"lossy": Link(loss_percent=LOSS_PERCENT), "clean": Link()}, tmp_path)
    try:
        built.up()
        yield built
    finally:
        built.down()


def _datagrams_across(star: Star, node_id: str) -> int:
    """Send DATAGRAMS UDP datagrams from this namespace to ``node_id``; how many arrived."""
    address, port = star.address(node_id), free_port()
    namespace = star.places[node_id].namespace
    receiver = subprocess.Popen(  # a fixed script, no shell
        ["ip", "netns", "exec", namespace, sys.executable, "-c", RECEIVER, address, str(port)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert receiver.stdout is not None
        assert receiver.stdout.readline().strip() == "ready"
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            for i in range(DATAGRAMS):
                sender.sendto(i.to_bytes(4, "big"), (address, port))
                if i % 100 == 99:
                    time.sleep(0.01)  # never overrun the receiver's buffer: only loss may drop
        return int(receiver.stdout.readline())
    finally:
        receiver.kill()
        receiver.wait()
        if receiver.stdout is not None:
            receiver.stdout.close()


def test_a_lossy_link_drops_that_share_of_packets_in_the_kernel(star: Star) -> None:
    got = _datagrams_across(star, "lossy")
    # 3,000 trials at p = 0.7: the standard deviation is 25 datagrams; allow over 6 of them.
    assert abs(got - DATAGRAMS * (1 - LOSS_PERCENT / 100)) < 160, got
    # Each missing datagram was a rule's drop (a few more: the link's own IPv6 neighbour
    # discovery crosses it too, and is lost alike).
    assert DATAGRAMS - got <= star.dropped("lossy") <= DATAGRAMS - got + 20
    assert _datagrams_across(star, "clean") == DATAGRAMS  # the other link loses nothing


def test_the_relay_adds_jitter_and_keeps_the_order(tmp_path: Path) -> None:
    echo_port, relay_port = free_port(), free_port()
    with socket.create_server(("127.0.0.1", echo_port)) as server:

        def echo() -> None:
            conn, _ = server.accept()
            with conn:
                while data := conn.recv(65536):
                    conn.sendall(data)

        threading.Thread(target=echo, daemon=True).start()
        relay = subprocess.Popen(  # our own script, fixed arguments
            [
                sys.executable, str(RELAY), "--listen", f"127.0.0.1:{relay_port}",
                "--target", f"127.0.0.1:{echo_port}", "--default-ms", "20",
                "--default-jitter-ms", "30", "--control", str(tmp_path / "relay.sock"),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        try:
            assert relay.stdout is not None
            assert relay.stdout.readline().strip() == "ready"
            trips: list[float] = []
            with socket.create_connection(("127.0.0.1", relay_port)) as client:
                client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                for i in range(40):
                    started = time.monotonic()
                    client.sendall(i.to_bytes(4, "big"))
                    echoed = b""
                    while len(echoed) < 4:
                        echoed += client.recv(4 - len(echoed))
                    trips.append(time.monotonic() - started)
                    assert int.from_bytes(echoed, "big") == i  # in order
        finally:
            relay.terminate()
            relay.wait()
            if relay.stdout is not None:
                relay.stdout.close()
    # Each way: 20 ms plus up to 30 ms; the round trip: 40 to 100 ms (and scheduling slack).
    assert min(trips) >= 0.040, min(trips)
    assert max(trips) < 0.100 + 0.25, max(trips)
    assert max(trips) - min(trips) > 0.015, trips  # 40 draws of a 60 ms spread
