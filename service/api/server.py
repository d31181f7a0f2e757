"""The HTTP protocol ``entente serve`` runs uvicorn with, in one process or several."""

from __future__ import annotations

import asyncio
import socket

from service.api.bounds import ProblemH11Protocol

__all__ = ["ServerProtocol"]


class ServerProtocol(ProblemH11Protocol):
    """``ProblemH11Protocol`` with ``TCP_NODELAY`` on every connection. asyncio sets it only on
    sockets whose protocol number says TCP, and the listening socket uvicorn hands to its
    worker processes says 0: without this, each answer's body waited for the client's delayed
    ACK (about 40 ms per request) whenever ``serve`` ran several processes."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super().connection_made(transport)
