"""A doorbell between threads: whoever queues work rings it, the worker that waits for work
wakes at once instead of at its next poll.

A ring is counted, not a flag: a worker reads :attr:`Doorbell.rings` before it looks for work
and then waits for a ring after that count, so a ring that came while it looked is never lost.
Rings carry no data and may be spurious (the worker looks and finds nothing); the worker's poll
stays as the fallback for work a ring cannot announce (another process's rows, a retry whose
time has come).
"""

from __future__ import annotations

import threading

__all__ = ["Doorbell"]


class Doorbell:
    def __init__(self) -> None:
        self._changed = threading.Condition(threading.Lock())
        self._rings = 0

    @property
    def rings(self) -> int:
        """How many times it has rung so far (for :meth:`wait`)."""
        with self._changed:
            return self._rings

    def ring(self) -> None:
        with self._changed:
            self._rings += 1
            self._changed.notify_all()

    def wait(self, after: int, timeout: float) -> bool:
        """Until it has rung more than ``after`` times, or ``timeout`` seconds; whether it had."""
        with self._changed:
            return self._changed.wait_for(lambda: self._rings > after, timeout)
