"""A small HTTP/1.1 load generator on raw asyncio streams, for the benchmarks that time a server.

Why not httpx: on this project's 2-core target, an httpx client spends about 2.5 ms of CPU per
request, as much as the server it measures, on the same cores, so the figure would be the
client's. Here a request is prepared bytes written to a keep-alive connection and its answer is
read just far enough to know its status and skip its body (``Content-Length`` or chunked), which
costs a few tens of microseconds. The same generator drives every server compared in a run
(Entente and its bare FastAPI peer), so their ratio is fair.

It is not a general HTTP client: no TLS, no redirects, no HTTP/2, no pipelining (one request in
flight per connection), and only what a benchmark needs of a response.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit

__all__ = ["LoadResult", "request_bytes", "run_load"]


def request_bytes(
    method: str, url: str, *, headers: dict[str, str] | None = None, body: bytes = b""
) -> bytes:
    """One HTTP/1.1 request, ready to write to a keep-alive connection."""
    parts = urlsplit(url)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    lines = [f"{method} {target} HTTP/1.1", f"Host: {parts.netloc}"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    if body or method in ("POST", "PUT", "PATCH"):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


@dataclass
class LoadResult:
    done: int = 0
    seconds: float = 0.0
    statuses: Counter[int] = field(default_factory=Counter)
    first_error: bytes = b""

    @property
    def per_second(self) -> float:
        return self.done / self.seconds if self.seconds else 0.0


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes, bool]:
    """(status, body, keep-alive) of one response."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    length: int | None = None
    chunked = False
    keep = True
    for line in lines[1:]:
        name, _, value = line.partition(":")
        name = name.strip().lower()
        if name == "content-length":
            length = int(value.strip())
        elif name == "transfer-encoding" and "chunked" in value.lower():
            chunked = True
        elif name == "connection" and value.strip().lower() == "close":
            keep = False
    if chunked:
        body = bytearray()
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size:
                body += await reader.readexactly(size)
            await reader.readexactly(2)
            if not size:
                return status, bytes(body), keep
    return status, await reader.readexactly(length or 0), keep


async def run_load(
    url: str | Sequence[str],
    make: Callable[[int], bytes],
    *,
    concurrency: int,
    count: int | None = None,
    seconds: float | None = None,
    expect: frozenset[int] = frozenset({200, 201}),
) -> LoadResult:
    """Send ``make(i)`` for i = 0, 1, ... over ``concurrency`` connections to ``url``'s host,
    until ``count`` requests are done or ``seconds`` have passed.

    Given several URLs (replicas of one server), connection ``j`` goes to ``url[j % len(url)]``
    and keeps it, as a connection-level balancer spreads clients round-robin; every connection
    takes the next request as soon as its previous one is answered, so a faster replica serves
    more of them."""
    if (count is None) == (seconds is None):
        raise ValueError("give count or seconds")
    urls = [url] if isinstance(url, str) else list(url)
    if not urls:
        raise ValueError("give at least one URL")
    targets = []
    for u in urls:
        parts = urlsplit(u)
        targets.append((parts.hostname or "127.0.0.1", parts.port or 80))
    result = LoadResult()
    counter = iter(range(count if count is not None else 1 << 62))
    stop = time.perf_counter() + (seconds or 0.0)

    async def connection(j: int) -> None:
        host, port = targets[j % len(targets)]
        reader, writer = await asyncio.open_connection(host, port)
        try:
            for i in counter:
                if seconds is not None and time.perf_counter() >= stop:
                    return
                writer.write(make(i))
                status, body, keep = await _read_response(reader)
                result.statuses[status] += 1
                if status in expect:
                    result.done += 1
                elif not result.first_error:
                    result.first_error = body[:300]
                if not keep:
                    writer.close()
                    reader, writer = await asyncio.open_connection(host, port)
        finally:
            writer.close()

    start = time.perf_counter()
    await asyncio.gather(*(connection(j) for j in range(concurrency)))
    result.seconds = time.perf_counter() - start
    return result
