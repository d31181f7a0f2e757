"""The Python client (service.client) against real nodes: ``Client`` and ``AsyncClient`` share
from the UK node, the US node's reader sees the arrival (listing and event stream), downloads
the same bytes, the UK revokes and the US hears of it; a policy denial is a ProblemError naming
its rule and clause; a share whose answer was lost is retried with its one idempotency key and
shared once."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator
from pathlib import Path
from typing import TypedDict

import anyio
import httpx
import pytest

from service.client import AsyncClient, Client, ProblemError, Retry
from tests.integration.test_federation import wait_for
from tests.integration.test_idempotent_retry import LosingProxy
from tests.nodes import Federation, start_federation

pytestmark = pytest.mark.integration


class Terms(TypedDict):
    tlp: str
    topics: list[str]
    purposes: list[str]


TERMS = Terms(tlp="TLP:GREEN", topics=["evaluation"], purposes=["evaluation"])


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    federation = start_federation(
        tmp_path_factory.mktemp("python-client"),
        ("uk-aisi", "us-aisi"),
        ENTENTE_SYNC_INTERVAL_SECONDS="0.2",
        ENTENTE_RETRY_BASE_SECONDS="0.2",
        ENTENTE_RETRY_MAX_SECONDS="1",
        ENTENTE_EVENTS_POLL_SECONDS="0.1",
        ENTENTE_EVENTS_MAX_STREAM_SECONDS="3",
    )
    yield federation
    federation.stop()


def client(fed: Federation, node: str, role: str) -> Client:
    return Client(fed.nodes[node].url, fed.tokens[node][role])


def test_share_list_download_follow_revoke(fed: Federation, tmp_path: Path) -> None:
    finding = tmp_path / "finding.md"
    finding.write_bytes(b"# Finding\n" + b"evaluation detail\n" * 100_000)  # 1.8 MB, streamed
    sent: list[tuple[int, int | None]] = []
    with client(fed, "uk-aisi", "publisher") as uk:
        shared = uk.share(
            finding, to=["us-aisi"], **TERMS, on_progress=lambda d, t: sent.append((d, t))
        )
        assert shared.status == "shared" and not shared.replayed
        assert shared.artifact is not None
        assert shared.artifact.sha256 == hashlib.sha256(finding.read_bytes()).hexdigest()
        assert sent[-1] == (finding.stat().st_size, finding.stat().st_size)

    with client(fed, "us-aisi", "reader") as us:
        arrived = wait_for(
            lambda: [a for a in us.artifacts() if a.id == shared.id], 30, "the arrival"
        )
        assert arrived[0].origin == "uk-aisi" and arrived[0].filename == "finding.md"
        got = us.download(shared.id, tmp_path / "copy.md")
        assert got.path is not None and got.path.read_bytes() == finding.read_bytes()
        assert got.sha256 == shared.artifact.sha256
        with pytest.raises(FileExistsError):
            us.download(shared.id, tmp_path / "copy.md")
        with us.open(shared.id) as stream:
            assert stream.filename == "finding.md"
            assert hashlib.sha256(b"".join(stream)).hexdigest() == got.sha256
        first = next(e for e in us.events(after="0") if e.artifact.id == shared.id)
        assert first.name == "arrived" and first.artifact.tlp == "TLP:GREEN"

        with pytest.raises(ProblemError) as refused:
            us.revoke(shared.id)  # a reader may not revoke
        assert refused.value.status == 403

    with client(fed, "uk-aisi", "publisher") as uk:
        revoked = uk.revoke(shared.id, "superseded")
        assert revoked.revoked_at is not None
        assert uk.artifact(shared.id).deliveries is not None

    with client(fed, "us-aisi", "reader") as us:
        later = next(
            e
            for e in us.events(after=first.id)
            if e.name == "revoked" and e.artifact.id == shared.id
        )
        assert later.artifact.revoked_at is not None


def test_a_policy_denial_names_rule_and_clause(fed: Federation) -> None:
    with client(fed, "uk-aisi", "publisher") as uk, pytest.raises(ProblemError) as denied:
        uk.share(io.BytesIO(b"red"), to=["us-aisi"], tlp="red", title="red",
                 topics=["evaluation"], purposes=["evaluation"])  # fmt: skip
    error = denied.value
    assert error.status == 403 and error.type == "urn:entente:problem:policy-denied"
    assert error.rule == "above-amber" and error.clause is not None
    assert "US-UK MOU 2024" in error.clause and error.partner == "us-aisi"
    assert str(error).startswith("403: ") and "[rule above-amber, US-UK MOU 2024" in str(error)


def test_a_retry_with_the_same_key_shares_once(fed: Federation, tmp_path: Path) -> None:
    finding = tmp_path / "retried.bin"
    finding.write_bytes(b"an evaluation finding\n" * 100_000)
    node = fed.nodes["uk-aisi"]
    proxy = LosingProxy(node.port, drop=1)  # the first answer never reaches the client
    retries: list[Retry] = []
    try:
        with Client(f"http://127.0.0.1:{proxy.port}", node.tokens["publisher"],
                    on_retry=retries.append) as uk:  # fmt: skip
            shared = uk.share(finding, to=["us-aisi"], title="retried", **TERMS)
            again = uk.share(finding, to=["us-aisi"], title="retried", **TERMS,
                             idempotency_key="same-key")  # fmt: skip
            replayed = uk.share(finding, to=["us-aisi"], title="retried", **TERMS,
                                idempotency_key="same-key")  # fmt: skip
    finally:
        proxy.close()
    assert len(retries) == 1 and "connection was lost" in retries[0].reason
    assert shared.replayed and len(proxy.lost) == 1
    assert proxy.lost[0][0].startswith(b"HTTP/1.1 201")
    assert not again.replayed and replayed.replayed and replayed.id == again.id
    with client(fed, "uk-aisi", "auditor") as auditor:
        titles = [a.id for a in auditor.artifacts("sent") if a.title == "retried"]
    assert sorted(titles) == sorted([shared.id, again.id])  # two shares, not four


async def test_the_async_client_against_real_nodes(fed: Federation) -> None:
    data = b"async evaluation notes\n" * 50_000
    uk_node, us_node = fed.nodes["uk-aisi"], fed.nodes["us-aisi"]
    async with AsyncClient(uk_node.url, uk_node.tokens["publisher"]) as uk:
        shared = await uk.share(io.BytesIO(data), to=["us-aisi"], title="async notes",
                                filename="notes.txt", **TERMS)  # fmt: skip
        with pytest.raises(ProblemError) as denied:
            await uk.share(io.BytesIO(b"x"), to=["us-aisi"], tlp="red", title="red",
                           topics=["evaluation"], purposes=["evaluation"])  # fmt: skip
        assert denied.value.rule == "above-amber"
    async with AsyncClient(us_node.url, us_node.tokens["reader"]) as us:
        with anyio.fail_after(60):
            async for event in us.events(after="0"):
                if event.artifact.id == shared.id:
                    break
        assert event.name == "arrived" and event.artifact.title == "async notes"
        assert [a.id async for a in us.artifacts() if a.id == shared.id] == [shared.id]
        sink = io.BytesIO()
        got = await us.download(shared.id, sink)
        assert sink.getvalue() == data and got.filename == "notes.txt"
        async with us.open(shared.id) as stream:
            assert b"".join([chunk async for chunk in stream]) == data
    async with AsyncClient(uk_node.url, uk_node.tokens["publisher"]) as uk:
        assert (await uk.revoke(shared.id)).revoked_at is not None
    async with httpx.AsyncClient() as plain:  # the node itself agrees: revoked at its origin
        r = await plain.get(
            f"{uk_node.url}/v1/artifacts/{shared.id}", headers=uk_node.auth("auditor")
        )
    assert r.json()["revoked_at"] is not None
