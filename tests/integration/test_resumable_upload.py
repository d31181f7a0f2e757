"""A resumable share through a proxy that cuts the connection in the middle of the body: the
client asks the node what it holds and sends only the rest; one artifact, its content intact,
with ``Client`` and ``AsyncClient``, against a real `entente serve` on SQLite and PostgreSQL.
And a large resumable share leaves the node's memory flat (segments stream)."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import anyio
import httpx
import pytest

from service import localnet
from service.client import AsyncClient, Client, Retry, Shared
from tests.hardening.test_h1_large_body_memory import GROWTH, Sampler
from tests.integration.proxies import CuttingProxy
from tests.integration.test_idempotent_retry import uk  # noqa: F401
from tests.integration.test_python_client import TERMS

pytestmark = pytest.mark.integration


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
