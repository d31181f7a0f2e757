"""A stand-in for the node (or the witness) that ``entente audit ... --url`` reads: a real socket
answering each path as a test says, the way a hostile node could, and counting the bytes it
managed to send (how much of an endless answer the auditor took in before it hung up)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

Answer = Callable[["Handler"], None]

MiB = 1 << 20


@dataclass
class StandIn:
    url: str
    routes: dict[str, Answer] = field(default_factory=dict)
    sent: int = 0  # body bytes written, all routes together
    asked: list[str] = field(default_factory=list)  # paths, in order


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    state: StandIn


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        self.server.state.asked.append(path)
        answer = self.server.state.routes.get(path) or problem(404, f"no {path} here")
        with suppress(BrokenPipeError, ConnectionResetError):  # the auditor hung up
            answer(self)
        self.close_connection = True

    def head(self, status: int, kind: str, length: int | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        # Said, not only done: a client that thought the connection kept would send its next
        # request into one this server closes ("disconnected without sending a response").
        self.send_header("Connection", "close")
        if length is None:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Content-Length", str(length))
        self.end_headers()

    def write(self, data: bytes) -> None:
        self.wfile.write(data)
        self.wfile.flush()
        self.server.state.sent += len(data)

    def chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode())
        self.write(data)
        self.wfile.write(b"\r\n")
        if not data:
            self.wfile.flush()

    def log_message(self, format: str, *args: object) -> None:
        return


@contextmanager
def stand_in() -> Iterator[StandIn]:
    server = _Server(("127.0.0.1", 0), Handler)
    server.state = StandIn(f"http://127.0.0.1:{server.server_address[1]}")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.state
    finally:
        server.shutdown()
        server.server_close()


def body(data: bytes, status: int = 200, kind: str = "application/json") -> Answer:
    def answer(h: Handler) -> None:
        h.head(status, kind, len(data))
        h.write(data)

    return answer


def as_json(obj: Any, status: int = 200) -> Answer:
    return body(json.dumps(obj).encode(), status)


def problem(status: int, detail: str) -> Answer:
    doc = {"type": "about:blank", "title": "x", "status": status, "detail": detail}
    return body(json.dumps(doc).encode(), status, "application/problem+json")


def chunks(pieces: Iterable[bytes], status: int = 200, *, every: float = 0.0) -> Answer:
    """A chunked answer of ``pieces``, one chunk each, ``every`` seconds apart."""

    def answer(h: Handler) -> None:
        h.head(status, "application/json")
        for piece in pieces:
            h.chunk(piece)
            if every:
                time.sleep(every)
        h.chunk(b"")

    return answer


def endless(prefix: bytes = b"", piece: bytes = b" " * MiB) -> Answer:
    """``prefix``, then ``piece`` again and again until the reader hangs up."""

    def forever() -> Iterator[bytes]:
        yield prefix
        while True:
            yield piece

    return chunks(forever())


def trickle(prefix: bytes, *, seconds: float, every: float, piece: bytes = b" ") -> Answer:
    """``prefix``, then ``piece`` every ``every`` seconds for ``seconds``, then the end."""
    count = int(seconds / every)
    return chunks([prefix, *([piece] * count)], every=every)
