"""H2 with real sockets against a real ``entente serve``: 500 slow connections (uploads and
federation deliveries, each past its first block and then trickling a byte a second) while
``/healthz``, a share and an audit read still answer; and a request head that trickles ends in
a 408 problem document.

Found: 41 such uploads (or deliveries from one partner) took every worker thread and the whole
node stopped answering. The in-flight limit per token and partner is raised here so that every
slow connection reaches its body: what is shown is that a waiting body holds no thread (the
limit itself is shown in ``test_h2_slow_bodies.py``). The ``/healthz`` latencies during the
attack are printed (figures, not assertions).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import socket
import statistics
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from service.federation.signing import digest_value, sign_request_headers
from service.node import load_node
from service.settings import Settings
from tests.hardening.kit import DELIVERY_TYPE, meta
from tests.nodes import PASSPHRASE, Federation, NodeProcess, start_federation
from tests.service.nodekit import UPLOAD_HEADERS, upload_body

pytestmark = pytest.mark.integration

SLOW = 500  # connections: half uploads, half deliveries
FIRST = 128 << 10  # bytes each sends at once: past the node's first block (64 KiB)
DECLARED = 8 << 20  # bytes each says it will send
DEADLINE = 60.0  # seconds for any one answer during the attack: generous


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    federation = start_federation(
        tmp_path_factory.mktemp("h2-slow"),
        ("uk-aisi", "us-aisi"),
        ENTENTE_WORKERS_ENABLED="false",
        ENTENTE_UPLOAD_PREFETCH_BYTES=str(64 << 10),
        ENTENTE_MAX_REQUESTS_IN_FLIGHT="10000",
        ENTENTE_RATE_LIMIT_PER_MINUTE="100000",
        ENTENTE_REQUEST_BODY_MIN_RATE="0",  # let them trickle for the whole attack
        ENTENTE_REQUEST_BODY_IDLE_SECONDS="300",
        ENTENTE_REQUEST_HEAD_TIMEOUT_SECONDS="2",
    )
    yield federation
    federation.stop()


def _upload_head(fed: Federation) -> bytes:
    token = fed.tokens["uk-aisi"]["publisher"]
    return (
        "POST /v1/artifacts HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: Bearer {token}\r\nContent-Type: {UPLOAD_HEADERS['Content-Type']}\r\n"
        f"Content-Length: {DECLARED}\r\n\r\n"
    ).encode()


def _delivery_heads(fed: Federation, us_home: Path, uk: NodeProcess, n: int) -> list[bytes]:
    """``n`` request heads correctly signed by us-aisi (each its own nonce)."""
    settings = Settings(home=us_home, passphrase=PASSPHRASE, scrypt_work_factor=10)  # type: ignore[arg-type]
    us = load_node(settings, migrate=False)
    digest = digest_value(hashlib.sha256(b"x" * DECLARED).digest())
    heads = []
    try:
        for _ in range(n):
            headers = {"Content-Type": DELIVERY_TYPE}
            headers.update(
                sign_request_headers(
                    us, method="POST", url=f"{uk.url}/federation/v1/inbox", headers=headers,
                    content_digest=digest,
                )
            )  # fmt: skip
            lines = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
            heads.append(
                (
                    "POST /federation/v1/inbox HTTP/1.1\r\nHost: x\r\n"
                    f"{lines}Content-Length: {DECLARED}\r\n\r\n"
                ).encode()
            )
    finally:
        us.db.dispose()
    return heads


class Attack:
    """``heads`` connections on a thread of their own: each sends its head and ``FIRST`` bytes,
    then one byte a second until stopped."""

    def __init__(self, port: int, heads: list[bytes]) -> None:
        self.port = port
        self.heads = heads
        self.open = 0
        self.ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    async def _one(self, head: bytes, writers: list[asyncio.StreamWriter]) -> None:
        _reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        writers.append(writer)
        writer.write(head + b"x" * FIRST)
        await writer.drain()
        self.open += 1

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        writers: list[asyncio.StreamWriter] = []
        await asyncio.gather(*(self._one(h, writers) for h in self.heads))
        self.ready.set()
        while not self._stop.is_set():
            for w in writers:
                if not w.is_closing():
                    w.write(b"x")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), 1.0)
        for w in writers:
            w.close()

    def __enter__(self) -> Attack:
        self._thread.start()
        if not self.ready.wait(DEADLINE):
            raise AssertionError(f"only {self.open} of {len(self.heads)} connections opened")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(DEADLINE)


def test_500_slow_connections_do_not_starve_the_node(fed: Federation) -> None:
    uk = fed.nodes["uk-aisi"]
    us_home = fed.nodes["us-aisi"].home
    half = SLOW // 2
    heads = [_upload_head(fed)] * half + _delivery_heads(fed, us_home, uk, SLOW - half)
    latencies: list[float] = []
    with Attack(uk.port, heads) as attack, httpx.Client(base_url=uk.url, timeout=DEADLINE) as c:
        assert attack.open == SLOW
        for _ in range(100):
            started = time.perf_counter()
            r = c.get("/healthz")
            latencies.append(time.perf_counter() - started)
            assert r.status_code == 200, r.text
        r = c.post(
            "/v1/artifacts",
            content=upload_body(meta(), b"shared during the attack " * 40_000),
            headers={**UPLOAD_HEADERS, **fed.auth("uk-aisi", "publisher")},
        )
        assert r.status_code == 201, r.text
        r = c.get("/audit/v1/entries", headers=fed.auth("uk-aisi", "auditor"))
        assert r.status_code == 200, r.text
        assert "tree_size" in r.json(), r.json()
        r = c.get("/ui/login")
        assert r.status_code == 200
    first = latencies[0]
    latencies.sort()
    figures = {
        "slow_connections": SLOW,
        "healthz_first_ms": round(first * 1000, 1),  # while the node still takes the heads in
        "healthz_p50_ms": round(statistics.median(latencies) * 1000, 1),
        "healthz_p99_ms": round(latencies[int(len(latencies) * 0.99) - 1] * 1000, 1),
        "healthz_max_ms": round(latencies[-1] * 1000, 1),
    }
    print("H2 slow connections:", json.dumps(figures))


def test_a_trickling_request_head_ends_in_408(fed: Federation) -> None:
    uk = fed.nodes["uk-aisi"]
    with socket.create_connection(("127.0.0.1", uk.port), timeout=DEADLINE) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHo")
        answer = b""
        while True:
            data = s.recv(65536)
            if not data:
                break
            answer += data
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 "), answer
    assert b"application/problem+json" in head
    doc = json.loads(body)
    assert doc["type"] == "urn:entente:problem:request-timeout", doc
    assert "ENTENTE_REQUEST_HEAD_TIMEOUT_SECONDS" in doc["detail"]
    assert httpx.get(f"{uk.url}/healthz").status_code == 200
