"""Strict-Transport-Security on every answer of a node whose public URL is https.

Behind the documented TLS ingress the node itself speaks plain HTTP, so it cannot tell from a
request that browsers reach it over https; its public URL (``entente init --url``) says so.
:func:`service.app.create_app` adds this middleware only then. It does not redirect HTTP to
HTTPS (the ingress does) and does not set ``preload`` (an operator's decision for the domain).
"""

from __future__ import annotations

from typing import Any

__all__ = ["HSTS_MAX_AGE", "StrictTransportSecurity"]

HSTS_MAX_AGE = 365 * 24 * 3600  # seconds browsers keep to https for the node's host
_HEADER = (b"strict-transport-security", f"max-age={HSTS_MAX_AGE}; includeSubDomains".encode())


class StrictTransportSecurity:
    """ASGI middleware: adds the HSTS header to every HTTP response start."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_hsts(message: Any) -> None:
            if message["type"] == "http.response.start":
                headers = [h for h in message.get("headers", []) if h[0].lower() != _HEADER[0]]
                message = {**message, "headers": [*headers, _HEADER]}
            await send(message)

        await self.app(scope, receive, send_with_hsts)
