"""``entente share``, ``inbox``, ``get`` and ``revoke``: a node's users, over HTTP with a token.

Each talks to a node's /v1 API (``--url`` or ENTENTE_URL, token from ``--token`` or
ENTENTE_TOKEN) through the Python client (:class:`service.client.Client`, the one client of
the project); this module parses the options and prints. Uploads and downloads stream, with a
progress bar on a terminal; a download goes to a temporary file that is renamed only when
complete and its SHA-256 matches the node's. A refusal prints the node's problem document in one
line (for a policy denial: the partner, rule and MOU clause).

``share`` sends a fresh ``Idempotency-Key`` with each invocation and, when the connection is
lost (or a load balancer answers 502/503/504, or the node is still carrying out an earlier
attempt), sends the whole file again from its start with the same key, a bounded number of
times with growing pauses, saying so on stderr: an attempt the node had already committed is
answered with its first result, so a retry never shares twice.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, cast

import typer

from service.cli._common import JsonOpt, console, err_console
from service.cli._evaluation import evaluation_summary, show_dry_run
from service.cli._follow import AfterOpt, FollowOpt, follow_inbox
from service.cli._terminal import SafeTable, outside
from service.cli.files import progress_bar
from service.client import Client, Filters, Retry, share_metadata
from service.client._protocol import iso_time
from service.client.errors import ProblemError
from service.errors import UsageError

UrlOpt = Annotated[str, typer.Option("--url", envvar="ENTENTE_URL", help="The node's base URL")]
TokenOpt = Annotated[
    str,
    typer.Option(
        "--token",
        envvar="ENTENTE_TOKEN",
        help="Bearer token",
        show_default=False,
    ),
]

# For a command that may run without a node (``share --dry-run``): no token is None, not "".
MaybeTokenOpt = Annotated[
    str | None,
    typer.Option(
        "--token",
        envvar="ENTENTE_TOKEN",
        help="Bearer token",
        show_default=False,
    ),
]


WAIT_POLL_SECONDS = 0.5  # get --wait: between two tries for an artifact not arrived yet
RESUMABLE_MIB = 64  # share: files from this size (MiB) go as resumable uploads


def _client(url: str, token: str, **options: Any) -> Client:
    """The Python client (:mod:`service.client`) for ``url`` with ``token``; tests replace it."""
    if not url.startswith(("http://", "https://")):
        raise UsageError("--url must start with http:// or https://")
    return Client(url, token, **options)


def _say_retry(retry: Retry) -> None:
    err_console.print(
        f"{outside(retry.reason)}; retrying in {retry.pause:.1f} s with the same idempotency "
        f"key (attempt {retry.attempt} of {retry.attempts})"
    )


def _say_resume(retry: Retry) -> None:
    err_console.print(
        f"{outside(retry.reason)}; resuming in {retry.pause:.1f} s from the bytes the node "
        f"holds (attempt {retry.attempt} of {retry.attempts})"
    )


class _Bars:
    """``on_progress`` of the client as a progress bar on a terminal: a new bar for each
    attempt (a retry sends the file again from its first byte, or a resumable one from where
    the node stopped)."""

    def __init__(self, description: str) -> None:
        self._description = description
        self._bars = contextlib.ExitStack()
        self._advance: Callable[[int], None] | None = None
        self._done = 0

    def __call__(self, done: int, total: int | None) -> None:
        if self._advance is None or done < self._done:  # a new attempt, from byte 0
            self._bars.close()
            self._advance = self._bars.enter_context(progress_bar(total, self._description))
            self._done = 0
        self._advance(done - self._done)
        self._done = done

    def __enter__(self) -> _Bars:
        return self

    def __exit__(self, *exc: object) -> None:
        self._bars.close()


def share(
    file: Annotated[Path, typer.Argument(help="The file to share")],
    to: Annotated[list[str], typer.Option("--to", help="Partner node id (repeatable)")],
    tlp: Annotated[
        str, typer.Option("--tlp", help="TLP 2.0 label: TLP:AMBER, or amber, amber+strict, ...")
    ],
    url: UrlOpt = "",
    token: MaybeTokenOpt = None,
    topic: Annotated[
        list[str] | None,
        typer.Option("--topic", help="Topic (repeatable; an evaluation log's: evaluation)"),
    ] = None,
    purpose: Annotated[
        list[str] | None,
        typer.Option("--purpose", help="Purpose (an evaluation log's: evaluation)"),
    ] = None,
    title: Annotated[
        str | None,
        typer.Option(help="Title (default: the file name, or an evaluation log's task and model)"),
    ] = None,
    embargo_until: Annotated[
        str | None, typer.Option(help="ISO time before which it is closed")
    ] = None,
    expires_at: Annotated[str | None, typer.Option(help="ISO time it expires")] = None,
    approve_onward: Annotated[
        list[str] | None,
        typer.Option(
            "--approve-onward",
            help="A third node the recipients may pass it on to, where the MOU asks for the "
            "originator's approval (repeatable; recorded in the signed manifest)",
        ),
    ] = None,
    summary: Annotated[
        Path | None,
        typer.Option(
            "--summary",
            help="An evaluation summary (JSON, as --dry-run --json prints it) to send instead "
            "of the one read from the log",
            show_default=False,
        ),
    ] = None,
    no_summary: Annotated[
        bool,
        typer.Option("--no-summary", help="Share an evaluation log without its summary"),
    ] = False,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run",
            help="Print what would leave unencrypted (the metadata, an evaluation log's "
            "summary) and share nothing",
        ),
    ] = False,
    retries: Annotated[
        int,
        typer.Option(
            "--retries",
            min=0,
            max=20,
            help="Times to send the file again after a lost connection (with the same "
            "idempotency key, so the node shares it once)",
        ),
    ] = 4,
    resumable: Annotated[
        bool | None,
        typer.Option(
            "--resumable/--no-resumable",
            help="Send the file as a resumable upload: after a lost connection only the bytes "
            f"the node lacks are sent again (default: for files from {RESUMABLE_MIB} MiB)",
            show_default=False,
        ),
    ] = None,
    as_json: JsonOpt = False,
    quiet: Annotated[
        bool,
        typer.Option("-q", "--quiet", help="Print only the artifact id (for scripts)"),
    ] = False,
) -> None:
    """Share FILE with partners through your node (policy-checked, signed, encrypted).

    An Inspect evaluation log (.eval, .json) is summarised from its header (task, model,
    dataset, scorers and metrics, status: readable by the partners before they open it; the
    samples stay encrypted), with `pip install 'entente\\[inspect]'`. A lost connection is
    retried: the file is sent again with the same idempotency key, and the node answers an
    attempt it had already accepted with that first result. A file from 64 MiB (or any, with
    --resumable) goes as a resumable upload instead: a retry sends only what the node lacks."""
    if not file.is_file():
        raise UsageError(f"cannot read {file}: not a file")
    found = evaluation_summary(file, summary_file=summary, skip=no_summary)
    terms: dict[str, Any] = {
        "to": to, "tlp": tlp, "title": title, "topics": topic, "purposes": purpose,
        "embargo_until": iso_time(embargo_until, "--embargo-until"),
        "expires_at": iso_time(expires_at, "--expires-at"),
        "onward_approved": approve_onward, "evaluation": found,
    }  # fmt: skip
    if dry_run:
        show_dry_run(file, share_metadata(file.name, **terms), as_json=as_json)
        return
    if not url or not token:
        raise UsageError("--url and --token (or ENTENTE_URL and ENTENTE_TOKEN) are required")
    if resumable is None:
        resumable = file.stat().st_size >= RESUMABLE_MIB << 20
    say = _say_resume if resumable else _say_retry
    with (
        _client(url, token, retries=retries, on_retry=say) as client,
        _Bars(f"uploading {file.name}") as bars,
    ):
        result = client.share(file, **terms, on_progress=bars, resumable=resumable)
    if result.replayed:
        err_console.print(
            "the node had already accepted this share before the connection was lost: "
            "this is its first answer, and nothing was shared twice"
        )
    if as_json:
        typer.echo(json.dumps(result.raw))
        return
    if quiet:
        typer.echo(result.artifact.id if result.artifact else result.raw["artifact_id"])
        return
    if result.artifact is None:  # two-person control: stored, not shared yet
        art = result.raw
        console.print(
            f"{outside(art['summary']['tlp'])}: stored as {outside(art['artifact_id'])}, NOT "
            f"shared yet: it waits for a second approver until {outside(art['expires_at'][:19])}"
        )
        console.print(f"  a second person runs: entente approvals approve {outside(art['id'])}")
        return
    shared = result.artifact
    console.print(
        f"shared {outside(shared.id)} ({outside(shared.tlp)}, {outside(shared.size)} bytes) "
        f"with {outside(', '.join(to))}, sealed {outside(shared.sealing)}"
    )
    console.print(f"  sha256 {outside(shared.sha256)}")


def inbox(
    url: UrlOpt,
    token: TokenOpt,
    partner: Annotated[str | None, typer.Option(help="Only from this partner")] = None,
    search: Annotated[
        str | None, typer.Option("--search", help="Only those with this text in the title")
    ] = None,
    since: Annotated[
        str | None, typer.Option(help="Only those received at or after this time (ISO 8601)")
    ] = None,
    until: Annotated[
        str | None, typer.Option(help="Only those received before this time (ISO 8601)")
    ] = None,
    task: Annotated[str | None, typer.Option(help="Only evaluation logs of this task")] = None,
    model: Annotated[str | None, typer.Option(help="Only evaluation logs of this model")] = None,
    topic: Annotated[str | None, typer.Option(help="Only those with this topic")] = None,
    purpose: Annotated[str | None, typer.Option(help="Only those for this purpose")] = None,
    limit: Annotated[int, typer.Option(help="How many")] = 50,
    as_json: JsonOpt = False,
    follow: FollowOpt = False,
    after: AfterOpt = None,
) -> None:
    """List what partners shared with you."""
    if follow:
        with _client(url, token) as client:
            follow_inbox(client, after=after, as_json=as_json)
        return
    with _client(url, token) as client:
        given = {"partner": partner, "title": search, "task": task, "model": model,
                 "topic": topic, "purpose": purpose, "since": iso_time(since, "--since"),
                 "until": iso_time(until, "--until")}  # fmt: skip
        filters = cast(Filters, {k: v for k, v in given.items() if v is not None})
        items = client.list("received", limit=limit, **filters).items
    if as_json:
        typer.echo(json.dumps([a.raw for a in items]))
        return
    if not items:
        console.print("Nothing received matches." if filters else "Nothing received yet.")
        return
    table = SafeTable("id", "from", "title", "TLP", "sealed", "size", "received", "state")
    now = datetime.now(UTC)
    for a in items:
        state = "revoked" if a.revoked_at else "open"
        if a.embargo_until is not None and a.embargo_until > now:
            state = f"embargoed until {str(a.raw['embargo_until'])[:16]}"
        table.add_row(
            a.id, a.origin, a.title, a.tlp, a.sealing, str(a.size),
            str(a.raw["recorded_at"])[:19], state,
        )  # fmt: skip
    console.print(table)


def get(
    artifact_id: Annotated[str, typer.Argument(help="The artifact id")],
    url: UrlOpt,
    token: TokenOpt,
    out: Annotated[
        Path | None,
        typer.Option(
            "-o",
            "--out",
            help="Where to write the plaintext: a file, a folder to write it into under the "
            "name it was shared with (default: that name, in the current folder), or - for "
            "standard output",
            show_default=False,
        ),
    ] = None,
    force: Annotated[bool, typer.Option(help="Overwrite an existing file")] = False,
    wait: Annotated[
        float,
        typer.Option(
            "--wait",
            min=0,
            help="Seconds to wait for an artifact that has not arrived yet (404) before giving up",
        ),
    ] = 0,
) -> None:
    """Download and decrypt an artifact (your read is audited).

    The file keeps the name it was shared with (an Inspect log stays a log that `inspect view`
    opens), unless -o names a file. A file is kept only if its SHA-256 matches the signed
    manifest's; to standard output (-o -) bytes go out as they come, and a mismatch ends the
    command with an error (exit 1) after them."""
    to_stdout = out is not None and str(out) == "-"
    if out is not None and not to_stdout and out.exists() and not out.is_dir() and not force:
        raise UsageError(f"{out} exists; pass --force to overwrite it")
    deadline = time.monotonic() + wait
    with _client(url, token) as client:
        while True:
            try:
                if to_stdout:
                    client.download(artifact_id, sys.stdout.buffer)
                    sys.stdout.buffer.flush()
                    return
                with _Bars(f"downloading {artifact_id}") as bars:
                    got = client.download(artifact_id, out, overwrite=force, on_progress=bars)
                break
            except ProblemError as exc:
                if exc.status != 404 or time.monotonic() >= deadline:
                    raise
                time.sleep(WAIT_POLL_SECONDS)
            except FileExistsError as exc:
                raise UsageError(
                    f"{exc.filename or out} exists; pass --force to overwrite it"
                ) from None
    console.print(f"wrote {outside(got.path)}")


def revoke(
    artifact_id: Annotated[str, typer.Argument(help="The artifact id")],
    url: UrlOpt,
    token: TokenOpt,
    reason: Annotated[str, typer.Option(help="Why (sent to the recipients)")] = "",
) -> None:
    """Revoke an artifact you shared: recipients delete it and acknowledge."""
    with _client(url, token) as client:
        before = client.artifact(artifact_id)
        if before.revoked_at:  # revoking is idempotent at the node; say so, not "revoked" again
            console.print(
                f"{outside(artifact_id)} was already revoked at "
                f"{outside(str(before.raw['revoked_at'])[:19])}; nothing more to do"
            )
            return
        client.revoke(artifact_id, reason)
    console.print(f"revoked {outside(artifact_id)}; recipients are being notified")
