"""Webhooks in-process: ``/v1/admin/webhooks`` (create, list, delete, refusals) and the
dispatcher delivering to a receiver behind ``httpx.MockTransport``: every event once, in order,
signed; retried with doubling backoff; disabled (and audited) once its attempts run out."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlmodel import select
from standardwebhooks import Webhook as Verifier

from service.audit.sequencer import run_sequencer
from service.models import AuditEntry, Webhook
from service.tokens import Role
from service.webhooks import WebhookDispatcher
from tests.service.nodekit import Kit, make_node, pin
from tests.service.test_events_api import deliver
from tests.service.test_federation_sync import Pair, PortalTransport

HOOK = "http://127.0.0.1:9/hook"


class Clock:
    """A node clock that starts at the test's own time and moves only when told."""

    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@dataclass
class Receiver:
    """A webhook receiver: answers each POST with the next status of ``script`` (then 204),
    verifying every signature with ``standardwebhooks`` as a real receiver would."""

    secrets: dict[str, str] = field(default_factory=dict)  # url -> secret
    script: list[int] = field(default_factory=list)
    seen: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # (url, payload)
    attempts: int = 0
    gate: dict[str, threading.Event] = field(default_factory=dict)  # url -> opened when set

    def __call__(self, request: httpx.Request) -> httpx.Response:
        url = str(request.url)
        if url in self.gate:
            self.gate[url].wait(10)
        self.attempts += 1
        payload = Verifier(self.secrets[url]).verify(request.content, dict(request.headers))
        assert request.headers["webhook-id"] == f"evt_{payload['data']['id']}"
        status = self.script.pop(0) if self.script else 204
        if 200 <= status < 300:
            self.seen.append((url, payload))
        return httpx.Response(status)


@pytest.fixture
def nodes(tmp_path: Path, db_url: str) -> Iterator[Pair]:
    uk = make_node(tmp_path, "uk-aisi")
    us = make_node(
        tmp_path, "us-aisi", db_url=db_url, webhook_max_attempts=3,
        webhook_allowed_hosts=("uk-aisi", "hooks.internal"),
    )  # fmt: skip
    us.node.clock = Clock()
    pin(uk, us)
    pin(us, uk)
    transport = PortalTransport({"uk-aisi": uk.app, "us-aisi": us.app})
    yield Pair(uk, us, transport)
    transport.close()


async def subscribe(kit: Kit, url: str = HOOK, role: Role = Role.ADMIN, **body: Any) -> Any:
    async with kit.client() as c:
        return await c.post("/v1/admin/webhooks", json={"url": url, **body}, headers=kit.auth(role))


def audit(kit: Kit, kind: str) -> list[AuditEntry]:
    with kit.node.db.session() as session:
        return list(session.exec(select(AuditEntry).where(AuditEntry.kind == kind)))


def row(kit: Kit, webhook_id: str) -> Webhook:
    with kit.node.db.session() as session:
        found = session.get(Webhook, webhook_id)
        assert found is not None
        return found


def run(dispatcher: WebhookDispatcher) -> list[str]:
    """One claim and every claimed delivery, on this thread."""
    claimed = dispatcher.claim(limit=10)
    for webhook_id in claimed:
        dispatcher.deliver(webhook_id)
    return claimed


async def test_create_list_delete_with_the_secret_shown_once(nodes: Pair) -> None:
    us = nodes.us
    created = await subscribe(us, events=["arrived"])
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["secret"].startswith("whsec_") and body["url"] == HOOK
    assert body["events"] == ["arrived"] and body["state"] == "active"
    assert created.headers["location"] == f"/v1/admin/webhooks/{body['id']}"
    async with us.client() as c:
        listed = (await c.get("/v1/admin/webhooks", headers=us.auth(Role.ADMIN))).json()
        assert [w["id"] for w in listed] == [body["id"]]
        assert "secret" not in listed[0] and body["secret"] not in json.dumps(listed)
        stored = row(us, body["id"])
        assert body["secret"] not in stored.secret  # sealed, not stored as given
        gone = await c.delete(f"/v1/admin/webhooks/{body['id']}", headers=us.auth(Role.ADMIN))
        assert gone.json() == {"id": body["id"], "removed": True}
        again = await c.delete(f"/v1/admin/webhooks/{body['id']}", headers=us.auth(Role.ADMIN))
        assert again.status_code == 404
        assert (await c.get("/v1/admin/webhooks", headers=us.auth(Role.ADMIN))).json() == []
    [made] = audit(us, "webhook.created")
    [deleted] = audit(us, "webhook.deleted")
    assert json.loads(made.detail)["webhook_id"] == json.loads(deleted.detail)["webhook_id"]
    assert body["secret"] not in made.detail
    assert made.actor.startswith("admin:")


