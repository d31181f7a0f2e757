"""A Python client of an Entente node: share, list, read, follow and revoke artifacts.

For pipelines and notebooks, and the ``entente share|inbox|get|revoke`` commands themselves
(one client): :class:`Client` blocks, :class:`AsyncClient` has the same methods as coroutines
and async iterators. Uploads and downloads stream; a share is retried after a lost connection
with its one ``Idempotency-Key`` (the node shares it once); a download is saved through a
temporary file renamed only once its SHA-256 matches the node's. A node's refusal is one
exception, :class:`ProblemError`, carrying the problem document's status, ``type``, title,
detail and, for a policy denial, the partner, rule and MOU clause. See docs/client.md.

This package talks HTTP only: it imports neither the node (FastAPI, the ORM, the policy engine)
nor the command line (typer, rich).
"""

from service.client._async import AsyncClient, AsyncContent
from service.client._protocol import Filters, share_metadata, tlp_label
from service.client._sync import Client, Content
from service.client.errors import (
    NodeUnreachableError,
    ProblemError,
    RemoteError,
    UnexpectedAnswerError,
)
from service.client.models import (
    Artifact,
    Delivery,
    Downloaded,
    Event,
    Page,
    PendingApproval,
    Retry,
    Shared,
)
from service.evaluations import EvaluationSummary, read_summary

__all__ = [
    "Artifact",
    "AsyncClient",
    "AsyncContent",
    "Client",
    "Content",
    "Delivery",
    "Downloaded",
    "EvaluationSummary",
    "Event",
    "Filters",
    "NodeUnreachableError",
    "Page",
    "PendingApproval",
    "ProblemError",
    "RemoteError",
    "Retry",
    "Shared",
    "UnexpectedAnswerError",
    "read_summary",
    "share_metadata",
    "tlp_label",
]
