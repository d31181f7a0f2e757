"""The audit log's background work: the sequencer and the submission of each new checkpoint
to the partners' witnesses. The composition root (``service.app``) registers them.

This module does not run the loops (``service.workers``).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from service.audit.sequencer import run_sequencer
from service.audit.submission import SignedWitnessTransport, submission_step

if TYPE_CHECKING:
    from service.node import Node
    from service.workers import Workers

__all__ = ["register_audit_workers"]


def register_audit_workers(workers: Workers, node: Node, **options: Any) -> Any:
    """Add the sequencer and the checkpoint submission to ``workers``.

    Each new checkpoint is submitted to every pinned partner's witness through
    ``options["witness_transport"]`` (a :class:`service.audit.submission.WitnessTransport`;
    default: the RFC 9421-signed :class:`service.audit.submission.SignedWitnessTransport`).
    Returns the transport, for the caller to close (``aclose``, when it has one) once the
    workers have stopped.
    """
    interval = node.settings.checkpoint_interval_seconds

    async def sequencer_step() -> float:
        result = await asyncio.to_thread(run_sequencer, node)
        return 0.0 if result.more else interval

    workers.add("audit-sequencer", sequencer_step)
    transport = options.get("witness_transport") or SignedWitnessTransport(node)
    workers.add("audit-witness-submit", submission_step(node, transport))
    return transport
