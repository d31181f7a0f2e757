"""``entente wait``: block until a node answers that it is ready, for scripts and deployments.

Polls ``GET /healthz`` (no token needed) until it answers 200, a connection refused or a 503
meaning "not yet"; exits 1 with one line when the time is up.
"""

from __future__ import annotations

import time
from typing import Annotated

import httpx
import typer

from service.cli._common import err_console
from service.errors import RemoteError, UsageError

__all__ = ["wait"]

POLL_SECONDS = 0.2


def wait(
    url: Annotated[str, typer.Option("--url", envvar="ENTENTE_URL", help="The node's base URL")],
    timeout: Annotated[
        float, typer.Option("--timeout", min=0, help="Seconds to wait at most")
    ] = 60.0,
    quiet: Annotated[bool, typer.Option("-q", "--quiet", help="Print nothing when ready")] = False,
) -> None:
    """Wait until a node is up and ready (for scripts and deployments).

    For example `entente serve … &` and then `entente wait --url URL` before the first request."""
    if not url.startswith(("http://", "https://")):
        raise UsageError("--url must start with http:// or https://")
    deadline = time.monotonic() + timeout
    last = "no answer yet"
    with httpx.Client(base_url=url.rstrip("/"), timeout=5.0) as client:
        while True:
            try:
                answer = client.get("/healthz")
                if answer.status_code == 200:
                    if not quiet:
                        err_console.print(f"{url} is ready")
                    return
                last = f"it answered {answer.status_code}"
            except httpx.HTTPError as exc:
                last = str(exc) or type(exc).__name__
            if time.monotonic() >= deadline:
                raise RemoteError(f"{url} was not ready within {timeout:g} s ({last})")
            time.sleep(POLL_SECONDS)
