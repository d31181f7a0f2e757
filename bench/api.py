"""Benchmark: the institute API on one real node process (SQLite), against bare FastAPI.

Measures, in one run on this machine:

* local shares per second of 4 KiB artifacts through ``POST /v1/artifacts`` (policy check, seal,
  blob write, one transaction), with concurrent clients; target 1,000/s (DESIGN.md section 10);
* the same uploads to a bare FastAPI endpoint that only parses the multipart body and writes the
  file (no policy, no crypto, no database, no fsync): the floor of a share on this stack;
* the server's peak memory (VmHWM) while a 2 GiB upload streams through it, against its memory
  before the upload; the target is "flat": the growth must not scale with the upload;
* authenticated request rate of ``GET /v1/artifacts?limit=1`` against a bare FastAPI endpoint
  served by uvicorn in the same way (the peer), as a ratio.

Delivery workers are off on the measured node, so the figures are for the local path only
(see bench/sync.py for delivery). Both servers run ``--workers`` processes (default: one per
core), and both are driven by the same raw-socket load generator (``bench/_load.py``: an httpx
client would spend as much CPU per request as the server it measures). Usage::

    python bench/api.py            # 2,000 shares, 2 GiB upload, 5 s of requests
    python bench/api.py --quick    # small sizes: only checks that everything runs
    python bench/api.py --workers 1 --shares 5000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._load import request_bytes, run_load  # noqa: E402
from bench._proc import cpu_seconds, peak_rss, reset_peaks, rss, tree  # noqa: E402
from service.localnet import (  # noqa: E402
    NodeProcess,
    clean_env,
    free_port,
    prepare_nodes,
    wait_until_answering,
)


def start_node(root: Path, workers: int, *, classic_only: bool = False) -> NodeProcess:
    """Start ``uk-aisi`` (SQLite home under ``root``, pinned to a ``us-aisi`` that never runs,
    delivery off, its rate limiter out of the way: the benchmarks measure the node, not its
    limiter) with ``workers`` processes, and wait until it answers. The caller stops it."""
    federation = prepare_nodes(
        root,
        ("uk-aisi", "us-aisi"),
        env=clean_env(
            ENTENTE_WORKERS_ENABLED="false",
            ENTENTE_LOG_LEVEL="WARNING",
            ENTENTE_RATE_LIMIT_PER_MINUTE="100000000",
            ENTENTE_WORKERS=str(workers),
        ),
        classic_only=("uk-aisi", "us-aisi") if classic_only else (),
    )
    node = federation.nodes["uk-aisi"]
    node.start()
    return node


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


def _shares(url: str, token: str, count: int, concurrency: int) -> float:
    return _uploads(f"{url}/v1/artifacts", {"Authorization": f"Bearer {token}"}, count, concurrency)


def _uploads(target: str, headers: dict[str, str], count: int, concurrency: int) -> float:
    """POST ``count`` 4 KiB multipart uploads (metadata part, then file part) to ``target``."""
    boundary = "bench-" + secrets.token_hex(6)
    headers = {**headers, "Content-Type": f"multipart/form-data; boundary={boundary}"}

    def make(i: int) -> bytes:
        body = _body(META, i.to_bytes(8, "big") + os.urandom(4088), boundary)
        return request_bytes("POST", target, headers=headers, body=body)

    result = asyncio.run(run_load(target, make, concurrency=concurrency, count=count))
    if result.done != count:
        raise RuntimeError(
            f"{count - result.done} uploads failed: {dict(result.statuses)} "
            f"{result.first_error[:200]!r}"
        )
    return result.per_second


def _requests(
    url: str, headers: dict[str, str], seconds: float, concurrency: int
) -> tuple[float, int]:
    """(requests per second, requests done)."""
    request = request_bytes("GET", url, headers=headers)
    result = asyncio.run(run_load(url, lambda _: request, concurrency=concurrency, seconds=seconds))
    if result.done != sum(result.statuses.values()):
        raise RuntimeError(f"{url}: {dict(result.statuses)} {result.first_error[:200]!r}")
    return result.per_second, result.done


def _big_upload(url: str, token: str, size: int, pid: int) -> dict[str, Any]:
    boundary = "bench-big"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="metadata"\r\n\r\n'
        f"{json.dumps(META)}\r\n"
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big"\r\n\r\n'
    ).encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    block = os.urandom(1 << 20)
    pids = tree(pid)

    def body() -> Any:
        yield head
        sent = 0
        while sent < size:
            n = min(len(block), size - sent)
            yield block[:n]
            sent += n
        yield tail

    before = {p: rss(p) for p in pids}
    reset_peaks(pids)
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
    # the process that took the upload is the one whose peak grew most
    growth = {p: peak_rss(p) - before[p] for p in pids}
    busiest = max(growth, key=lambda p: growth[p])
    return {"rss_before": before[busiest], "hwm": peak_rss(busiest), "processes": len(pids)}


BARE = textwrap.dedent(
    """
    import os
    import secrets
    import socket
    import sys

    import uvicorn
    from fastapi import FastAPI, Request
    from uvicorn.protocols.http.h11_impl import H11Protocol

    app = FastAPI()

    @app.get("/items")
    def items() -> dict:
        return {"items": [], "next_cursor": None}

    @app.post("/upload", status_code=201)
    async def upload(request: Request) -> dict:
        # the floor of a share on this stack: parse the multipart body, write the file
        form = await request.form()
        data = await form["file"].read()
        with open(os.path.join("uploads", secrets.token_hex(16)), "wb") as out:
            out.write(data)
        return {"size": len(data), "metadata": len(form["metadata"])}

    class NoDelay(H11Protocol):  # as Entente's ServerProtocol: see service/api/server.py
        def connection_made(self, transport):
            sock = transport.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            super().connection_made(transport)

    if __name__ == "__main__":
        uvicorn.run("bare:app", port=int(sys.argv[1]), workers=int(sys.argv[2]),
                    http="bare:NoDelay", log_level="warning", access_log=False)
    """
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, only checks it runs")
    parser.add_argument("--shares", type=int, default=None)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--upload", type=int, default=None, help="bytes for the big upload")
    parser.add_argument("--seconds", type=float, default=None, help="request-rate duration")
    parser.add_argument(
        "--workers", type=int, default=os.cpu_count() or 1, help="server processes (each server)"
    )
    parser.add_argument(
        "--classic-only", action="store_true", help="a node without post-quantum keys"
    )
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    shares = args.shares or (20 if args.quick else 2000)
    upload = args.upload or ((8 << 20) if args.quick else (2 << 30))
    seconds = args.seconds or (0.3 if args.quick else 5.0)
    warm = min(seconds, 0.5)  # the request-rate warm-up

    with tempfile.TemporaryDirectory(prefix="entente-bench-api-") as tmp:
        root = Path(tmp)
        bare_port = free_port()
        (root / "bare.py").write_text(BARE)
        (root / "uploads").mkdir()
        bare = subprocess.Popen(
            [sys.executable, "bare.py", str(bare_port), str(args.workers)],
            cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        node: NodeProcess | None = None
        try:
            node = start_node(root, args.workers, classic_only=args.classic_only)
            url, tokens = node.url, node.tokens
            wait_until_answering(f"http://127.0.0.1:{bare_port}/items", bare, what="bare FastAPI")
            _shares(url, tokens["publisher"], min(shares, 100), args.concurrency)  # warm up
            servers = tree(node.pid)
            cpu = cpu_seconds(servers)
            rate = _shares(url, tokens["publisher"], shares, args.concurrency)
            share_cpu = cpu_seconds(servers) - cpu
            bare_servers = tree(bare.pid)
            bare_upload = f"http://127.0.0.1:{bare_port}/upload"
            _uploads(bare_upload, {}, min(shares, 100), args.concurrency)  # warm up
            cpu = cpu_seconds(bare_servers)
            bare_rate = _uploads(bare_upload, {}, shares, args.concurrency)
            bare_share_cpu = cpu_seconds(bare_servers) - cpu
            auth = node.auth("reader")
            _requests(f"{url}/v1/artifacts?limit=1", auth, warm, 8)
            _requests(f"http://127.0.0.1:{bare_port}/items", {}, warm, 8)
            cpu = cpu_seconds(servers)
            ours, ours_n = _requests(f"{url}/v1/artifacts?limit=1", auth, seconds, 8)
            ours_cpu = cpu_seconds(servers) - cpu
            cpu = cpu_seconds(bare_servers)
            peer, peer_n = _requests(f"http://127.0.0.1:{bare_port}/items", {}, seconds, 8)
            peer_cpu = cpu_seconds(bare_servers) - cpu
            memory = _big_upload(url, tokens["publisher"], upload, node.pid)
        finally:
            if node is not None:
                node.stop()
            bare.terminate()
            bare.wait(20)

    mib = 1 << 20
    growth = memory["hwm"] - memory["rss_before"]
    result = {
        "benchmark": "api",
        "quick": args.quick,
        "post_quantum": not args.classic_only,
        "shares_per_second": round(rate, 1),
        "server_cpu_ms_per_share": round(1000 * share_cpu / shares, 3),
        "bare_uploads_per_second": round(bare_rate, 1),
        "bare_cpu_ms_per_upload": round(1000 * bare_share_cpu / shares, 3),
        "server_cpu_ms_per_list_request": round(1000 * ours_cpu / max(ours_n, 1), 3),
        "bare_cpu_ms_per_request": round(1000 * peer_cpu / max(peer_n, 1), 3),
        "shares_target": 1000,
        "shares": shares,
        "concurrency": args.concurrency,
        "workers": args.workers,
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "list_requests_per_second": round(ours, 1),
        "bare_fastapi_requests_per_second": round(peer, 1),
        "request_ratio": round(ours / peer, 3) if peer else None,
        "upload_bytes": upload,
        "server_rss_before_mib": round(memory["rss_before"] / mib, 1),
        "server_peak_rss_mib": round(memory["hwm"] / mib, 1),
        "server_rss_growth_mib": round(growth / mib, 1),
    }
    print(
        f"server processes: {args.workers} each; machine: {os.cpu_count()} CPUs, load average "
        f"{result['load_average'][0]}"
    )
    print(
        f"local shares (4 KiB, {args.concurrency} clients): {rate:,.0f}/s   (target 1,000/s); "
        f"server CPU {result['server_cpu_ms_per_share']:.2f} ms per share"
    )
    print(
        f"bare FastAPI multipart upload of the same bodies, written to a file: {bare_rate:,.0f}/s; "
        f"server CPU {result['bare_cpu_ms_per_upload']:.2f} ms per upload"
    )
    print(
        f"GET /v1/artifacts: {ours:,.0f} req/s   bare FastAPI: {peer:,.0f} req/s   "
        f"ratio {result['request_ratio']}; server CPU per request "
        f"{result['server_cpu_ms_per_list_request']:.2f} ms, bare "
        f"{result['bare_cpu_ms_per_request']:.2f} ms"
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
