"""Headers every answer of the node carries, whatever route (or none) produced it.

- ``X-Content-Type-Options: nosniff``, always: no browser may guess a type other than the one
  an answer declares (a JSON problem document, a ``text/plain`` metric page, an artifact's
  bytes served as ``application/octet-stream``), so none of them can be run as a script or a
  page. The console adds its own stricter set (``service.console._render.SECURITY_HEADERS``).
- ``Strict-Transport-Security``, when the node's public URL is https. Behind the documented
  TLS ingress the node itself speaks plain HTTP, so it cannot tell from a request that browsers
  reach it over https; its public URL (``entente init --url``) says so. It does not redirect
  HTTP to HTTPS (the ingress does) and does not set ``preload`` (an operator's decision for the
  domain).
"""

from __future__ import annotations

from typing import Any

__all__ = ["HSTS_MAX_AGE", "AnswerHeaders"]

HSTS_MAX_AGE = 365 * 24 * 3600  # seconds browsers keep to https for the node's host
_HSTS = (b"strict-transport-security", f"max-age={HSTS_MAX_AGE}; includeSubDomains".encode())
_NOSNIFF = (b"x-content-type-options", b"nosniff")


class AnswerHeaders:
    """ASGI middleware: sets the headers above on every HTTP response start (HSTS when
    ``hsts``), replacing any the app set under the same names."""

    def __init__(self, app: Any, *, hsts: bool) -> None:
        self.app = app
        self.headers = [_NOSNIFF, _HSTS] if hsts else [_NOSNIFF]
        self.names = {name for name, _ in self.headers}

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Any) -> None:
            if message["type"] == "http.response.start":
                kept = [h for h in message.get("headers", []) if h[0].lower() not in self.names]
                message = {**message, "headers": [*kept, *self.headers]}
            await send(message)

        await self.app(scope, receive, send_with_headers)
