"""The Inspect hook: each finished task's evaluation log, shared through an Entente node.

Inspect imports this module at start-up through the package's ``inspect_ai`` entry point
(pyproject.toml), which registers :class:`ShareLogs` with ``inspect_ai.hooks``. It is enabled
only when ``ENTENTE_INSPECT_PARTNERS`` names partners; then, when a task ends (and, for a run
that ended in an exception before its tasks reported, when the run ends), it shares the task's
log file as ``entente share`` would: the header's summary in the signed manifest, the log
itself encrypted, under the node's policies. Its configuration, from the environment:

=============================  ==================================================================
``ENTENTE_URL``                the node's base URL
``ENTENTE_TOKEN``              a publisher's token
``ENTENTE_INSPECT_PARTNERS``   partner node ids, comma-separated (enables the hook)
``ENTENTE_INSPECT_TLP``        the TLP 2.0 label of every log shared (``TLP:AMBER``, ...)
``ENTENTE_INSPECT_TOPICS``     topics, comma-separated (default: ``evaluation``)
``ENTENTE_INSPECT_PURPOSES``   purposes, comma-separated (default: ``evaluation``)
``ENTENTE_INSPECT_RETRIES``    times to send again after a lost connection (default: 2)
=============================  ==================================================================

Each outcome is one line on the ``entente.inspect`` logger at WARNING, the level Inspect shows
by default: the artifact id, or the refusal (a policy denial with its rule and MOU clause).
A failing share never fails the evaluation: every error is caught and reported that way.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import anyio.to_thread
from inspect_ai.hooks import Hooks, RunEnd, TaskEnd, hooks

from service.client import Client
from service.errors import EntenteError, UsageError
from service.evaluations import NotAnEvaluationLogError, read_summary

__all__ = ["HookConfig", "ShareLogs", "share_log"]

logger = logging.getLogger("entente.inspect")


def _items(value: str | None) -> tuple[str, ...]:
    return tuple(item.strip() for item in (value or "").split(",") if item.strip())


@dataclass(frozen=True)
class HookConfig:
    """Where and how the hook shares: the node, a publisher's token, the partners and terms."""

    url: str
    token: str
    partners: tuple[str, ...]
    tlp: str
    topics: tuple[str, ...] = ("evaluation",)
    purposes: tuple[str, ...] = ("evaluation",)
    retries: int = 2

    @classmethod
    def from_environment(cls, env: Mapping[str, str]) -> HookConfig:
        """The configuration ``env`` gives; :class:`~service.errors.UsageError` naming what
        is missing."""
        missing = [
            name
            for name in ("ENTENTE_URL", "ENTENTE_TOKEN", "ENTENTE_INSPECT_TLP")
            if not env.get(name)
        ]
        if missing:
            raise UsageError(f"set {', '.join(missing)} to share evaluation logs")
        try:
            retries = int(env.get("ENTENTE_INSPECT_RETRIES", "2"))
        except ValueError:
            raise UsageError("ENTENTE_INSPECT_RETRIES is a number") from None
        return cls(
            url=env["ENTENTE_URL"],
            token=env["ENTENTE_TOKEN"],
            partners=_items(env.get("ENTENTE_INSPECT_PARTNERS")),
            tlp=env["ENTENTE_INSPECT_TLP"],
            topics=_items(env.get("ENTENTE_INSPECT_TOPICS")) or ("evaluation",),
            purposes=_items(env.get("ENTENTE_INSPECT_PURPOSES")) or ("evaluation",),
            retries=max(0, min(retries, 20)),
        )


def share_log(config: HookConfig, location: str) -> str:
    """Share the log at ``location`` under ``config``; the line that reports the outcome.
    Raises :class:`~service.errors.EntenteError` when the node refuses or cannot be reached."""
    path = Path(location.removeprefix("file://"))
    if not path.is_file():
        raise UsageError(f"the log {location} is not a local file")
    try:
        summary = read_summary(path)
    except NotAnEvaluationLogError as exc:
        logger.warning("entente: %s; sharing it without a summary", exc)
        summary = None
    with Client(config.url, config.token, retries=config.retries) as client:
        result = client.share(
            path, to=config.partners, tlp=config.tlp, topics=config.topics,
            purposes=config.purposes, evaluation=summary,
        )  # fmt: skip
    if result.approval is not None:
        return (
            f"entente: {path.name} is stored as {result.approval.artifact_id} and waits for a "
            f"second approver (entente approvals approve {result.approval.id})"
        )
    return (
        f"entente: shared {path.name} as {result.id} with {', '.join(config.partners)} "
        f"({result.raw.get('tlp')})"
    )


@hooks(name="entente", description="Shares each finished task's log through an Entente node.")
class ShareLogs(Hooks):
    """Shares each finished task's log once (see the module's docstring)."""

    def __init__(self) -> None:
        self._done: set[str] = set()  # eval ids already shared (or refused) in this process

    def enabled(self) -> bool:
        return bool(_items(os.environ.get("ENTENTE_INSPECT_PARTNERS")))

    async def on_task_end(self, data: TaskEnd) -> None:
        await self._share(data.eval_id, data.log.location)

    async def on_run_end(self, data: RunEnd) -> None:
        # A task that ended in an exception reports no task end: its log is shared here.
        for log in data.logs:
            await self._share(log.eval.eval_id, log.location)

    async def _share(self, eval_id: str, location: str | None) -> None:
        if eval_id in self._done:
            return
        self._done.add(eval_id)
        try:
            if not location:
                raise UsageError("the task wrote no log file")
            config = HookConfig.from_environment(os.environ)
            line = await anyio.to_thread.run_sync(share_log, config, location)
        except EntenteError as exc:
            logger.warning("entente: the log was not shared: %s", exc)
        except Exception as exc:  # a failing share never fails the evaluation
            logger.warning("entente: the log was not shared: %s: %s", type(exc).__name__, exc)
        else:
            logger.warning("%s", line)
