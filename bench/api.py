"""Benchmark: the institute API on one real node process (SQLite), against bare FastAPI.

Measures, in one run on this machine:

* local shares per second of 4 KiB artifacts through ``POST /v1/artifacts`` (policy check, seal,
  blob write, one transaction), with concurrent clients; target 1,000/s (DESIGN.md section 10);
* the server's peak memory (VmHWM) while a 2 GiB upload streams through it, against its memory
  before the upload; the target is "flat": the growth must not scale with the upload;
* authenticated request rate of ``GET /v1/artifacts?limit=1`` against a bare FastAPI endpoint
  served by uvicorn in the same way (the peer), as a ratio.

Delivery workers are off on the measured node, so the figures are for the local path only
(see bench/sync.py for delivery). Usage::

    python bench/api.py            # 2,000 shares, 2 GiB upload, 5 s of requests
    python bench/api.py --quick    # small sizes: only checks that everything runs
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from service.federation.setup import prepare_federation  # noqa: E402


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _wait(url: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("server exited")
        try:
            if httpx.get(url, timeout=1).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


def _vm_hwm(pid: int) -> int:
    """Peak resident set (bytes) of a process, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def _vm_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def _body(meta: dict[str, Any], content: bytes, boundary: str) -> bytes:
    return (
        f'--{boundary}\r\nContent-Disposition: form-data; name="metadata"\r\n\r\n'.encode()
        + json.dumps(meta).encode()
        + f"\r\n--{boundary}\r\n".encode()
        + b'Content-Disposition: form-data; name="file"; filename="f"\r\n\r\n'
        + content
        + f"\r\n--{boundary}--\r\n".encode()
    )


META = {
    "title": "bench",
    "tlp": "TLP:GREEN",
    "topics": ["evaluation"],
    "purposes": ["evaluation"],
    "partners": ["us-aisi"],
}


async def _shares(url: str, token: str, count: int, concurrency: int) -> float:
    boundary = "bench-" + secrets.token_hex(6)
    headers = {
        "Authorization": f"Bearer {token}",
        "Content-Type": f"multipart/form-data; boundary={boundary}",
    }
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(count):
        queue.put_nowait(i)
    failures = 0

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal failures
        while True:
            try:
                i = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            body = _body(META, i.to_bytes(8, "big") + os.urandom(4088), boundary)
            r = await client.post("/v1/artifacts", content=body, headers=headers)
            if r.status_code != 201:
                failures += 1

    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
        start = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
    if failures:
        raise RuntimeError(f"{failures} shares failed")
    return count / elapsed


async def _requests(url: str, headers: dict[str, str], seconds: float, concurrency: int) -> float:
    done = 0
    stop = time.perf_counter() + seconds

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal done
        while time.perf_counter() < stop:
            r = await client.get(url, headers=headers)
            if r.status_code != 200:
                raise RuntimeError(f"{url}: {r.status_code}")
            done += 1

    async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=concurrency)) as c:
        start = time.perf_counter()
        await asyncio.gather(*(worker(c) for _ in range(concurrency)))
        return done / (time.perf_counter() - start)


def _big_upload(url: str, token: str, size: int, pid: int) -> dict[str, int]:
    boundary = "bench-big"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="metadata"\r\n\r\n'
        f"{json.dumps(META)}\r\n"
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big"\r\n\r\n'
    ).encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    block = os.urandom(1 << 20)
    samples: list[int] = []

    def body() -> Any:
        yield head
        sent = 0
        while sent < size:
            n = min(len(block), size - sent)
            yield block[:n]
            sent += n
            if sent % (64 << 20) == 0:
                samples.append(_vm_rss(pid))
        yield tail

    before = _vm_rss(pid)
    r = httpx.post(
        f"{url}/v1/artifacts",
        content=body(),
        headers={
            "Authorization": f"Bearer {token}",
            "Content-Type": f"multipart/form-data; boundary={boundary}",
            "Content-Length": str(len(head) + size + len(tail)),
        },
        timeout=600,
    )
    if r.status_code != 201:
        raise RuntimeError(f"big upload failed: {r.status_code} {r.text[:200]}")
    return {"rss_before": before, "rss_max_during": max(samples or [0]), "hwm": _vm_hwm(pid)}


