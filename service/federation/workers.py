"""Background federation work inside ``entente serve``: delivery, catch-up pulls, nonce purge."""

from __future__ import annotations

import anyio.to_thread

from service.federation.client import PartnerClient
from service.federation.outbox import OutboxWorker
from service.federation.pull import PullLoops
from service.federation.signing import purge_nonces
from service.node import Node
from service.workers import Workers

__all__ = ["register_federation_workers"]


def register_federation_workers(workers: Workers, node: Node) -> PartnerClient:
    client = PartnerClient(node)
    outbox = OutboxWorker(node, client)
    settings = node.settings

    async def deliver() -> float:
        handled = await anyio.to_thread.run_sync(outbox.run_once)
        return 0.0 if handled else settings.sync_interval_seconds

    pulls = PullLoops(node, client)

    async def pull() -> float:
        await anyio.to_thread.run_sync(pulls.round)  # starts each idle partner's pull
        return settings.pull_interval_seconds

    async def purge() -> float:
        await anyio.to_thread.run_sync(purge_nonces, node)
        return 60.0

    workers.add("deliver", deliver)
    workers.add("pull", pull)
    workers.add("purge-nonces", purge)
    workers.on_stop(outbox.close)
    workers.on_stop(pulls.close)
    workers.on_stop(client.close)
    return client
