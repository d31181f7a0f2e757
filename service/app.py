"""The composition root: the node's app, its background work and the lock that elects one
process to run it.

``create_app(node)`` composes the HTTP surfaces (``service.api``, the JSON API, and
``service.console``, the operator's HTML console, siblings that never import each other), the
problem-document handlers (with the federation router's finisher, which signs the refusals a
partner receives) and the middleware; the node (settings, keys, database) is built by the caller
and kept on ``app.state``.

All background work is registered here, in :func:`register_workers`: the audit sequencer, the
submission of checkpoints to partners' witnesses, outbox delivery, feed pulls, webhook
deliveries (``service.webhooks``), the purge (of
replay nonces and of idempotency keys past their time) and retention (deleting the ciphertext
that expiry, ``retain_max`` or a revocation no longer allows the node to hold); the start-up
sweep of the blob store runs once beside them. None of it holds up the node's own start: the
workers are started by a task beside the server, so a partner that is down (whose witness or
feed a first round waits on) never delays ``/healthz``. Each worker is an asyncio task that
loops until :meth:`Workers.stop`; a worker that raises is logged and restarted after a pause, so
one bad row never stops delivery for everyone.

``app_from_environment()`` is the same app for a server that imports it by name and runs several
processes (``entente serve --workers N``, or ``uvicorn --factory
service.app:app_from_environment``): each process loads the node from ``ENTENTE_*``
settings, and the background workers run in one of them only, the one holding the lock file
``<home>/background.lock`` (another takes over if that process dies and the lock is freed).

This module does no domain work itself: it only wires what the packages provide.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio.to_thread
from fastapi import FastAPI

from service.api import admin, approvals, artifacts, events, federation, public, webhooks
from service.api import partners as partners_api
from service.api import uploads as uploads_api
from service.api.answer_headers import AnswerHeaders
from service.api.audit import router as audit_router
from service.api.audit_export import router as audit_export_router
from service.api.bounds import RequestBounds
from service.api.problems import document_problems, install_problem_handlers
from service.api.signed import signed_problems
from service.api.witness import held_router as witness_held_router
from service.api.witness import router as witness_router
from service.artifacts.approvals import expire_due
from service.artifacts.retention import RetentionWorker
from service.artifacts.sweep import sweep_in_background
from service.audit.refusals import RefusalLedger
from service.audit.rollback import check_unconfirmed
from service.audit.sequencer import run_sequencer
from service.audit.submission import SignedWitnessTransport, submission_step
from service.console import router as console_router
from service.db import DATABASE_UNAVAILABLE, say_unavailable
from service.federation.client import PartnerClient
from service.federation.outbox import OutboxWorker
from service.federation.pull import PullLoops
from service.federation.signing import purge_nonces
from service.idempotency import purge_expired
from service.limits import Limits
from service.metrics import Metrics
from service.node import Node
from service.policy_store import PolicyScope
from service.uploads import purge_expired as purge_uploads
from service.webhooks import WebhookDispatcher

__all__ = ["BACKGROUND_LOCK", "Workers", "app_from_environment", "create_app", "register_workers"]

log = logging.getLogger("entente.app")
worker_log = logging.getLogger("entente.workers")

Lifespan = Callable[[FastAPI], Awaitable[None]]

BACKGROUND_LOCK = "background.lock"  # file in the home: held by the process running the workers
LOCK_RETRY_SECONDS = 2.0  # seconds between attempts of a process waiting for that lock


# ---------------------------------------------------------------------------------------------
# Background work: every worker of the node, registered in this one place

Step = Callable[[], Awaitable[float]]  # does one round of work, returns seconds to sleep
RETRY_SECONDS = 5.0  # after a round that failed


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
            except DATABASE_UNAVAILABLE as exc:  # busy or gone: no stack trace, just why
                say_unavailable(
                    worker_log, exc, "worker %s", name, then=f"retrying in {RETRY_SECONDS:.0f} s"
                )
                delay = RETRY_SECONDS
            except Exception:
                worker_log.exception("worker %s failed; retrying", name)
                delay = RETRY_SECONDS
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
                worker_log.exception("worker cleanup failed")


def register_workers(workers: Workers, node: Node, *, witness_transport: Any = None) -> Any:
    """Add every background worker of the node to ``workers``.

    Each new checkpoint is submitted to every pinned partner's witness through
    ``witness_transport`` (a :class:`service.audit.submission.WitnessTransport`; default: the
    RFC 9421-signed :class:`service.audit.submission.SignedWitnessTransport`). Every partner
    call, the default transport's included, goes through one
    :class:`service.federation.client.PartnerClient`, closed when the workers stop. Returns
    the transport, for the caller to close (``aclose``, when it has one) once the workers have
    stopped.
    """
    settings = node.settings

    asked_at = -1e9  # when the witnesses unconfirmed since a restore were last asked

    async def sequencer() -> float:
        nonlocal asked_at
        if time.monotonic() - asked_at >= 10.0:  # service.audit.rollback; none: no request
            asked_at = time.monotonic()
            try:
                await asyncio.to_thread(check_unconfirmed, node)
            except Exception:
                log.exception("asking the witnesses unconfirmed since the restore failed")
        result = await asyncio.to_thread(run_sequencer, node)
        return 0.0 if result.more else settings.checkpoint_interval_seconds

    client = PartnerClient(node)
    transport = witness_transport or SignedWitnessTransport(client)
    outbox = OutboxWorker(node, client)
    pulls = PullLoops(node, client)

    async def deliver() -> float:
        if await anyio.to_thread.run_sync(outbox.step):  # starts lanes, waits for none
            return 0.0
        # Nothing claimed: until a lane finishes (its partner's next rows may wait) or the poll.
        pause = settings.sync_interval_seconds
        await anyio.to_thread.run_sync(outbox.pause, pause, abandon_on_cancel=True)
        return 0.0

    async def pull() -> float:
        await anyio.to_thread.run_sync(pulls.round)  # starts each due partner's pull
        return pulls.until_next()

    async def purge() -> float:
        await anyio.to_thread.run_sync(purge_nonces, node)
        await anyio.to_thread.run_sync(purge_expired, node)  # idempotency keys past their time
        await anyio.to_thread.run_sync(purge_uploads, node)  # resumable uploads past their time
        return 60.0

    retention_rounds = RetentionWorker(node)

    async def retention() -> float:
        result = await anyio.to_thread.run_sync(retention_rounds.run_once)
        return 0.0 if result.more else settings.retention_interval_seconds

    async def expire_approvals() -> float:
        await anyio.to_thread.run_sync(expire_due, node)
        return 60.0

    dispatcher = WebhookDispatcher(node)

    async def notify() -> float:
        await anyio.to_thread.run_sync(dispatcher.round)  # starts each due webhook's delivery
        return settings.webhook_poll_seconds

    workers.add("audit-sequencer", sequencer)
    workers.add("audit-witness-submit", submission_step(node, transport))
    workers.add("deliver", deliver)
    workers.add("pull", pull)
    workers.add("purge", purge)  # replay nonces, idempotency keys, expired uploads
    workers.add("retention", retention)
    workers.add("approvals-expire", expire_approvals)
    workers.add("webhooks", notify)
    workers.on_stop(outbox.close)
    workers.on_stop(pulls.close)
    workers.on_stop(dispatcher.close)
    workers.on_stop(client.close)
    return transport


class _Background:
    """This process's background workers: started at once, or, given a lock file, only while
    this process holds an exclusive ``flock`` on it (one process of a multi-process server)."""

    def __init__(self, node: Node, lock: Path | None) -> None:
        self.node = node
        self.lock = lock
        self._fd: int | None = None
        self._workers: Any = None
        self._transport: Any = None
        self._waiting: asyncio.Task[None] | None = None

    def _try_lock(self) -> bool:
        if self.lock is None:
            return True
        fd = os.open(self.lock, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    async def _start(self) -> None:
        workers = Workers(self.node)
        self._transport = register_workers(workers, self.node)
        await workers.start()
        self._workers = workers
        if self.lock is not None:
            log.info("this process (%d) runs the background workers", os.getpid())

    async def _wait_for_lock(self) -> None:
        # A lock file cannot be awaited: polled until the holder exits (or dies).
        while True:
            await asyncio.sleep(LOCK_RETRY_SECONDS)
            if self._try_lock():
                await self._start()
                return

    async def start(self) -> None:
        if self._try_lock():
            await self._start()
        else:
            self._waiting = asyncio.create_task(self._wait_for_lock())

    async def stop(self) -> None:
        if self._waiting is not None:
            self._waiting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._waiting
        if self._workers is not None:
            await self._workers.stop()
        close = getattr(self._transport, "aclose", None)
        if close is not None:
            await close()  # a transport of the caller's that holds a client of its own
        if self._fd is not None:
            os.close(self._fd)  # releases the lock
            self._fd = None


class _CountRequests:
    """ASGI middleware: requests by method, route and status, and their latency (until the
    app has sent its answer). A plain ASGI wrapper rather than ``@app.middleware("http")``,
    whose extra task and body streams cost more than the smallest request does."""

    def __init__(self, app: Any, *, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 0

        async def send_status(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        await self.app(scope, receive, send_status)
        path = getattr(scope.get("route"), "path", "unmatched")
        self.metrics.requests.labels(scope["method"], path, str(status)).inc()
        self.metrics.request_seconds.labels(path).observe(time.perf_counter() - started)


def create_app(
    node: Node, *, start_workers: bool | None = None, background_lock: Path | None = None
) -> FastAPI:
    """The app for ``node``. Background workers run when ``start_workers`` (default: the
    ``workers_enabled`` setting) and, given ``background_lock``, only while this process holds
    that lock file."""
    run_workers = node.settings.workers_enabled if start_workers is None else start_workers

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # The background work starts beside the server, never before it: the node answers
        # /healthz however slow its partners, its lock or its first round of work may be.
        background = _Background(node, background_lock) if run_workers else None
        starting = asyncio.ensure_future(background.start()) if background is not None else None
        swept = asyncio.ensure_future(sweep_in_background(node))  # what a crash left behind
        summaries = asyncio.ensure_future(refusals.flush_periodically())
        try:
            yield
        finally:
            if background is not None and starting is not None:
                try:
                    await starting
                except Exception:
                    log.exception("the background workers failed to start")
                await background.stop()
            await swept
            summaries.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await summaries
            await asyncio.to_thread(refusals.flush, force=True)

    app = FastAPI(
        title=f"Entente node {node.node_id}",
        version=_package_version(),
        description=(
            "Signed, encrypted, MOU-policy-checked sharing of research artifacts between "
            "institutes, with a cosigned transparency log. Errors are RFC 9457 problem documents."
        ),
        lifespan=lifespan,
        # Swagger UI and ReDoc load scripts from outside CDNs: off unless asked for (L4).
        docs_url="/docs" if node.settings.docs_enabled else None,
        redoc_url="/redoc" if node.settings.docs_enabled else None,
    )
    app.state.node = node
    node.metrics.watch_database(node.db)  # gauges read from the database at each scrape
    app.state.limits = Limits(node.settings)
    app.state.event_streams = events.StreamSlots(node.settings.events_max_streams_per_token)
    refusals = app.state.refusals = RefusalLedger.for_node(node)  # anonymous ones summarised
    install_problem_handlers(app, finish=signed_problems)
    document_problems(app, schemas=artifacts.share_request_schemas())

    # Each request decides on the policy version committed when it first decides (one query).
    app.add_middleware(PolicyScope)
    # Inside the request counter (added before it): a stalled body raises where the app reads it.
    app.add_middleware(
        RequestBounds,
        max_head_bytes=node.settings.max_request_header_bytes,
        idle_seconds=node.settings.request_body_idle_seconds,
        min_rate=node.settings.request_body_min_rate,
        window_seconds=node.settings.request_body_rate_window_seconds,
    )

    app.add_middleware(_CountRequests, metrics=node.metrics)
    # Outermost: every answer carries them (nosniff; HSTS when the public URL is https).
    app.add_middleware(AnswerHeaders, hsts=node.home.url.startswith("https://"))

    app.include_router(public.router)
    app.include_router(artifacts.router)
    app.include_router(uploads_api.router)
    app.include_router(events.router)
    app.include_router(admin.router)
    app.include_router(webhooks.router)
    app.include_router(partners_api.router)
    app.include_router(approvals.router)
    app.include_router(federation.router)
    app.include_router(audit_router)
    app.include_router(audit_export_router)
    app.include_router(witness_router)
    app.include_router(witness_held_router)
    app.include_router(console_router)  # /ui, its static files included
    return app


def app_from_environment() -> FastAPI:
    """The app of one server process, its node loaded from ``ENTENTE_*`` settings (the
    passphrase from ``ENTENTE_PASSPHRASE``, ``ENTENTE_PASSPHRASE_FILE`` or systemd credentials).

    For servers that import the app by name and run several processes. The database must be
    migrated already (``entente serve`` does it before starting them; else ``entente db
    upgrade``): processes starting together must not race to migrate it.
    """
    from service.logs import configure_logging
    from service.node import load_node
    from service.settings import Settings

    settings = Settings.load()
    configure_logging(settings.log_level, settings.log_format)
    node = load_node(settings, migrate=False)
    return create_app(node, background_lock=settings.require_home() / BACKGROUND_LOCK)


def _package_version() -> str:
    """The installed package's version, for the OpenAPI document (``info.version``)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("entente")
    except PackageNotFoundError:
        return "0+unknown"
