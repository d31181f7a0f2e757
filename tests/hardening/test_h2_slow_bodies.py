"""H2: slow or many clients cannot starve the node (in-process; real sockets against a real
``entente serve`` in ``test_h2_slow_connections.py``).

Found: 41 uploads sending one byte every 10 s took every worker thread (each upload was pulled
from a thread that blocked on the event loop for every chunk), and ``/healthz``, the API, the
console and the audit routes all timed out. Now a body is read on the event loop and consumed
in a greenlet that gives its thread back whenever it waits for the next block
(``service.api.bodies.StreamedBody``): a waiting connection holds no thread. A body must keep a
minimum rate (408 otherwise), and one token or partner may run only so many requests at once
(503 with ``Retry-After``, audited once per burst).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import anyio
import pytest

from service.tokens import Role
from tests.hardening.kit import (
    DELIVERY_TYPE,
    Trio,
    audit_since,
    meta,
    postgres_database,
    signed,
    snapshot,
    trio,
)
from tests.service.nodekit import CREATED, UPLOAD_HEADERS, Kit, upload_body

BLOCK = 64 << 10  # bytes: upload_prefetch_bytes, the block a body is handed on in
PARKED = 48  # more uploads waiting for their next block than the default thread pool (40)
SETTINGS: dict[str, Any] = {
    "upload_prefetch_bytes": BLOCK,
    "body_worker_threads": 2,
    "max_requests_in_flight": 1000,
    "rate_limit_per_minute": 1_000_000,
}
DEADLINE = 60.0  # seconds: generous; only a node that is stuck misses it


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def nodes(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Trio]:
    backend = postgres_database() if request.param == "postgres" else nullcontext(None)
    with backend as url:
        yield trio(tmp_path_factory.mktemp("h2"), db_url=url, **SETTINGS)
        while CREATED:
            CREATED.pop().db.dispose()


@pytest.fixture(autouse=True)
def _dispose_nodes() -> None:  # the module's nodes live as long as the module fixture
    return None


def _scope(kit: Kit, path: str, body: bytes, given: dict[str, str] | None = None) -> dict[str, Any]:
    given = given if given is not None else {**UPLOAD_HEADERS, **kit.auth(Role.PUBLISHER)}
    headers = [(k.lower().encode(), v.encode()) for k, v in given.items()]
    headers.append((b"content-length", str(len(body)).encode()))
    return {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
        "root_path": "", "headers": headers, "client": ("127.0.0.1", 5000),
        "server": ("127.0.0.1", 80),
    }  # fmt: skip


class Parked:
    """An upload that sends ``first`` bytes, then waits for ``release`` before the rest."""

    def __init__(
        self,
        kit: Kit,
        body: bytes,
        first: int,
        release: anyio.Event,
        *,
        path: str = "/v1/artifacts",
        headers: dict[str, str] | None = None,
    ) -> None:
        self.kit = kit
        self.path = path
        self.headers = headers
        self.body = body
        self.first = first
        self.release = release
        self.started = anyio.Event()  # the first part has been taken
        self.status = 0
        self.answer = b""

    async def __call__(self) -> None:
        sent = 0

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if sent == 0:
                sent = self.first
                return {"type": "http.request", "body": self.body[: self.first], "more_body": True}
            self.started.set()
            await self.release.wait()
            if sent < len(self.body):
                rest, sent = self.body[sent:], len(self.body)
                return {"type": "http.request", "body": rest, "more_body": False}
            await anyio.sleep_forever()
            raise AssertionError("unreachable")

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                self.status = message["status"]
            elif message["type"] == "http.response.body":
                self.answer += message.get("body", b"")

        await self.kit.app(_scope(self.kit, self.path, self.body, self.headers), receive, send)


def _content(i: int) -> bytes:
    return (f"parked upload {i} ".encode() * 20_000)[: 4 * BLOCK]


async def test_waiting_bodies_hold_no_thread(nodes: Trio) -> None:
    uk = nodes.uk
    release = anyio.Event()
    parked = [
        Parked(uk, upload_body(meta(title=f"parked {i}"), _content(i)), 2 * BLOCK, release)
        for i in range(PARKED)
    ]
    async with anyio.create_task_group() as tg:
        for p in parked:
            tg.start_soon(p)
        with anyio.fail_after(DEADLINE):
            for p in parked:
                await p.started.wait()  # each is past its first block, waiting for the next
            async with uk.client() as c:
                assert (await c.get("/healthz")).status_code == 200
                r = await c.post(
                    "/v1/artifacts",
                    content=upload_body(meta(), b"a share during the wait " * 30_000),
                    headers={**UPLOAD_HEADERS, **uk.auth(Role.PUBLISHER)},
                )
                assert r.status_code == 201, r.text
                r = await c.get("/audit/v1/entries", headers=uk.auth(Role.AUDITOR))
                assert r.status_code == 200, r.text
        release.set()
    # Resumed on their hub threads, block after block, each upload is whole.
    assert [p.status for p in parked] == [201] * PARKED, [p.answer[:200] for p in parked[:3]]
    async with uk.client() as c:
        first = json.loads(parked[0].answer)
        r = await c.get(f"/v1/artifacts/{first['id']}/content", headers=uk.auth(Role.READER))
        assert r.status_code == 200
        assert hashlib.sha256(r.content).hexdigest() == hashlib.sha256(_content(0)).hexdigest()


async def test_a_trickling_body_ends_in_408(tmp_path: Path) -> None:
    nodes = trio(
        tmp_path, request_body_min_rate=64 << 10, request_body_rate_window_seconds=0.3,
        **SETTINGS,
    )  # fmt: skip
    uk = nodes.uk
    body = upload_body(meta(), b"x" * (4 * BLOCK))
    before = snapshot(uk.node)
    sent = 0
    status = 0
    answer = b""

    async def receive() -> dict[str, Any]:
        nonlocal sent
        await anyio.sleep(0.05)
        sent += 16
        return {"type": "http.request", "body": body[sent - 16 : sent], "more_body": True}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status, answer
        if message["type"] == "http.response.start":
            status = message["status"]
        elif message["type"] == "http.response.body":
            answer += message.get("body", b"")

    with anyio.fail_after(DEADLINE):
        await uk.app(_scope(uk, "/v1/artifacts", body), receive, send)
    assert status == 408, answer
    assert b"ENTENTE_REQUEST_BODY_MIN_RATE" in answer and b"min-rate" in answer
    after = snapshot(uk.node)
    assert (after.rows, after.blobs, after.temporary) == (
        before.rows,
        before.blobs,
        before.temporary,
    )
    assert [e["kind"] for e in audit_since(uk.node, before)] == ["request.refused"]


async def test_requests_in_flight_per_token_answer_503(tmp_path: Path) -> None:
    nodes = trio(tmp_path, **{**SETTINGS, "max_requests_in_flight": 2})
    uk = nodes.uk
    release = anyio.Event()
    parked = [
        Parked(uk, upload_body(meta(title=f"held {i}"), _content(i)), 2 * BLOCK, release)
        for i in range(2)
    ]
    async with anyio.create_task_group() as tg:
        for p in parked:
            tg.start_soon(p)
        with anyio.fail_after(DEADLINE):
            for p in parked:
                await p.started.wait()
            before = snapshot(uk.node)
            async with uk.client() as c:
                for _ in range(4):
                    r = await c.get("/v1/partners", headers=uk.auth(Role.PUBLISHER))
                    assert r.status_code == 503, r.text
                    assert r.headers["retry-after"] == "1"
                    assert r.headers["content-type"] == "application/problem+json"
                    doc = r.json()
                    assert (
                        doc["type"] == "urn:entente:problem:busy" and doc["reason"] == "in-flight"
                    )
                    assert "ENTENTE_MAX_REQUESTS_IN_FLIGHT" in doc["detail"]
                # Another token is not held back by this one's requests.
                r = await c.get("/v1/partners", headers=uk.auth(Role.READER))
                assert r.status_code == 200, r.text
            refused = [e for e in audit_since(uk.node, before) if e["kind"] == "request.refused"]
            assert [e["rule"] for e in refused] == ["busy"], refused  # once for the burst
        release.set()
    assert [p.status for p in parked] == [201, 201]
    async with uk.client() as c:
        r = await c.get("/v1/partners", headers=uk.auth(Role.PUBLISHER))
        assert r.status_code == 200, r.text


async def test_requests_in_flight_per_partner_answer_503(tmp_path: Path) -> None:
    """One partner's held deliveries take none of another partner's capacity (a bulkhead)."""
    nodes = trio(tmp_path, **{**SETTINGS, "max_requests_in_flight": 2})
    uk, us, ca = nodes.uk, nodes.us, nodes.ca
    release = anyio.Event()
    body = b"x" * (4 * BLOCK)  # a manifest line that has not ended yet
    path = "/federation/v1/inbox"
    parked = [
        Parked(
            uk, body, 2 * BLOCK, release, path=path,
            headers=signed(us.node, uk.node, "POST", path, body, **{"Content-Type": DELIVERY_TYPE}),
        )
        for _ in range(2)
    ]  # fmt: skip
    feed = "/federation/v1/feed"
    async with anyio.create_task_group() as tg:
        for p in parked:
            tg.start_soon(p)
        with anyio.fail_after(DEADLINE):
            for p in parked:
                await p.started.wait()
            async with uk.client() as c:
                r = await c.get(feed, headers=signed(us.node, uk.node, "GET", feed))
                assert r.status_code == 503, r.text
                assert r.headers["retry-after"] == "1"
                assert r.json()["type"] == "urn:entente:problem:busy"
                r = await c.get(feed, headers=signed(ca.node, uk.node, "GET", feed))
                assert r.status_code == 200, r.text
        release.set()
    assert [p.status for p in parked] == [422, 422], [p.answer[:200] for p in parked]


async def test_a_client_gone_mid_body_leaves_nothing(
    nodes: Trio, caplog: pytest.LogCaptureFixture
) -> None:
    """Past its first block (its greenlet waiting for the next), the client goes away: the
    upload is cleaned up, and the end is logged at info, without a traceback."""
    uk = nodes.uk
    body = upload_body(meta(title="gone"), _content(0))
    before = snapshot(uk.node)
    calls = 0

    async def receive() -> dict[str, Any]:
        nonlocal calls
        calls += 1
        if calls == 1:
            return {"type": "http.request", "body": body[: 2 * BLOCK], "more_body": True}
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        raise AssertionError(f"nothing is sent to a client that has gone: {message}")

    caplog.set_level(logging.DEBUG)
    with anyio.fail_after(DEADLINE):
        await uk.app(_scope(uk, "/v1/artifacts", body), receive, send)
    assert calls == 2
    after = snapshot(uk.node)
    assert (after.rows, after.blobs, after.temporary) == (
        before.rows,
        before.blobs,
        before.temporary,
    )
    assert [r for r in caplog.records if r.exc_info or r.levelno >= logging.WARNING] == []
    assert any("disconnected" in r.getMessage() for r in caplog.records)
