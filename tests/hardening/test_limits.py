"""Abuse limits, each configurable and each refusing with a problem document: per-token and
per-partner request rates, a partner's daily delivery volume (default and per-MOU cap), the
replay (nonce) cache, page sizes and stalled request bodies."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest

from service.audit.sequencer import run_sequencer
from service.errors import RateLimitedError
from service.federation.signing import purge_nonces
from service.limits import RateLimiter, volume_used
from service.tokens import Role, create_token
from tests.hardening.kit import (
    DELIVERY_TYPE,
    Trio,
    audit_since,
    delivery,
    share,
    signed,
    snapshot,
    trio,
)
from tests.service.nodekit import UPLOAD_HEADERS, upload_body


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def assert_problem(r: httpx.Response, status: int, reason: str | None = None) -> dict[str, object]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"
    doc: dict[str, object] = r.json()
    assert doc["status"] == status
    if reason is not None:
        assert doc.get("reason") == reason, doc
    return doc


# --- the token bucket itself ---------------------------------------------------------------------


def test_bucket_bursts_a_minute_then_refills_at_the_rate() -> None:
    clock = FakeClock()
    limiter = RateLimiter(60, clock=clock)  # one per second, 60 of burst
    for _ in range(60):
        limiter.take("a")
    with pytest.raises(RateLimitedError) as first:
        limiter.take("a")
    assert first.value.extra["retry_after"] == 1
    assert first.value.quiet is False  # the first refusal of a burst is audited
    with pytest.raises(RateLimitedError) as second:
        limiter.take("a")
    assert second.value.quiet is True  # later ones only counted
    limiter.take("b")  # another key has its own bucket
    clock.now += 1.0
    limiter.take("a")  # one token back after one second
    with pytest.raises(RateLimitedError) as again:
        limiter.take("a")
    assert again.value.quiet is False  # a new burst after an allowed request


def test_bucket_count_is_bounded() -> None:
    limiter = RateLimiter(1, max_buckets=100, clock=FakeClock())
    for i in range(1000):
        limiter.take(f"key-{i}")
    assert len(limiter) == 100


# --- per token -----------------------------------------------------------------------------------


async def test_per_token_rate_limit(tmp_path: Path) -> None:
    nodes = trio(tmp_path, rate_limit_per_minute=5)
    uk = nodes.uk
    before = snapshot(uk.node)
    async with uk.client() as c:
        for _ in range(5):
            r = await c.get("/v1/partners", headers=uk.auth(Role.READER))
            assert r.status_code == 200
        refused = [await c.get("/v1/partners", headers=uk.auth(Role.READER)) for _ in range(3)]
        for r in refused:
            assert_problem(r, 429, "rate")
            assert int(r.headers["retry-after"]) >= 1
        # Per token: another token of the same role is not affected.
        with uk.node.db.session() as session:
            _row, other = create_token(
                session, role=Role.READER, name="reader-2", now=uk.node.now(), actor="test"
            )
        r = await c.get("/v1/partners", headers={"Authorization": f"Bearer {other}"})
        assert r.status_code == 200
    events = [e for e in audit_since(uk.node, before) if e["kind"] == "request.refused"]
    assert len(events) == 1  # one audit event per burst
    assert events[0]["rule"] == "rate-limited" and events[0]["actor"].startswith("reader:")
    metrics = uk.node.metrics.refusals.labels("rate-limited")._value.get()
    assert metrics == 3


# --- per partner ---------------------------------------------------------------------------------


async def _feed(nodes: Trio, sender: str) -> httpx.Response:
    node = getattr(nodes, sender).node
    path = "/federation/v1/feed?after=0"
    async with nodes.uk.client() as c:
        return await c.get(path, headers=signed(node, nodes.uk.node, "GET", path))


async def test_per_partner_rate_limit(tmp_path: Path) -> None:
    nodes = trio(tmp_path, rate_limit_per_minute=4)
    for _ in range(4):
        assert (await _feed(nodes, "us")).status_code == 200
    r = await _feed(nodes, "us")
    assert_problem(r, 429, "rate")
    assert "partner:us-aisi" in str(r.json()["detail"])
    assert (await _feed(nodes, "ca")).status_code == 200  # per partner


# --- volume --------------------------------------------------------------------------------------


async def _deliver(nodes: Trio, sender: str, artifact_id: str) -> httpx.Response:
    origin = getattr(nodes, sender)
    manifest, ciphertext = delivery(origin, artifact_id)
    body = manifest + b"\n" + ciphertext
    path = "/federation/v1/inbox"
    headers = signed(
        origin.node, nodes.uk.node, "POST", path, body, **{"Content-Type": DELIVERY_TYPE}
    )
    async with nodes.uk.client() as c:
        return await c.post(path, content=body, headers=headers)


async def test_daily_volume_cap_per_partner(tmp_path: Path) -> None:
    """us-aisi's MOU caps it at a little over one delivery a day; ca-aisi has the default."""
    content = b"volume " * 2000
    green = {"partners": ["uk-aisi"], "tlp": "TLP:GREEN"}
    probe = trio(tmp_path / "probe")
    sample = await share(probe.us, content, **green)
    one = len(b"\n".join(delivery(probe.us, sample["id"])))
    nodes = trio(tmp_path / "capped", volume_limits_by_partner={"us-aisi": one + one // 2})
    first = await share(nodes.us, content, **green)
    second = await share(nodes.us, content, **green)
    assert (await _deliver(nodes, "us", first["id"])).status_code == 201
    before = snapshot(nodes.uk.node)
    r = await _deliver(nodes, "us", second["id"])
    doc = assert_problem(r, 429, "volume")
    assert doc["limit"] == one + one // 2 and doc["used"] == len(delivery(nodes.us, first["id"])[1])
    retry = int(r.headers["retry-after"])
    assert 1 <= retry <= 86400  # until 00:00 UTC
    after = snapshot(nodes.uk.node)
    assert (after.rows, after.blobs, after.temporary) == (
        before.rows,
        before.blobs,
        before.temporary,
    )
    refused = [e for e in audit_since(nodes.uk.node, before) if e["kind"] == "request.refused"]
    assert refused and refused[0]["partner"] == "us-aisi" and refused[0]["rule"] == "rate-limited"
    # The default cap applies to a partner without its own.
    theirs = await share(nodes.ca, content, **green)
    assert (await _deliver(nodes, "ca", theirs["id"])).status_code == 201
    # A new UTC day, a new budget.
    real = nodes.uk.node.clock
    for kit in (nodes.uk, nodes.us):  # both clocks, or the signature is a day old
        kit.node.clock = lambda: real() + timedelta(days=1)
    with nodes.uk.node.db.session() as session:
        assert volume_used(session, "us-aisi", now=nodes.uk.node.now()) == 0
    assert (await _deliver(nodes, "us", second["id"])).status_code == 201


# --- replay cache --------------------------------------------------------------------------------


async def test_nonce_cache_is_bounded(tmp_path: Path) -> None:
    nodes = trio(tmp_path, nonce_cache_size=100, rate_limit_per_minute=10_000)
    for _ in range(100):
        assert (await _feed(nodes, "us")).status_code == 200
    r = await _feed(nodes, "us")
    assert_problem(r, 429, "nonce-cache")  # refused rather than forgetting a live nonce
    # Once the nonces have expired and are purged, requests are accepted again.
    real = nodes.uk.node.clock
    nodes.uk.node.clock = lambda: real() + timedelta(hours=1)
    assert purge_nonces(nodes.uk.node) == 100
    nodes.uk.node.clock = real
    assert (await _feed(nodes, "us")).status_code == 200


# --- page sizes ----------------------------------------------------------------------------------


async def test_page_sizes(tmp_path: Path) -> None:
    nodes = trio(tmp_path, page_size_default=2, page_size_max=3)
    uk = nodes.uk
    for i in range(4):
        await share(uk, f"page {i}".encode())
    async with uk.client() as c:
        page = (await c.get("/v1/artifacts", headers=uk.auth(Role.READER))).json()
        assert len(page["items"]) == 2 and page["next_cursor"]
        page = (await c.get("/v1/artifacts?limit=100", headers=uk.auth(Role.READER))).json()
        assert len(page["items"]) == 3  # clamped to the maximum
        run_sequencer(uk.node)
        r = await c.get("/audit/v1/entries?limit=4", headers=uk.auth(Role.AUDITOR))
        assert_problem(r, 422)
        r = await c.get("/audit/v1/entries", headers=uk.auth(Role.AUDITOR))
        assert len(r.json()["entries"]) == 2 and r.json()["next"]


# --- stalled bodies ------------------------------------------------------------------------------


async def test_stalled_upload_times_out(tmp_path: Path) -> None:
    nodes = trio(tmp_path, request_body_idle_seconds=0.3)
    uk = nodes.uk
    body = upload_body('{"title": "t", "tlp": "TLP:GREEN", "partners": ["us-aisi"]}', b"x" * 10)
    before = snapshot(uk.node)

    async def stalls() -> AsyncIterator[bytes]:
        yield body[: len(body) // 2]
        await asyncio.sleep(1.5)
        yield body[len(body) // 2 :]

    async with uk.client() as c:
        r = await c.post(
            "/v1/artifacts", content=stalls(), headers={**UPLOAD_HEADERS, **uk.auth(Role.PUBLISHER)}
        )
    assert_problem(r, 408)
    after = snapshot(uk.node)
    assert (after.rows, after.blobs, after.temporary) == (
        before.rows,
        before.blobs,
        before.temporary,
    )
    assert [e["rule"] for e in audit_since(uk.node, before)] == ["request-timeout"]