@pytest.mark.parametrize(
    ("url", "body", "reason"),
    [
        ("http://uk-aisi/hook", {}, "partner"),  # a partner's host:port, though allowed
        ("http://example.org/hook", {}, "host"),
        ("ftp://127.0.0.1/hook", {}, "scheme"),
        ("http://admin:pw@127.0.0.1/hook", {}, "credentials"),
        (HOOK, {"events": []}, "events"),
        (HOOK, {"events": ["exploded"]}, "events"),
    ],
)
async def test_refusals_are_422_problems_naming_the_reason(
    nodes: Pair, url: str, body: dict[str, Any], reason: str
) -> None:
    refused = await subscribe(nodes.us, url, **body)
    assert refused.status_code == 422
    assert refused.headers["content-type"] == "application/problem+json"
    assert refused.json()["reason"] == reason
    assert audit(nodes.us, "webhook.created") == []
    [entry] = audit(nodes.us, "request.refused")
    assert json.loads(entry.detail)["status"] == 422


async def test_malformed_bodies_and_other_roles_are_refused(nodes: Pair) -> None:
    us = nodes.us
    for role in (Role.PUBLISHER, Role.READER, Role.AUDITOR, Role.METRICS):
        assert (await subscribe(us, role=role)).status_code == 403
    async with us.client() as c:
        for role in (Role.READER, Role.AUDITOR):
            assert (await c.get("/v1/admin/webhooks", headers=us.auth(role))).status_code == 403
            r = await c.delete("/v1/admin/webhooks/whk_x", headers=us.auth(role))
            assert r.status_code == 403
        assert (await c.get("/v1/admin/webhooks")).status_code == 401
        for content in (b"{", b"[]", b'{"url": 5}', b'{"url": "http://127.0.0.1/", "x": 1}'):
            r = await c.post("/v1/admin/webhooks", content=content, headers=us.auth(Role.ADMIN))
            assert r.status_code == 422, content
        r = await c.post(
            "/v1/admin/webhooks", json={"url": HOOK, "after": -1}, headers=us.auth(Role.ADMIN)
        )
        assert r.status_code == 422
        r = await c.delete("/v1/admin/webhooks/" + "x" * 60, headers=us.auth(Role.ADMIN))
        assert r.status_code == 422


async def test_the_number_of_subscriptions_is_bounded(tmp_path: Path) -> None:
    kit = make_node(tmp_path, "us-aisi", webhook_max_subscriptions=1)
    assert (await subscribe(kit)).status_code == 201
    full = await subscribe(kit, "http://localhost:9/other")
    assert full.status_code == 409 and full.json()["reason"] == "webhook-limit"


async def test_every_event_once_in_order_signed(nodes: Pair) -> None:
    us = nodes.us
    early = deliver(nodes, 2)  # before the subscription: not sent (it starts at the present)
    receiver = Receiver()
    first = (await subscribe(us)).json()
    other = (await subscribe(us, "https://hooks.internal/x", after=0)).json()  # replays all
    receiver.secrets = {HOOK: first["secret"], "https://hooks.internal/x": other["secret"]}
    dispatcher = WebhookDispatcher(us.node, transport=httpx.MockTransport(receiver))
    try:
        assert run(dispatcher) == [other["id"]]  # only it has events to send
        later = deliver(nodes, 3)
        assert sorted(run(dispatcher)) == sorted([first["id"], other["id"]])
        assert run(dispatcher) == []  # nothing left: nothing claimed
    finally:
        dispatcher.close()
    got = {
        url: [p["data"]["artifact_id"] for u, p in receiver.seen if u == url]
        for url in receiver.secrets
    }
    assert got[HOOK] == later
    assert got["https://hooks.internal/x"] == early + later
    ids = [p["data"]["id"] for u, p in receiver.seen if u == HOOK]
    assert ids == sorted(set(ids))
    sample = receiver.seen[-1][1]
    assert sample["type"] == "artifact.arrived" and sample["data"]["origin"] == "uk-aisi"
    assert set(sample["data"]) == {
        "id", "event", "node", "artifact_id", "origin", "title", "tlp", "recorded_at"
    }  # fmt: skip
    done = row(us, first["id"])
    assert done.state == "active" and done.lease_owner is None and done.cursor >= ids[-1]
    ok = us.node.metrics.registry.get_sample_value(
        "entente_webhook_deliveries_total", {"subscription": first["id"], "outcome": "ok"}
    )
    assert ok == 3


async def test_a_receiver_that_fails_twice_gets_each_event_once_in_order(nodes: Pair) -> None:
    us = nodes.us
    clock: Clock = us.node.clock  # type: ignore[assignment]
    hook = (await subscribe(us)).json()
    receiver = Receiver(secrets={HOOK: hook["secret"]}, script=[500, 503])
    ids = deliver(nodes, 3)
    dispatcher = WebhookDispatcher(us.node, transport=httpx.MockTransport(receiver))
    try:
        run(dispatcher)
        failing = row(us, hook["id"])
        assert failing.state == "failing" and failing.failures == 1
        assert failing.last_error == "HTTP 500"
        assert failing.next_attempt_at == clock.now + timedelta(seconds=1)  # the base delay
        assert run(dispatcher) == []  # not due yet
        clock.advance(1)
        run(dispatcher)
        assert row(us, hook["id"]).next_attempt_at == clock.now + timedelta(seconds=2)  # doubled
        clock.advance(2)
        run(dispatcher)
    finally:
        dispatcher.close()
    assert receiver.attempts == 5
    assert [p["data"]["artifact_id"] for _u, p in receiver.seen] == ids
    healed = row(us, hook["id"])
    assert healed.state == "active" and healed.failures == 0 and healed.last_error is None
    assert audit(us, "webhook.disabled") == []


