"""``entente inbox --follow``: read a node's event stream (``GET /v1/events``, server-sent events)
and hand each arrival, revocation or deletion to a callback as it comes.

A dropped connection, a stream that reached its lifetime, a busy node (429, 502-504) or a node
that restarts is reconnected with the last event id seen (``Last-Event-ID``), so no event is
shown twice or missed; the pause between attempts doubles on failures, up to a cap. Any other
refusal (a bad token, a bad cursor) ends the command. This module does not print; the caller
decides how an event looks
(:func:`follow_inbox`, the command's printing).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Annotated, Any

import httpx
import typer

from service.cli._common import console, err_console
from service.cli._terminal import outside

__all__ = ["AfterOpt", "FollowOpt", "SseEvent", "follow", "follow_inbox", "parse_sse"]

FollowOpt = Annotated[
    bool,
    typer.Option(
        "--follow",
        help="Print each arrival, revocation or deletion as it comes (from now, or after "
        "--after), reconnecting after a dropped connection; Ctrl-C ends it",
    ),
]
AfterOpt = Annotated[
    str | None,
    typer.Option(help="With --follow: start after this event id (0: every arrival so far)"),
]

SHOWN = frozenset({"arrived", "revoked", "deleted"})
RETRYABLE = frozenset({429, 502, 503, 504})
PAUSE_SECONDS = 1.0  # after a stream ended normally; doubled after each failure
PAUSE_MAX_SECONDS = 16.0
READ_TIMEOUT_SECONDS = 60.0  # longer than the node's heartbeat: a silent connection is dead


@dataclass(frozen=True)
class SseEvent:
    event: str
    data: str
    id: str | None


def parse_sse(lines: Iterable[str]) -> Iterator[SseEvent]:
    """Events of a text/event-stream (WHATWG HTML, 9.2.6): comments skipped, data lines joined."""
    event, ident = "message", None
    data: list[str] = []
    for raw in lines:
        line = raw.rstrip("\r\n")
        if not line:
            if data:
                yield SseEvent(event, "\n".join(data), ident)
            event, data, ident = "message", [], None
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            event = value
        elif name == "data":
            data.append(value)
        elif name == "id" and "\0" not in value:
            ident = value


def follow(
    client: httpx.Client,
    *,
    after: str | None,
    show: Callable[[str, str, dict[str, Any]], None],
    raise_for: Callable[[httpx.Response], None],
    notice: Callable[[str], None],
    sleep: Callable[[float], None] = time.sleep,
    attempts: int | None = None,
) -> str | None:
    """Follow the stream until interrupted (or for ``attempts`` connections, in tests); return
    the last event id seen. ``show(name, event_id, artifact)`` gets each event once."""
    last = after
    pause = PAUSE_SECONDS
    timeout = httpx.Timeout(10.0, read=READ_TIMEOUT_SECONDS)
    while attempts is None or attempts > 0:
        if attempts is not None:
            attempts -= 1
        headers = {"Accept": "text/event-stream"}
        if last is not None:
            headers["Last-Event-ID"] = last
        try:
            with client.stream("GET", "/v1/events", headers=headers, timeout=timeout) as r:
                if r.status_code in RETRYABLE:
                    raise _Retry(f"the node answered {r.status_code}")
                raise_for(r)
                pause = PAUSE_SECONDS
                for ev in parse_sse(r.iter_lines()):
                    if ev.event in SHOWN and ev.id is not None:
                        show(ev.event, ev.id, json.loads(ev.data))
                    if ev.id is not None:
                        last = ev.id
        except (httpx.HTTPError, _Retry) as exc:
            notice(
                f"connection lost ({str(exc) or type(exc).__name__}); reconnecting "
                f"{'from event ' + last if last is not None else ''} in {pause:g} s"
            )
            sleep(pause)
            pause = min(pause * 2, PAUSE_MAX_SECONDS)
            continue
        sleep(PAUSE_SECONDS / 4)  # the stream reached its lifetime: reconnect at once
    return last


def follow_inbox(
    client: httpx.Client,
    *,
    url: str,
    after: str | None,
    as_json: bool,
    raise_for: Callable[[httpx.Response], None],
) -> None:
    """Print each event as one line (one JSON object with ``--json``) until Ctrl-C."""

    def show(name: str, event_id: str, art: dict[str, Any]) -> None:
        if as_json:
            typer.echo(json.dumps({"event": name, "id": event_id, "artifact": art}))
            return
        console.print(
            f"{outside(event_id)}  {outside(name)}  {outside(art['id'])} from "
            f"{outside(art['origin'])} ({outside(art['tlp'])}, {outside(art['size'])} bytes): "
            f"{outside(art['title'])}"
        )

    err_console.print(f"following arrivals at {outside(url)} (Ctrl-C to stop)")
    try:
        follow(
            client,
            after=after,
            show=show,
            raise_for=raise_for,
            notice=lambda text: err_console.print(outside(text)),
        )
    except KeyboardInterrupt:
        err_console.print("stopped")


class _Retry(Exception):
    """A busy or unreachable node: try again after a pause."""
