"""Background workers of ``entente serve``: started and stopped with the app's lifespan.

Each worker is an asyncio task that loops until :meth:`Workers.stop`; a worker that raises is
logged and restarted after a pause, so one bad row never stops delivery for everyone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from service.node import Node

__all__ = ["Workers"]

log = logging.getLogger("entente.workers")

Step = Callable[[], Awaitable[float]]  # does one round of work, returns seconds to sleep


class Workers:
    def __init__(self, node: Node) -> None:
        self.node = node
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = asyncio.Event()
        self._steps: dict[str, Step] = {}
        self._cleanups: list[Callable[[], None]] = []

    def add(self, name: str, step: Step) -> None:
        self._steps[name] = step

    def on_stop(self, cleanup: Callable[[], None]) -> None:
        self._cleanups.append(cleanup)

    async def _loop(self, name: str, step: Step) -> None:
        while not self._stopping.is_set():
            try:
                delay = await step()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("worker %s failed; retrying", name)
                delay = 5.0
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), timeout=max(delay, 0.0))

    async def start(self) -> None:
        for name, step in self._steps.items():
            self._tasks.append(asyncio.create_task(self._loop(name, step), name=f"entente-{name}"))

    async def stop(self) -> None:
        self._stopping.set()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        for cleanup in self._cleanups:
            try:
                cleanup()
            except Exception:
                log.exception("worker cleanup failed")
