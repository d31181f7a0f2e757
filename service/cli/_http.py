"""The CLI's plain HTTP calls to a node's API (``entente approvals``, ``agreement``, ``policy
reload``): an httpx client with the token, and a refusal read as the Python client reads it
(:class:`service.client.ProblemError`, one line). The commands on artifacts (``share``,
``inbox``, ``get``, ``revoke``) go through :class:`service.client.Client` itself."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import httpx

from service.client._protocol import check, unreachable
from service.errors import UsageError

__all__ = ["http_client", "raise_for", "send"]


def http_client(url: str, token: str) -> httpx.Client:
    if not url.startswith(("http://", "https://")):
        raise UsageError("--url must start with http:// or https://")
    return httpx.Client(
        base_url=url.rstrip("/"),
        headers={"Authorization": f"Bearer {token}"},
        timeout=httpx.Timeout(60.0, connect=10.0),
    )


def raise_for(response: httpx.Response) -> None:
    """:class:`service.client.ProblemError` for a refusal (``403: detail [rule R, clause]``)."""
    if response.status_code < 400:
        return
    with contextlib.suppress(httpx.HTTPError):  # a body cut short: the status still says it
        response.read()
    check(response)


def send(call: Callable[[], httpx.Response]) -> httpx.Response:
    try:
        return call()
    except httpx.HTTPError as exc:
        raise unreachable(exc) from None
