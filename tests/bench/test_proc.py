"""bench/_proc.py's count of established TCP connections, against real sockets of this process
(Linux ``/proc``): a connected pair counts two (its two ends are both ours), a listening or an
unconnected socket counts nothing, a closed pair is gone, and IPv6 counts as IPv4 does."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import pytest

from bench._proc import established_tcp

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


@contextmanager
def _pair(family: socket.AddressFamily, host: str) -> Iterator[socket.socket]:
    """A listening socket on ``host`` and a connection to it, accepted: yields the listener."""
    with ExitStack() as stack:
        listener = stack.enter_context(socket.socket(family, socket.SOCK_STREAM))
        listener.bind((host, 0))
        listener.listen()
        client = stack.enter_context(socket.create_connection(listener.getsockname()[:2]))
        accepted, _ = listener.accept()
        stack.enter_context(accepted)
        assert client.getpeername() == accepted.getsockname()
        yield listener


def test_a_connected_pair_counts_both_its_ends() -> None:
    me = [os.getpid()]
    before = established_tcp(me)
    with _pair(socket.AF_INET, "127.0.0.1"):
        assert established_tcp(me) == before + 2
        with _pair(socket.AF_INET, "127.0.0.1"):
            assert established_tcp(me) == before + 4
        assert established_tcp(me) == before + 2
    assert established_tcp(me) == before


def test_listening_and_unconnected_sockets_do_not_count() -> None:
    me = [os.getpid()]
    before = established_tcp(me)
    with (
        socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener,
        socket.socket(socket.AF_INET, socket.SOCK_STREAM) as unconnected,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp,
    ):
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        udp.connect(listener.getsockname())  # a "connected" UDP socket is no TCP connection
        assert unconnected.fileno() >= 0
        assert established_tcp(me) == before


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback here")
def test_ipv6_connections_count() -> None:
    me = [os.getpid()]
    before = established_tcp(me)
    with _pair(socket.AF_INET6, "::1"):
        assert established_tcp(me) == before + 2
    assert established_tcp(me) == before


def test_only_the_given_processes_sockets_count() -> None:
    """A child process reads the same connection tables (one namespace) but holds none of our
    sockets; a process that is gone holds nothing."""
    with (
        _pair(socket.AF_INET, "127.0.0.1"),
        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]) as child,
    ):
        try:
            assert established_tcp([os.getpid()]) >= 2
            assert established_tcp([child.pid]) == 0
        finally:
            child.kill()
    assert established_tcp([child.pid]) == 0  # reaped
    assert established_tcp([]) == 0
