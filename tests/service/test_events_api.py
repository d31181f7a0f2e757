"""GET /v1/events in-process: arrivals in order, resuming from a cursor, bounds, auth and 422.

The in-process transport hands back a response once it has ended, so these streams are given a
short lifetime (``events_max_stream_seconds``) and read whole.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlmodel import select

from service.audit.sequencer import run_sequencer
from service.models import AuditEntry
from service.tokens import Role, authenticate, revoke_token
from tests.service.nodekit import Kit, make_node, pin
from tests.service.test_federation_sync import Pair, PortalTransport, share

FAST = {"events_poll_seconds": 0.05, "events_max_stream_seconds": 0.4}


@pytest.fixture
def nodes(tmp_path: Path, db_url: str) -> Iterator[Pair]:
    uk = make_node(tmp_path, "uk-aisi")
    us = make_node(tmp_path, "us-aisi", db_url=db_url, **FAST)  # type: ignore[arg-type]
    pin(uk, us)
    pin(us, uk)
    transport = PortalTransport({"uk-aisi": uk.app, "us-aisi": us.app})
    yield Pair(uk, us, transport)
    transport.close()


def deliver(pair: Pair, n: int) -> list[str]:
    ids = share(pair.uk, n, size=64)
    worker = pair.worker(pair.uk)
    try:
        assert worker.run_once() == n
    finally:
        worker.close()
    run_sequencer(pair.us.node)
    return ids


def parse(body: str) -> list[dict[str, str]]:
    """The events of an SSE body (comments left out), each as its fields."""
    events = []
    for block in body.split("\n\n"):
        fields: dict[str, str] = {}
        for line in block.splitlines():
            if line.startswith(":") or not line:
                continue
            name, _, value = line.partition(": ")
            fields[name] = value
        if "event" in fields:
            events.append(fields)
    return events


async def stream(
    kit: Kit,
    role: Role = Role.READER,
    *,
    params: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
) -> list[dict[str, str]]:
    async with kit.client() as c:
        r = await c.get("/v1/events", params=params, headers={**kit.auth(role), **(headers or {})})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/event-stream")
    return parse(r.text)


def arrivals(events: list[dict[str, str]]) -> list[dict[str, str]]:
    return [e for e in events if e["event"] == "arrived"]


async def test_arrivals_in_order_with_the_listing_entry(nodes: Pair) -> None:
    ids = deliver(nodes, 3)
    events = await stream(nodes.us, params={"after": "0"})
    assert events[0]["event"] == "ready" and events[0]["id"] == "0"
    got = arrivals(events)
    assert [json.loads(e["data"])["id"] for e in got] == ids
    cursors = [int(e["id"]) for e in got]
    assert cursors == sorted(set(cursors))
    assert events[-1]["event"] == "end" and int(events[-1]["id"]) >= cursors[-1]
    async with nodes.us.client() as c:
        listed = await c.get(f"/v1/artifacts/{ids[0]}", headers=nodes.us.auth(Role.AUDITOR))
    assert json.loads(got[0]["data"]) == listed.json()
    assert "content" not in got[0]["data"]


async def test_resuming_from_a_cursor_gives_exactly_the_later_ones(nodes: Pair) -> None:
    first = deliver(nodes, 2)
    now = await stream(nodes.us)  # no cursor: from the present, nothing old
    assert arrivals(now) == []
    resume_at = now[0]["id"]
    later = deliver(nodes, 2)
    by_query = arrivals(await stream(nodes.us, params={"after": resume_at}))
    by_header = arrivals(
        await stream(nodes.us, Role.PUBLISHER, headers={"Last-Event-ID": resume_at})
    )
    assert [json.loads(e["data"])["id"] for e in by_query] == later
    assert by_header == by_query
    every = arrivals(await stream(nodes.us, Role.ADMIN, params={"after": "0"}))
    middle = every[0]["id"]
    rest = arrivals(await stream(nodes.us, params={"after": middle}))
    assert [json.loads(e["data"])["id"] for e in rest] == first[1:] + later


async def test_a_revocation_is_an_event(nodes: Pair) -> None:
    [art] = deliver(nodes, 1)
    async with nodes.uk.client() as c:
        r = await c.post(
            f"/v1/artifacts/{art}/revoke", json={"reason": "wrong file"},
            headers=nodes.uk.auth(Role.PUBLISHER),
        )  # fmt: skip
    assert r.status_code == 200, r.text
    worker = nodes.worker(nodes.uk)
    try:
        worker.run_once()
    finally:
        worker.close()
    run_sequencer(nodes.us.node)
    events = [e for e in await stream(nodes.us, params={"after": "0"}) if e["event"] != "ready"]
    names = [(e["event"], json.loads(e["data"]).get("id")) for e in events[:-1]]
    assert names == [("arrived", art), ("revoked", art)]
    assert json.loads(events[1]["data"])["revoked_at"] is not None


@pytest.mark.parametrize(
    ("params", "headers", "status"),
    [
        ({"after": "0", "since": "1"}, {}, 422),
        ({"after": "-1"}, {}, 422),
        ({"after": "x"}, {}, 422),
        ({"after": "9" * 30}, {}, 422),
        ({}, {"Last-Event-ID": "abc"}, 422),
    ],
)
async def test_bad_input_is_a_422_problem(
    nodes: Pair, params: dict[str, str], headers: dict[str, str], status: int
) -> None:
    async with nodes.us.client() as c:
        r = await c.get(
            "/v1/events", params=params, headers={**nodes.us.auth(Role.READER), **headers}
        )
    assert r.status_code == status
    assert r.headers["content-type"] == "application/problem+json"


async def test_authenticated_only(nodes: Pair) -> None:
    async with nodes.us.client() as c:
        anonymous = await c.get("/v1/events")
        wrong = await c.get("/v1/events", headers={"Authorization": "Bearer nope"})
    assert anonymous.status_code == 401 and wrong.status_code == 401
    assert anonymous.headers["content-type"] == "application/problem+json"


async def test_open_streams_per_token_are_bounded(tmp_path: Path) -> None:
    kit = make_node(
        tmp_path, "us-aisi", events_max_streams_per_token=1, events_poll_seconds=0.05,
        events_max_stream_seconds=0.6, events_heartbeat_seconds=0.1,
    )  # fmt: skip
    async with kit.client() as c:
        first = asyncio.create_task(c.get("/v1/events", headers=kit.auth(Role.READER)))
        await asyncio.sleep(0.2)
        refused = await c.get("/v1/events", headers=kit.auth(Role.READER))
        other = asyncio.create_task(c.get("/v1/events", headers=kit.auth(Role.AUDITOR)))
        done, again = await first, None
        again = await c.get("/v1/events", headers=kit.auth(Role.READER))
        assert (await other).status_code == 200
    assert refused.status_code == 429 and refused.headers["Retry-After"]
    assert refused.json()["type"] == "urn:entente:problem:rate-limited"
    assert done.status_code == 200 and again.status_code == 200
    assert ": keep-alive" in done.text  # heartbeats while quiet
    with kit.node.db.session() as session:
        refusals = session.exec(
            select(AuditEntry).where(AuditEntry.kind == "request.refused")
        ).all()
    assert [json.loads(e.detail).get("path") for e in refusals] == ["/v1/events"]


def test_the_cli_reads_server_sent_events() -> None:
    from service.client._protocol import SseEvent, parse_sse

    text = ': hi\nretry: 1000\nid: 3\nevent: arrived\ndata: {"a":\ndata: 1}\n\n: keep-alive\n\n'
    assert list(parse_sse(text.splitlines(keepends=True))) == [
        SseEvent("arrived", '{"a":\n1}', "3")
    ]


async def long_poll(kit: Kit, **params: str) -> dict[str, object]:
    async with kit.client() as c:
        r = await c.get("/v1/events", params=params, headers=kit.auth(Role.READER))
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/json"
    page: dict[str, object] = r.json()
    return page


async def test_long_poll_answers_a_page_and_waits_for_the_next(nodes: Pair) -> None:
    ids = deliver(nodes, 2)
    page = await long_poll(nodes.us, after="0", wait="0")
    events = page["events"]
    assert isinstance(events, list)
    assert [(e["event"], e["artifact"]["id"]) for e in events] == [("arrived", i) for i in ids]
    assert page["cursor"] == events[-1]["id"]
    # Nothing newer: an empty page after the wait, the same cursor.
    idle = await long_poll(nodes.us, after=str(page["cursor"]), wait="0.2")
    assert idle == {"events": [], "cursor": page["cursor"]}
    # An arrival during the wait ends it early.
    waiting = asyncio.create_task(long_poll(nodes.us, after=str(page["cursor"]), wait="20"))
    await asyncio.sleep(0.1)
    [late] = await asyncio.to_thread(deliver, nodes, 1)
    started = asyncio.get_running_loop().time()
    got = await waiting
    assert asyncio.get_running_loop().time() - started < 10
    later = got["events"]
    assert isinstance(later, list) and [e["artifact"]["id"] for e in later] == [late]


@pytest.mark.parametrize("wait", ["-1", "3601", "nan", "soon"])
async def test_a_bad_wait_is_a_422_problem(nodes: Pair, wait: str) -> None:
    async with nodes.us.client() as c:
        r = await c.get("/v1/events", params={"wait": wait}, headers=nodes.us.auth(Role.READER))
    assert r.status_code == 422
    assert r.headers["content-type"] == "application/problem+json"


async def test_a_stream_ends_once_its_token_is_revoked(nodes: Pair) -> None:
    """The token was checked once, when the stream opened: a revoked (stolen) token kept
    receiving every event for the stream's whole lifetime (found by review)."""
    kit = nodes.us
    secret = kit.tokens[Role.READER]
    with kit.node.db.session() as session:
        token_id = authenticate(session, secret).token_id

    def revoke() -> None:
        time.sleep(0.1)
        with kit.node.db.session() as session:
            revoke_token(session, token_id=token_id, now=kit.node.now(), actor="test")
            session.commit()

    events, _ = await asyncio.gather(stream(kit), asyncio.to_thread(revoke))
    assert events[-1]["event"] == "end"
    assert json.loads(events[-1]["data"])["reason"] == "the token was revoked"
    async with kit.client() as c:
        r = await c.get("/v1/events", params={"wait": "0"}, headers=kit.auth(Role.READER))
    assert r.status_code == 401
