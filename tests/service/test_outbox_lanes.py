"""The delivery worker's lanes: a partner that does not answer holds only its own deliveries.

Found under real network conditions (tests/integration/test_netns.py): the worker used to
wait for every request of a round before claiming the next rows, so one partner behind a
partition (a connect that waits out its timeout) or on a slow link (a 3 MB artifact at
2 Mbit/s) delayed the deliveries to every other partner by as long.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from service.artifacts.revoke import revoke_artifact
from service.doorbell import Doorbell
from service.federation.client import DELIVERY_TYPE, PartnerClient
from service.federation.outbox import BATCH_ITEM_MAX_BYTES, OutboxWorker
from service.federation.schedule import LARGE, Lanes, backoff, chunks
from tests.service.nodekit import Kit, make_node, pin
from tests.service.test_federation_sync import (
    PUBLISHER,
    PortalTransport,
    accepted,
    outbox,
    share,
)

HANG_SECONDS = 60.0  # at most, if the test fails to release the partner


class Hanging(httpx.BaseTransport):
    """``inner``, except that requests to ``host`` (of media type ``only``, if given) wait until
    ``release`` is set (a partner behind a partition: the connect waits out its timeout; or a
    large artifact on a slow link)."""

    def __init__(self, inner: httpx.BaseTransport, host: str, only: str | None = None) -> None:
        self.inner, self.host, self.only = inner, host, only
        self.entered, self.release = threading.Event(), threading.Event()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        media = request.headers.get("content-type", "").split(";")[0].strip()
        if request.url.host == self.host and self.only in (None, media):
            self.entered.set()
            self.release.wait(HANG_SECONDS)
        return self.inner.handle_request(request)


@pytest.fixture
def three(tmp_path: Path, db_url: str) -> Iterator[tuple[Kit, Kit, Kit, Hanging]]:
    """The origin (uk, on each database: the claim is SQL) and two partners."""
    uk = make_node(tmp_path, "uk-aisi", db_url=db_url)
    us, ca = (make_node(tmp_path, n) for n in ("us-aisi", "ca-aisi"))
    for a, b in ((uk, us), (us, uk), (uk, ca), (ca, uk)):
        pin(a, b)
    portal = PortalTransport({"uk-aisi": uk.app, "us-aisi": us.app, "ca-aisi": ca.app})
    hanging = Hanging(portal, "ca-aisi")
    yield uk, us, ca, hanging
    hanging.release.set()
    portal.close()


def wait_until(check: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.02)
    raise AssertionError("timed out")


def test_a_partner_that_hangs_delays_only_its_own_deliveries(
    three: tuple[Kit, Kit, Kit, Hanging],
) -> None:
    uk, us, ca, hanging = three
    worker = OutboxWorker(uk.node, PartnerClient(uk.node, http=httpx.Client(transport=hanging)))
    try:
        [to_ca] = share(uk, to="ca-aisi")
        assert worker.step() == 1  # ca's lane starts and hangs
        assert hanging.entered.wait(30)
        [to_us] = share(uk, to="us-aisi")
        assert worker.step() == 1  # only us's row: ca's lane is still running
        wait_until(lambda: {r.partner: r.state for r in outbox(uk)}["us-aisi"] == "delivered")
        assert accepted(us) == {to_us: 1}
        rows = {r.partner: r for r in outbox(uk)}
        assert rows["ca-aisi"].state == "pending" and rows["ca-aisi"].lease_owner == worker.owner
        assert worker.lanes.busy() == {"ca-aisi"}
        assert worker.step() == 0  # nothing due but ca's row, and its lane is busy
        hanging.release.set()
        started = time.monotonic()
        worker.pause(HANG_SECONDS)  # the deliver loop's wait ends with ca's lane, not later
        assert time.monotonic() - started < HANG_SECONDS / 2
        assert not worker.lanes.busy()
    finally:
        hanging.release.set()
        worker.close()
    assert {r.partner: r.state for r in outbox(uk)} == {
        "ca-aisi": "delivered",
        "us-aisi": "delivered",
    }
    assert accepted(ca) == {to_ca: 1}


def test_a_large_delivery_in_flight_does_not_hold_small_ones_to_the_same_partner(
    three: tuple[Kit, Kit, Kit, Hanging],
) -> None:
    uk, _us, ca, portal_hanging = three
    hanging = Hanging(portal_hanging.inner, "ca-aisi", only=DELIVERY_TYPE)  # streamed ones only
    worker = OutboxWorker(uk.node, PartnerClient(uk.node, http=httpx.Client(transport=hanging)))
    try:
        [large] = share(uk, to="ca-aisi", size=BATCH_ITEM_MAX_BYTES + 1024)
        assert worker.step() == 1
        assert hanging.entered.wait(30)
        assert worker.lanes.busy() == {"ca-aisi" + LARGE}
        [small] = share(uk, to="ca-aisi")
        assert worker.step() == 1  # the small one, in ca's other lane
        wait_until(lambda: accepted(ca) == {small: 1})
        assert worker.step() == 0  # the large one is still in flight, not claimed again
        hanging.release.set()
        wait_until(lambda: not worker.lanes.busy())
    finally:
        hanging.release.set()
        worker.close()
    assert accepted(ca) == {small: 1, large: 1}
    assert {r.artifact_id: r.state for r in outbox(uk)} == {small: "delivered", large: "delivered"}


def test_run_once_still_waits_for_every_lane(three: tuple[Kit, Kit, Kit, Hanging]) -> None:
    uk, us, ca, hanging = three
    hanging.release.set()
    worker = OutboxWorker(uk.node, PartnerClient(uk.node, http=httpx.Client(transport=hanging)))
    try:
        ids = share(uk, 2, to="ca-aisi") + share(uk, 2, to="us-aisi")
        assert worker.run_once() == 4
    finally:
        worker.close()
    assert all(r.state == "delivered" for r in outbox(uk))
    assert accepted(ca) | accepted(us) == dict.fromkeys(ids, 1)


def test_a_lane_runs_its_jobs_in_order_and_one_at_a_time_per_partner() -> None:
    lanes = Lanes(4, name="test-lanes")
    done: list[int] = []
    gate = threading.Event()
    try:
        lanes.start("a", [gate.wait, lambda: done.append(1), lambda: done.append(2)])
        assert lanes.busy() == {"a"}
        with pytest.raises(RuntimeError, match="running already"):
            lanes.start("a", [lambda: done.append(3)])
        lanes.start("b", [lambda: done.append(9)])
        wait_until(lambda: done == [9])  # b does not wait for a
        gate.set()
        lanes.wait()
        assert done == [9, 1, 2] and lanes.busy() == set()
    finally:
        gate.set()
        lanes.close()


@pytest.mark.parametrize(
    ("attempts", "retry_after", "low", "high"),
    [
        (1, None, 0.5, 1.5),  # base 1 s, jitter 0.5-1.5
        (3, None, 2.0, 6.0),  # 4 s
        (10, None, 5.0, 15.0),  # capped at 10 s
        (1, 8.0, 8.0, 8.0),  # the partner's Retry-After, when later
        (1, 1000.0, 10.0, 10.0),  # ... itself capped
    ],
)
def test_backoff(attempts: int, retry_after: float | None, low: float, high: float) -> None:
    for seed in range(20):
        wait = backoff(
            attempts,
            base=1.0,
            cap=10.0,
            retry_after=retry_after,
            rng=random.Random(seed),  # noqa: S311
        ).total_seconds()
        assert low <= wait <= high, (seed, wait)


def test_chunks_cut_by_count_and_bytes_in_order() -> None:
    sizes = [5, 5, 5, 20, 1, 1, 1]
    assert chunks(sizes, 2, 12, lambda n: n) == [[5, 5], [5], [20], [1, 1], [1]]
    assert chunks([], 2, 12, lambda n: n) == []


def test_wait_finished_ends_when_a_lane_ends_or_at_the_timeout() -> None:
    lanes = Lanes(2, name="test-lanes")
    gate = threading.Event()
    try:
        seen = lanes.finished
        lanes.start("a", [gate.wait])
        started = time.monotonic()
        assert not lanes.wait_finished(seen, 0.2)  # still running: the timeout
        assert time.monotonic() - started >= 0.2
        threading.Timer(0.1, gate.set).start()
        started = time.monotonic()
        assert lanes.wait_finished(seen, HANG_SECONDS)
        assert time.monotonic() - started < HANG_SECONDS / 2
        assert lanes.finished == seen + 1
        assert lanes.wait_finished(seen, 0)  # already: at once
    finally:
        gate.set()
        lanes.close()


def test_a_ring_of_the_shared_doorbell_ends_the_wait_as_a_lane_ending_does() -> None:
    bell = Doorbell()
    lanes = Lanes(2, name="test-lanes", bell=bell)
    try:
        seen = lanes.finished
        threading.Timer(0.1, bell.ring).start()  # new work announced, no lane running
        started = time.monotonic()
        assert lanes.wait_finished(seen, HANG_SECONDS)
        assert time.monotonic() - started < HANG_SECONDS / 2
        assert lanes.finished == bell.rings == seen + 1
        lanes.start("a", [lambda: None])  # a lane ending rings the same bell
        assert bell.wait(seen + 1, HANG_SECONDS)
    finally:
        lanes.close()


def test_a_share_and_a_revocation_ring_the_delivery_doorbell(tmp_path: Path) -> None:
    uk, us = make_node(tmp_path, "uk-aisi"), make_node(tmp_path, "us-aisi")
    pin(uk, us)
    bell = uk.node.deliveries
    rings = bell.rings
    (art,) = share(uk)
    assert bell.rings == rings + 1
    revoke_artifact(uk.node, art, principal=PUBLISHER, reason="superseded")
    assert bell.rings == rings + 2
    revoke_artifact(uk.node, art, principal=PUBLISHER, reason="again")  # nothing new queued
    assert bell.rings == rings + 2


def test_a_lane_with_per_lane_runs_that_many_of_its_jobs_at_once() -> None:
    lanes = Lanes(2, name="test-lanes", per_lane=2)
    both = threading.Barrier(2, timeout=HANG_SECONDS / 2)  # passes only if two run at once
    passed: list[int] = []
    try:
        lanes.start("a", [lambda: passed.append(both.wait()), lambda: passed.append(both.wait())])
        lanes.wait()
    finally:
        lanes.close()
    assert sorted(passed) == [0, 1]


@pytest.mark.parametrize("per_lane", [1, 2])
def test_a_job_that_raises_is_logged_and_the_lane_goes_on(
    per_lane: int, caplog: pytest.LogCaptureFixture
) -> None:
    """A lane's job is expected to settle its own failures; one that raises anyway is logged
    with its stack trace, never dropped silently with the lane's future, and the lane's other
    jobs still run (in order, one at a time)."""
    lanes = Lanes(2, name="test-lanes", per_lane=per_lane)
    done: list[int] = []

    def broken() -> None:
        raise RuntimeError("boom")

    try:
        with caplog.at_level("ERROR", logger="entente.lanes"):
            lanes.start("uk-aisi", [broken, lambda: done.append(1), lambda: done.append(2)])
            lanes.wait()
    finally:
        lanes.close()
    assert sorted(done) == [1, 2]
    [said] = [r for r in caplog.records if r.name == "entente.lanes"]
    assert said.getMessage() == "a job of test-lanes lane uk-aisi failed: boom"
    assert said.exc_info is not None
