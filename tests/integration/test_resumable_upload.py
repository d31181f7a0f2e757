"""A resumable share through a proxy that cuts the connection in the middle of the body: the
client asks the node what it holds and sends only the rest; one artifact, its content intact,
with ``Client`` and ``AsyncClient``, against a real `entente serve` on SQLite and PostgreSQL.
And a large resumable share leaves the node's memory flat (segments stream)."""

from __future__ import annotations

import hashlib
import socket
import sys
import threading
from pathlib import Path

import anyio
import httpx
import pytest

from service import localnet
from service.client import AsyncClient, Client, Retry, Shared
from tests.hardening.test_h1_large_body_memory import GROWTH, Sampler
from tests.integration.test_idempotent_retry import (  # noqa: F401
    _head_and_rest,
    _length,
    _pipe,
    _read_exactly,
    uk,
)
from tests.integration.test_python_client import TERMS

pytestmark = pytest.mark.integration


class CuttingProxy:
    """A TCP proxy in front of a node, one request per connection. The first ``cuts`` PATCH
    requests are forwarded with ``after`` bytes of their body, then both connections close; the
    next ``lose`` are forwarded whole, and their answer read and dropped; everything else is
    forwarded as it is. ``offsets`` lists each PATCH's Upload-Offset."""

    def __init__(self, upstream: int, *, cuts: int, after: int, lose: int = 0) -> None:
        self.upstream = upstream
        self.cuts = cuts
        self.after = after
        self.lose = lose
        self.lost: list[bytes] = []  # heads of the answers the client never saw
        self.offsets: list[int] = []
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self._server.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        upstream = socket.create_connection(("127.0.0.1", self.upstream))
        with client, upstream:
            head, rest = _head_and_rest(client)
            if head.startswith(b"PATCH "):
                self.offsets.append(_field(head, b"upload-offset"))
                if self.cuts > 0:
                    self.cuts -= 1
                    sent = head + b"\r\n\r\n" + rest
                    body = len(rest)
                    while body < self.after and (data := client.recv(65536)):
                        sent += data
                        body += len(data)
                    upstream.sendall(sent)
                    upstream.shutdown(socket.SHUT_RDWR)
                    client.shutdown(socket.SHUT_RDWR)
                    return
                if self.lose > 0 and _field(head, b"upload-complete") == 1:
                    self.lose -= 1
                    upstream.sendall(head + b"\r\n\r\n" + rest)
                    _read_exactly(client, rest, _length(head), upstream)
                    answer, more = _head_and_rest(upstream)
                    _read_exactly(upstream, more, _length(answer), None)
                    self.lost.append(answer)
                    client.shutdown(socket.SHUT_RDWR)  # the whole answer, never delivered
                    return
            upstream.sendall(head + b"\r\n\r\n" + rest)
            pipes = [
                threading.Thread(target=_pipe, args=(client, upstream), daemon=True),
                threading.Thread(target=_pipe, args=(upstream, client), daemon=True),
            ]
            for pipe in pipes:
                pipe.start()
            for pipe in pipes:
                pipe.join()


def _field(head: bytes, name: bytes) -> int:
    """An Integer field's value (a Boolean's: 0 or 1); -1 when absent."""
    for line in head.split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == name:
            return int(value.strip().removeprefix(b"?"))
    return -1


LARGE = 256 << 20  # bytes of the large share
NO_REUSE = httpx.Limits(max_keepalive_connections=0)  # one request per connection


def _share(base: str, token: str, path: Path, retries: list[Retry]) -> Shared:
    transport = httpx.HTTPTransport(limits=NO_REUSE)
    with Client(base, token, on_retry=retries.append, transport=transport) as client:
        return client.share(path, to=["us-aisi"], title="cut", **TERMS, resumable=True)


async def _share_async(base: str, token: str, path: Path, retries: list[Retry]) -> Shared:
    transport = httpx.AsyncHTTPTransport(limits=NO_REUSE)
    async with AsyncClient(base, token, on_retry=retries.append, transport=transport) as client:
        return await client.share(path, to=["us-aisi"], title="cut", **TERMS, resumable=True)


@pytest.mark.parametrize("flavour", ["sync", "async"])
def test_a_cut_upload_resumes_from_the_nodes_offset(
    uk: tuple[localnet.NodeProcess, str],  # noqa: F811
    tmp_path: Path,
    flavour: str,
) -> None:
    node, _url = uk
    finding = tmp_path / "weights-audit.bin"
    finding.write_bytes(bytes(range(256)) * 16_384)  # 4 MiB
    proxy = CuttingProxy(node.port, cuts=2, after=1 << 20)
    retries: list[Retry] = []
    base, token = f"http://127.0.0.1:{proxy.port}", node.tokens["publisher"]
    try:
        if flavour == "sync":
            shared = _share(base, token, finding, retries)
        else:
            shared = anyio.run(_share_async, base, token, finding, retries)
    finally:
        proxy.close()
    assert shared.artifact is not None
    assert shared.artifact.sha256 == hashlib.sha256(finding.read_bytes()).hexdigest()
    assert len(retries) >= 2 and all("connection was lost" in r.reason for r in retries[:2])
    # The appends after a cut started where the node had stopped, not from zero.
    assert proxy.offsets[0] == 0 and max(proxy.offsets[1:]) > 0
    listed = httpx.get(
        f"{node.url}/v1/artifacts", params={"direction": "sent"}, headers=node.auth("auditor")
    ).json()["items"]
    assert [a["id"] for a in listed] == [shared.id]
    content = httpx.get(f"{node.url}/v1/artifacts/{shared.id}/content", headers=node.auth("reader"))
    assert content.content == finding.read_bytes()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_large_resumable_share_keeps_the_nodes_memory_flat(
    uk: tuple[localnet.NodeProcess, str],  # noqa: F811
    tmp_path: Path,
) -> None:
    node, _url = uk
    large = tmp_path / "large.bin"
    block = bytes(range(256)) * 4096  # 1 MiB
    with large.open("wb") as fh:
        for _ in range(LARGE >> 20):
            fh.write(block)
    with (
        Sampler(node.pid) as sampler,
        Client(node.url, node.tokens["publisher"]) as client,
    ):
        start = sampler.peak
        shared = client.share(large, to=["us-aisi"], title="large", **TERMS, resumable=True)
    assert shared.artifact is not None and shared.artifact.size == LARGE
    assert sampler.peak - start < GROWTH, f"{(sampler.peak - start) >> 20} MiB"


def test_a_lost_last_answer_is_answered_again_and_shares_once(
    uk: tuple[localnet.NodeProcess, str],  # noqa: F811
    tmp_path: Path,
) -> None:
    node, _url = uk
    finding = tmp_path / "finding.bin"
    finding.write_bytes(b"an evaluation finding\n" * 100_000)
    proxy = CuttingProxy(node.port, cuts=0, after=0, lose=1)
    retries: list[Retry] = []
    try:
        shared = _share(f"http://127.0.0.1:{proxy.port}", node.tokens["publisher"], finding,
                        retries)  # fmt: skip
    finally:
        proxy.close()
    [lost] = proxy.lost
    assert lost.startswith(b"HTTP/1.1 201")  # the node had shared it; the client never heard
    assert shared.replayed and shared.artifact is not None
    assert len(retries) == 1 and "connection was lost" in retries[0].reason
    listed = httpx.get(
        f"{node.url}/v1/artifacts", params={"direction": "sent"}, headers=node.auth("auditor")
    ).json()["items"]
    assert [a["id"] for a in listed] == [shared.id]
