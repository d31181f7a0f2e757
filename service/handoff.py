"""Work done on a helper thread and read, a few items ahead, through a generator: the thread
never outlives its reader.

Decrypting a stored artifact or an upload's segments is blocking work; its plaintext is read by
whoever streams it (an HTTP answer, a share being sealed, an onward copy). :func:`produced` runs
the work on a daemon thread that writes into a :class:`Handoff` (a bounded queue, so memory stays
a few chunks whatever the size) and yields what it writes. A reader may stop early: the client
went away, the share stopped at the body's closing boundary, a refusal. Every hand-over from
the thread then gives up within half a second (:class:`Stopped`), the last one (the end, or the
error met) included: a hand-over that waited on a full queue for ever leaked a thread, and what
it held, per stopped reader.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable, Generator

__all__ = ["Handoff", "Stopped", "produced"]

_WAIT = 0.5  # seconds a hand-over waits on a full queue before it looks whether to give up


class Stopped(Exception):
    """The reader stopped reading: the work ends here."""


class Handoff:
    """A bounded queue from one working thread to one reader; a file-like sink for its bytes."""

    def __init__(self, depth: int = 4) -> None:
        self.queue: queue.Queue[bytes | BaseException | None] = queue.Queue(maxsize=depth)
        self.stopped = threading.Event()

    def write(self, data: bytes | bytearray | memoryview, /) -> int:
        chunk = bytes(data)
        self.put(chunk)
        return len(chunk)

    def put(self, item: bytes | BaseException | None) -> None:
        """Hand ``item`` to the reader, or raise :class:`Stopped` once it has stopped reading."""
        while not self.stopped.is_set():
            try:
                self.queue.put(item, timeout=_WAIT)
                return
            except queue.Full:
                continue
        raise Stopped


def produced(
    work: Callable[[Handoff], None], *, name: str, depth: int = 4
) -> Generator[bytes, None, None]:
    """Run ``work`` on a daemon thread named ``name`` and yield the bytes it writes into its
    :class:`Handoff`, at most ``depth`` ahead; an exception it raises is raised here."""
    handoff = Handoff(depth)

    def run() -> None:
        end: BaseException | None = None  # None: the work is done
        try:
            work(handoff)
        except Stopped:
            return
        except BaseException as exc:  # handed to the reader
            end = exc
        with contextlib.suppress(Stopped):
            handoff.put(end)

    threading.Thread(target=run, name=name, daemon=True).start()
    try:
        while (item := handoff.queue.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        handoff.stopped.set()
