"""When and where the delivery worker's requests run: lanes per partner, how rows are cut
into requests, and the backoff after a failure.

:class:`Lanes` are bulkheads: at most one lane in flight per key, each on its own thread (up to
``parallel`` lanes at once), its jobs run in order or, given ``per_lane``, that many at once on
threads of the lane's own (a lane that hangs holds only its own threads). A partner has two
keys: its large deliveries (each streamed in its own request) and everything else (batches of
small deliveries, notices, descriptors), so a small share does not wait behind a large one on
a slow link. The delivery worker (``federation/outbox.py``) starts a lane for the rows it claimed,
claims nothing more for a lane that still runs, and waits for none: a partner that is slow or
out of reach (a connect that waits out its timeout behind a partition, a large artifact on a
slow link) holds only its own deliveries, never another partner's; the pull worker's rule
(``PullLoops``), for pushes.

:func:`chunks` cuts a partner's small deliveries into batch requests; :func:`backoff` is how
long a row waits after a failed attempt.

What it does not do: decide what a job is, or bound how long one runs (the partner client's
timeouts do).
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from datetime import timedelta
from typing import TypeVar

from service.doorbell import Doorbell

__all__ = ["LANES_PARALLEL", "LARGE", "PER_LANE", "Lanes", "backoff", "chunks"]

log = logging.getLogger("entente.lanes")

LARGE = " (large)"  # a partner's lane key plus this: its large deliveries' lane
LANES_PARALLEL = 16  # lanes running at once (two a partner: small requests, large deliveries)
PER_LANE = 4  # a delivery lane's requests at once (a backlog's batches overlap)

T = TypeVar("T")


def chunks(
    items: list[T], max_items: int, max_bytes: int, size: Callable[[T], int]
) -> list[list[T]]:
    """``items`` in order, cut into requests of at most ``max_items`` items and ``max_bytes``
    bytes (an item larger than that alone)."""
    out: list[list[T]] = []
    current: list[T] = []
    total = 0
    for item in items:
        if current and (len(current) >= max_items or total + size(item) > max_bytes):
            out.append(current)
            current, total = [], 0
        current.append(item)
        total += size(item)
    if current:
        out.append(current)
    return out


def backoff(
    attempts: int,
    *,
    base: float,
    cap: float,
    retry_after: float | None = None,
    rng: random.Random | None = None,
) -> timedelta:
    """Exponential backoff with jitter: ``base`` * 2^(attempts-1) seconds, capped at ``cap``,
    times 0.5-1.5; never sooner than the partner's ``Retry-After``, which is itself capped at
    ``cap`` (a partner cannot park our deliveries for longer than we would)."""
    delay = min(cap, base * 2 ** min(attempts - 1, 30))
    seconds = delay * (rng or random).uniform(0.5, 1.5)
    if retry_after is not None:
        seconds = max(seconds, min(retry_after, cap))
    return timedelta(seconds=seconds)


class Lanes:
    """``bell`` rings each time a lane finishes; given, it is shared with whoever else announces
    work to the lanes' owner (new rows to deliver: :attr:`service.node.Node.deliveries`)."""

    def __init__(
        self, parallel: int, *, name: str, per_lane: int = 1, bell: Doorbell | None = None
    ) -> None:
        self._pool = ThreadPoolExecutor(max_workers=parallel, thread_name_prefix=name)
        self._name, self._per_lane = name, per_lane  # a lane's jobs at once (threads of its own)
        self._running: dict[str, Future[None]] = {}
        self._lock = threading.Lock()
        self._bell = bell if bell is not None else Doorbell()

    @property
    def finished(self) -> int:
        """How many times the bell has rung so far: lanes finished, and work announced by
        others ringing the same bell (for :meth:`wait_finished`)."""
        return self._bell.rings

    def wait_finished(self, after: int, timeout: float) -> bool:
        """Until the bell rings after ``after`` (a lane finished, or new work was announced), or
        ``timeout`` seconds; whether it had."""
        return self._bell.wait(after, timeout)

    def _done(self, _future: Future[None]) -> None:
        self._bell.ring()

    def busy(self) -> set[str]:
        """The partners whose lane is running (or waiting for a thread) now."""
        with self._lock:
            self._running = {k: f for k, f in self._running.items() if not f.done()}
            return set(self._running)

    def start(self, partner: str, jobs: Sequence[Callable[[], None]]) -> None:
        """Run ``jobs`` on a lane, up to ``per_lane`` at once (one: in order); ``partner`` must
        not be :meth:`busy`."""

        def run(job: Callable[[], None]) -> None:
            try:
                job()
            except Exception as exc:  # a job settles its own failures: this one is a defect
                log.exception("a job of %s lane %s failed: %s", self._name, partner, exc)

        def lane() -> None:
            if self._per_lane == 1 or len(jobs) == 1:
                for job in jobs:
                    run(job)
                return
            width = min(self._per_lane, len(jobs))
            with ThreadPoolExecutor(width, thread_name_prefix=f"{self._name}-lane") as pool:
                pool.map(run, jobs)

        with self._lock:
            running = self._running.get(partner)
            if running is not None and not running.done():
                raise RuntimeError(f"a lane of {partner} is running already")
            future = self._running[partner] = self._pool.submit(lane)
        future.add_done_callback(self._done)  # at once if done already: after the lock

    def wait(self) -> None:
        """Until every lane started so far has finished."""
        with self._lock:
            futures = list(self._running.values())
        wait(futures)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