BARE = textwrap.dedent(
    """
    from fastapi import FastAPI
    app = FastAPI()

    @app.get("/items")
    def items() -> dict:
        return {"items": [], "next_cursor": None}
    """
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, only checks it runs")
    parser.add_argument("--shares", type=int, default=None)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--upload", type=int, default=None, help="bytes for the big upload")
    parser.add_argument("--seconds", type=float, default=None, help="request-rate duration")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    shares = args.shares or (50 if args.quick else 2000)
    upload = args.upload or ((32 << 20) if args.quick else (2 << 30))
    seconds = args.seconds or (1.0 if args.quick else 5.0)

    with tempfile.TemporaryDirectory(prefix="entente-bench-api-") as tmp:
        root = Path(tmp)
        uk_port = _port()
        prepared = prepare_federation(
            {"uk-aisi": f"http://127.0.0.1:{uk_port}", "us-aisi": "http://127.0.0.1:9"},
            root=root,
            passphrase=None,
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith("ENTENTE_")}
        env.update(ENTENTE_WORKERS_ENABLED="false", ENTENTE_LOG_LEVEL="WARNING")
        env.update(ENTENTE_RATE_LIMIT_PER_MINUTE="100000000")  # measure the node, not its limiter
        url = f"http://127.0.0.1:{uk_port}"
        log = open(root / "uk.log", "wb")  # noqa: SIM115 - closed below
        node = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "serve", "--home", str(root / "uk-aisi"),
             "--port", str(uk_port)],
            env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
        )  # fmt: skip
        bare_port = _port()
        (root / "bare.py").write_text(BARE)
        bare = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "bare:app", "--port", str(bare_port),
             "--log-level", "warning", "--no-access-log"],
            cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            _wait(f"{url}/healthz", node)
            _wait(f"http://127.0.0.1:{bare_port}/items", bare)
            tokens = prepared["uk-aisi"].tokens
            rate = asyncio.run(_shares(url, tokens["publisher"], shares, args.concurrency))
            auth = {"Authorization": f"Bearer {tokens['reader']}"}
            ours = asyncio.run(_requests(f"{url}/v1/artifacts?limit=1", auth, seconds, 8))
            peer = asyncio.run(_requests(f"http://127.0.0.1:{bare_port}/items", {}, seconds, 8))
            memory = _big_upload(url, tokens["publisher"], upload, node.pid)
        finally:
            for proc in (node, bare):
                proc.terminate()
                proc.wait(20)
            log.close()

    mib = 1 << 20
    growth = memory["hwm"] - memory["rss_before"]
    result = {
        "benchmark": "api",
        "quick": args.quick,
        "shares_per_second": round(rate, 1),
        "shares_target": 1000,
        "shares": shares,
        "concurrency": args.concurrency,
        "list_requests_per_second": round(ours, 1),
        "bare_fastapi_requests_per_second": round(peer, 1),
        "request_ratio": round(ours / peer, 3) if peer else None,
        "upload_bytes": upload,
        "server_rss_before_mib": round(memory["rss_before"] / mib, 1),
        "server_peak_rss_mib": round(memory["hwm"] / mib, 1),
        "server_rss_growth_mib": round(growth / mib, 1),
    }
    print(f"local shares (4 KiB, {args.concurrency} clients): {rate:,.0f}/s   (target 1,000/s)")
    print(
        f"GET /v1/artifacts: {ours:,.0f} req/s   bare FastAPI: {peer:,.0f} req/s   "
        f"ratio {result['request_ratio']}"
    )
    print(
        f"{upload / mib:,.0f} MiB upload: server RSS {memory['rss_before'] / mib:.1f} MiB before, "
        f"peak {memory['hwm'] / mib:.1f} MiB (growth {growth / mib:.1f} MiB)"
    )
    line = json.dumps(result, sort_keys=True)
    if args.json is not None:
        args.json.write_text(line + "\n")
    print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
