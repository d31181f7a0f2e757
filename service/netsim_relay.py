"""A TCP relay that delays every chunk: one-way latency in userspace, for kernels without netem.

``service/netsim.py`` runs one in each node's network namespace, as a standalone script (it imports
nothing from the project): it listens on the node's address (the one in its URL) and forwards
each connection to the node's server on loopback, holding every chunk, in each direction, for
the one-way delay of the path the connection came by (chosen by the peer's address), plus a
uniform random extra of up to the path's jitter, then writing it; a chunk is never written
before the one ahead of it (a TCP stream keeps its order, so jitter shows as bunching).
The stream keeps its throughput (the wire's: the relay buffers at most ``QUEUE_CHUNKS`` chunks a
direction); an end of stream is forwarded, delayed like data, as a half-close.

A control socket (a Unix socket, line commands) lets the test cut connections:
``reset ADDR`` closes every relayed connection whose peer is ADDR (``*``: all) with a reset,
as a link that fails mid-transfer does; the answer is ``ok N``, N the sockets closed (two a
connection: its peer's and the node's).

What it does not do: model loss (nftables drops packets in the kernel: ``service/netsim.py``), the
TCP handshake's round trip (a connection is accepted at once; its first bytes wait the delay),
or shape bandwidth (``tc tbf`` does).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import json
import os
import random
import signal
import socket
import struct
import sys
import time
from typing import NamedTuple

QUEUE_CHUNKS = 64  # per direction: at most 64 x CHUNK bytes held
CHUNK = 65536  # bytes per read

_EOF = b""
_PR_SET_PDEATHSIG = 1  # linux/prctl.h


class Relay:
    def __init__(
        self,
        target: tuple[str, int],
        delays: dict[str, float],
        default: float,
        jitters: dict[str, float],
        default_jitter: float,
    ) -> None:
        self.target = target
        self.delays = delays  # peer address -> one-way delay, seconds
        self.default = default
        self.jitters = jitters  # peer address -> the most a chunk is held beyond the delay
        self.default_jitter = default_jitter
        self.open: dict[asyncio.StreamWriter, str] = {}  # each side's writer -> peer address

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = str(writer.get_extra_info("peername")[0])
        path = Path(
            self.delays.get(peer, self.default), self.jitters.get(peer, self.default_jitter)
        )
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            _abort(writer)
            return
        self.open[writer] = peer
        self.open[up_writer] = peer
        try:
            await asyncio.gather(_pump(reader, up_writer, path), _pump(up_reader, writer, path))
        finally:
            self.open.pop(writer, None)
            self.open.pop(up_writer, None)
            for w in (writer, up_writer):
                w.close()

    def reset(self, peer: str) -> int:
        doomed = [w for w, p in self.open.items() if peer in ("*", p)]
        for w in doomed:
            _abort(w)
        return len(doomed)

    async def control(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        line = (await reader.readline()).decode().split()
        if len(line) == 2 and line[0] == "reset":
            writer.write(f"ok {self.reset(line[1])}\n".encode())
        else:
            writer.write(b"error: say 'reset ADDR' or 'reset *'\n")
        await writer.drain()
        writer.close()


def _abort(writer: asyncio.StreamWriter) -> None:
    """Close with a reset (SO_LINGER 0), not an orderly end of stream."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class Path(NamedTuple):
    delay: float  # seconds, one way
    jitter: float  # seconds: each chunk waits up to this much more, uniformly

    def due(self, now: float, previous: float) -> float:
        """When a chunk read ``now`` is written: never before the chunk ahead of it."""
        extra = random.uniform(0.0, self.jitter) if self.jitter > 0 else 0.0  # noqa: S311
        return max(previous, now + self.delay + extra)


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: Path) -> None:
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(QUEUE_CHUNKS)

    async def read() -> None:
        due = 0.0
        while True:
            try:
                chunk = await reader.read(CHUNK)
            except OSError:
                chunk = _EOF
            due = path.due(time.monotonic(), due)
            await queue.put((due, chunk))
            if chunk == _EOF:
                return

    async def write() -> None:
        while True:
            due, chunk = await queue.get()
            pause = due - time.monotonic()
            if pause > 0:
                await asyncio.sleep(pause)
            try:
                if chunk == _EOF:
                    if writer.can_write_eof():
                        writer.write_eof()
                    return
                writer.write(chunk)
                await writer.drain()
            except OSError:
                return

    reading = asyncio.ensure_future(read())
    try:
        await write()
    finally:
        reading.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reading


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


async def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--listen", required=True, help="HOST:PORT, the node's URL address")
    parser.add_argument("--target", required=True, help="HOST:PORT, the node's server")
    parser.add_argument("--delays", default="{}", help='JSON {"peer address": milliseconds}')
    parser.add_argument("--default-ms", type=float, default=0.0, help="for any other peer")
    parser.add_argument("--jitters", default="{}", help='JSON {"peer address": milliseconds}')
    parser.add_argument("--default-jitter-ms", type=float, default=0.0, help="any other peer")
    parser.add_argument("--control", required=True, help="path of the control Unix socket")
    parser.add_argument("--parent", type=int, help="end when this process (the test) ends")
    args = parser.parse_args(argv)
    if args.parent is not None:  # Linux PR_SET_PDEATHSIG: SIGTERM when the parent dies
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != args.parent:
            return
    delays = {peer: ms / 1000 for peer, ms in json.loads(args.delays).items()}
    jitters = {peer: ms / 1000 for peer, ms in json.loads(args.jitters).items()}
    relay = Relay(
        _address(args.target), delays, args.default_ms / 1000, jitters,
        args.default_jitter_ms / 1000,
    )  # fmt: skip
    host, port = _address(args.listen)
    server = await asyncio.start_server(relay.handle, host, port, reuse_address=True)
    control = await asyncio.start_unix_server(relay.control, args.control)
    print("ready", flush=True)  # the parent waits for this line
    async with server, control:
        await asyncio.gather(server.serve_forever(), control.serve_forever())


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main(sys.argv[1:]))