async def test_a_receiver_that_always_fails_is_disabled_and_audited(nodes: Pair) -> None:
    us = nodes.us
    clock: Clock = us.node.clock  # type: ignore[assignment]
    hook = (await subscribe(us)).json()
    receiver = Receiver(secrets={HOOK: hook["secret"]}, script=[500] * 10)
    deliver(nodes, 1)
    dispatcher = WebhookDispatcher(us.node, transport=httpx.MockTransport(receiver))
    try:
        for _ in range(5):
            run(dispatcher)
            clock.advance(60)
    finally:
        dispatcher.close()
    assert receiver.attempts == 3  # webhook_max_attempts, then no more
    disabled = row(us, hook["id"])
    assert disabled.state == "disabled" and disabled.failures == 3
    [entry] = audit(us, "webhook.disabled")
    detail = json.loads(entry.detail)
    assert detail["webhook_id"] == hook["id"] and detail["attempts"] == 3
    assert detail["error"] == "HTTP 500" and entry.actor == "node:webhooks"
    failed = us.node.metrics.registry.get_sample_value(
        "entente_webhook_deliveries_total", {"subscription": hook["id"], "outcome": "failed"}
    )
    assert failed == 3
    async with us.client() as c:
        [listed] = (await c.get("/v1/admin/webhooks", headers=us.auth(Role.ADMIN))).json()
    assert listed["state"] == "disabled" and listed["last_error"] == "HTTP 500"


async def test_redirects_are_not_followed(nodes: Pair) -> None:
    us = nodes.us
    hook = (await subscribe(us)).json()
    receiver = Receiver(secrets={HOOK: hook["secret"]}, script=[307])
    deliver(nodes, 1)
    dispatcher = WebhookDispatcher(us.node, transport=httpx.MockTransport(receiver))
    try:
        run(dispatcher)
    finally:
        dispatcher.close()
    assert receiver.attempts == 1 and receiver.seen == []
    assert "redirects are not followed" in (row(us, hook["id"]).last_error or "")


async def test_a_partner_pinned_at_the_address_since_stops_it(nodes: Pair) -> None:
    us = nodes.us
    hook = (await subscribe(us, "http://uk-aisi:8080/hook")).json()  # allowed, not the partner
    with us.node.db.session() as session:  # as if the partner moved to that address
        stored = session.get(Webhook, hook["id"])
        assert stored is not None
        stored.url = "http://uk-aisi/hook"
        session.add(stored)
    receiver = Receiver(secrets={"http://uk-aisi/hook": hook["secret"]})
    deliver(nodes, 1)
    dispatcher = WebhookDispatcher(us.node, transport=httpx.MockTransport(receiver))
    try:
        run(dispatcher)
    finally:
        dispatcher.close()
    assert receiver.attempts == 0  # nothing is sent to the partner's address
    # The partner's act, not the receiver's failure: retried later, not disabled for good (a
    # partner could otherwise disable a local receiver by signing its address).
    stopped = row(us, hook["id"])
    assert stopped.state == "failing" and "partner" in (stopped.last_error or "")
    assert audit(us, "webhook.disabled") == []


async def test_a_slow_receiver_does_not_hold_up_the_others(nodes: Pair) -> None:
    us = nodes.us
    slow = (await subscribe(us, "http://localhost:9/slow")).json()
    fast = (await subscribe(us)).json()
    gate = threading.Event()
    receiver = Receiver(
        secrets={"http://localhost:9/slow": slow["secret"], HOOK: fast["secret"]},
        gate={"http://localhost:9/slow": gate},
    )
    ids = deliver(nodes, 2)
    run_sequencer(us.node)
    dispatcher = WebhookDispatcher(us.node, transport=httpx.MockTransport(receiver))
    try:
        assert sorted(dispatcher.round()) == sorted([slow["id"], fast["id"]])
        for _ in range(100):  # the fast one finishes while the slow one waits
            if len([u for u, _p in receiver.seen if u == HOOK]) == 2:
                break
            threading.Event().wait(0.05)
        assert [p["data"]["artifact_id"] for u, p in receiver.seen if u == HOOK] == ids
        assert dispatcher.round() == []  # the slow one is still running: not claimed twice
        gate.set()
        for _ in range(100):
            if len(receiver.seen) == 4:
                break
            threading.Event().wait(0.05)
    finally:
        gate.set()
        dispatcher.close()
    assert [p["data"]["artifact_id"] for u, p in receiver.seen if u != HOOK] == ids
