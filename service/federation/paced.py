"""A partner's answer that must keep up: a minimum rate over windows of time spent waiting.

httpx's read timeout is per read: a partner sending one byte just inside it, again and again,
would hold our pull (or a delivery's reply) for as long as it likes, and with it one of the
pull's slots (``service.federation.pull.PullLoops``). :class:`PacedStream` wraps the body of
every answer :class:`service.federation.client.PartnerClient` reads and ends it with
:class:`PartnerUnavailableError` once a window of ``window_seconds`` spent waiting for it
brought less than ``min_rate`` bytes per second: the rule, and the settings
(``request_body_min_rate``, ``request_body_rate_window_seconds``), that bound a body sent to
us. Only time spent waiting for the partner counts, never ours spent on what it sent; what a
cut download brought is kept (``service.federation.partial``) and resumed next round.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import httpx

from service.errors import PartnerUnavailableError

__all__ = ["PacedStream", "paced"]


def paced(
    chunks: Iterator[bytes],
    *,
    min_rate: int,
    window_seconds: float,
    too_slow: Callable[[int, float], Exception],
) -> Iterator[bytes]:
    """``chunks``, ended with ``too_slow(bytes, seconds)`` once a window of ``window_seconds``
    spent waiting for them brought less than ``min_rate`` bytes per second (0: no minimum);
    only the time spent waiting in ``next`` counts."""
    need = min_rate * window_seconds  # bytes per window
    waited, got = 0.0, 0
    while True:
        started = time.monotonic()
        chunk = next(chunks, None)
        if chunk is None:
            return
        waited += time.monotonic() - started
        got += len(chunk)
        if got >= need:  # this window's due is paid: a new window starts
            waited, got = 0.0, 0
        elif waited >= window_seconds:
            raise too_slow(got, waited)
        yield chunk


class PacedStream(httpx.SyncByteStream):
    """``stream``, ended when ``partner`` sends it slower than ``min_rate`` bytes per second
    over a window of ``window_seconds`` spent waiting (``min_rate`` 0: no minimum)."""

    def __init__(
        self, stream: httpx.SyncByteStream, partner: str, *, min_rate: int, window_seconds: float
    ) -> None:
        self.stream = stream
        self.partner = partner
        self.min_rate = min_rate
        self.window_seconds = window_seconds

    def __iter__(self) -> Iterator[bytes]:
        def too_slow(got: int, waited: float) -> Exception:
            return PartnerUnavailableError(
                f"{self.partner} sent {got} bytes in {waited:.1f} s, under the minimum of "
                f"{self.min_rate} bytes per second (ENTENTE_REQUEST_BODY_MIN_RATE)"
            )

        yield from paced(
            iter(self.stream),
            min_rate=self.min_rate,
            window_seconds=self.window_seconds,
            too_slow=too_slow,
        )

    def close(self) -> None:
        self.stream.close()
