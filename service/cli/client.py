"""``entente share``, ``inbox``, ``get`` and ``revoke``: a node's users, over HTTP with a token.

Each talks to a node's /v1 API (``--url`` or ENTENTE_URL, token from ``--token`` or
ENTENTE_TOKEN). Uploads and downloads stream, with a progress bar on a terminal; a download goes to
a temporary file that is renamed only when complete. A refusal prints the node's problem document
in one line (for a policy denial: the partner, rule and MOU clause).

``share`` sends a fresh ``Idempotency-Key`` with each invocation and, when the connection is
lost (or a load balancer answers 502/503/504, or the node is still carrying out an earlier
attempt), sends the whole file again from its start with the same key, a bounded number of
times with growing pauses, saying so on stderr: an attempt the node had already committed is
answered with its first result, so a retry never shares twice.
"""

from __future__ import annotations

import json
import random
import secrets
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer

from crypto import strict_json
from service.cli._common import JsonOpt, console, err_console
from service.cli._evaluation import evaluation_summary, show_dry_run
from service.cli._follow import AfterOpt, FollowOpt, follow_inbox
from service.cli._terminal import SafeTable, outside
from service.cli.files import progress_bar
from service.errors import RemoteError, UsageError
from service.evaluations import (
    DEFAULT_PURPOSES,
    DEFAULT_TOPICS,
    EvaluationSummary,
    default_title,
)
from service.files import atomic_write, disposition_filename, is_base_name

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


def _client(url: str, token: str) -> httpx.Client:
    if not url.startswith(("http://", "https://")):
        raise UsageError("--url must start with http:// or https://")
    return httpx.Client(
        base_url=url.rstrip("/"),
        headers={"Authorization": f"Bearer {token}"},
        timeout=httpx.Timeout(60.0, connect=10.0),
    )


def _raise_for(response: httpx.Response) -> None:
    if response.status_code < 400:
        return
    try:
        problem = strict_json.loads(response.read())
    except (ValueError, httpx.HTTPError):
        problem = {}
    detail = problem.get("detail") or response.reason_phrase
    extra = ""
    if problem.get("clause"):
        extra = f" [rule {problem.get('rule')}, {problem.get('clause')}]"
    raise RemoteError(f"{response.status_code}: {detail}{extra}")


def _send(call: Any) -> httpx.Response:
    try:
        response: httpx.Response = call()
    except httpx.HTTPError as exc:
        raise RemoteError(f"cannot reach the node: {str(exc) or type(exc).__name__}") from None
    return response


RETRY_STATUSES = (502, 503, 504)  # a load balancer's, or the node's own "busy" and "blob store"
IN_FLIGHT = "urn:entente:problem:idempotency-key-in-flight"
RETRY_BASE_SECONDS = 0.5  # the first pause; each next one doubles, up to the cap
RETRY_MAX_SECONDS = 8.0


def _problem_type(response: httpx.Response) -> str | None:
    if not response.headers.get("content-type", "").startswith("application/problem+json"):
        return None
    try:
        kind = strict_json.loads(response.read()).get("type")
    except (ValueError, AttributeError, httpx.HTTPError):
        return None
    return kind if isinstance(kind, str) else None


def send_with_retries(
    attempt: Callable[[], httpx.Response],
    *,
    retries: int,
    sleep: Callable[[float], None] = time.sleep,
) -> httpx.Response:
    """``attempt()`` until it answers, retrying (at most ``retries`` times, with doubling,
    jittered pauses) a lost connection, a 502/503/504 and a 409 for a key still in flight.

    Only for requests that carry an ``Idempotency-Key`` (every attempt the same request):
    then a retry cannot act twice. Each retry is announced on stderr."""
    for number in range(retries + 1):
        try:
            response = attempt()
        except httpx.TransportError as exc:
            if number >= retries:
                raise RemoteError(
                    f"cannot reach the node ({retries + 1} attempts): "
                    f"{str(exc) or type(exc).__name__}"
                ) from None
            detail = outside(str(exc)[:120] or "no detail")
            why = f"the connection was lost ({type(exc).__name__}: {detail})"
        else:
            retryable = response.status_code in RETRY_STATUSES or (
                response.status_code == 409 and _problem_type(response) == IN_FLIGHT
            )
            if not retryable or number >= retries:
                return response
            why = f"the node answered {response.status_code}"
            if response.status_code == 409:
                why += " (it is still carrying out an earlier attempt)"
        pause = min(RETRY_MAX_SECONDS, RETRY_BASE_SECONDS * 2**number)
        pause *= 0.75 + random.random() / 2  # noqa: S311 - jitter, not a secret
        err_console.print(
            f"{why}; retrying in {pause:.1f} s with the same idempotency key "
            f"(attempt {number + 2} of {retries + 1})"
        )
        sleep(pause)
    raise AssertionError("unreachable")  # pragma: no cover


def tlp_label(text: str) -> str:
    """``amber``, ``TLP:amber``, ``Amber+Strict`` -> the TLP 2.0 label (``TLP:AMBER``); anything
    else goes to the node as written, which refuses it with its own message."""
    word = text.strip().upper()
    return word if word.startswith("TLP:") else f"TLP:{word}"


def _when(value: str | None, name: str) -> str | None:
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(f"{name} must be an ISO 8601 time, e.g. 2027-01-01T00:00:00Z") from None
    if parsed.tzinfo is None:
        raise UsageError(f"{name} needs a time zone, e.g. 2027-01-01T00:00:00Z")
    return parsed.isoformat()


def share_metadata(
    file: Path,
    *,
    to: list[str],
    tlp: str,
    title: str | None = None,
    topics: list[str] | None = None,
    purposes: list[str] | None = None,
    embargo_until: str | None = None,
    expires_at: str | None = None,
    onward_approved: list[str] | None = None,
    evaluation: EvaluationSummary | None = None,
) -> dict[str, Any]:
    """The ``metadata`` part of a share of ``file``: what leaves this machine unencrypted (in
    the signed manifest). An evaluation log's summary gives the title, topics and purposes
    the publisher left out."""
    if evaluation is not None:
        title = title or default_title(evaluation)
        topics = topics or list(DEFAULT_TOPICS)
        purposes = purposes or list(DEFAULT_PURPOSES)
    meta: dict[str, Any] = {
        "title": title or file.name,
        "tlp": tlp_label(tlp),
        "topics": topics or [],
        "purposes": purposes or [],
        "partners": to,
        "embargo_until": _when(embargo_until, "--embargo-until"),
        "expires_at": _when(expires_at, "--expires-at"),
        "onward_approved": onward_approved or [],
        "filename": file.name,
    }
    if evaluation is not None:
        meta["evaluation"] = evaluation.model_dump(mode="json")
    return meta


def upload(
    client: httpx.Client,
    file: Path,
    meta: dict[str, Any],
    *,
    retries: int,
    sleep: Callable[[float], None] = time.sleep,
    progress: bool = True,
) -> httpx.Response:
    """``POST /v1/artifacts``: ``meta`` and the file, streamed, with one idempotency key for
    every attempt (:func:`send_with_retries`), a progress bar on a terminal unless
    ``progress`` is false. The caller checks the answer."""
    try:
        size = file.stat().st_size
    except OSError as exc:
        raise UsageError(f"cannot read {file}: {exc.strerror}") from None
    boundary = f"entente-{secrets.token_hex(12)}"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="metadata"\r\n'
        f"Content-Type: application/json\r\n\r\n{json.dumps(meta)}\r\n"
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="upload"\r\n'
        f"Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    headers = {
        "Content-Type": f"multipart/form-data; boundary={boundary}",
        "Content-Length": str(len(head) + size + len(tail)),
        "Idempotency-Key": f'"{uuid.uuid4()}"',  # one per invocation, the same for its retries
    }

    def attempt() -> httpx.Response:
        """One attempt: the whole file again, from its first byte."""
        with progress_bar(
            size if progress else None, f"uploading {file.name}", shown=progress
        ) as advance:

            def body() -> Iterator[bytes]:
                yield head
                with open(file, "rb") as fh:
                    while chunk := fh.read(1 << 20):
                        advance(len(chunk))
                        yield chunk
                yield tail

            return client.post("/v1/artifacts", content=body(), headers=headers)

    return send_with_retries(attempt, retries=retries, sleep=sleep)


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
    as_json: JsonOpt = False,
) -> None:
    """Share FILE with partners through your node (policy-checked, signed, encrypted).

    An Inspect evaluation log (.eval, .json) is summarised from its header (task, model,
    dataset, scorers and metrics, status: readable by the partners before they open it; the
    samples stay encrypted), with `pip install 'entente\\[inspect]'`. A lost connection is
    retried: the file is sent again with the same idempotency key, and the node answers an
    attempt it had already accepted with that first result."""
    if not file.is_file():
        raise UsageError(f"cannot read {file}: not a file")
    found = evaluation_summary(file, summary_file=summary, skip=no_summary)
    meta = share_metadata(
        file, to=to, tlp=tlp, title=title, topics=topic, purposes=purpose,
        embargo_until=embargo_until, expires_at=expires_at, onward_approved=approve_onward,
        evaluation=found,
    )  # fmt: skip
    if dry_run:
        show_dry_run(file, meta, as_json=as_json)
        return
    if not url or not token:
        raise UsageError("--url and --token (or ENTENTE_URL and ENTENTE_TOKEN) are required")
    with _client(url, token) as client:
        response = upload(client, file, meta, retries=retries)
    _raise_for(response)
    art = response.json()
    if response.headers.get("idempotent-replayed") == "true":
        err_console.print(
            "the node had already accepted this share before the connection was lost: "
            "this is its first answer, and nothing was shared twice"
        )
    if as_json:
        typer.echo(json.dumps(art))
        return
    if response.status_code == 202:  # two-person control: stored, not shared yet
        console.print(
            f"{outside(art['summary']['tlp'])}: stored as {outside(art['artifact_id'])}, NOT "
            f"shared yet: it waits for a second approver until {outside(art['expires_at'][:19])}"
        )
        console.print(f"  a second person runs: entente approvals approve {outside(art['id'])}")
        return
    console.print(
        f"shared {outside(art['id'])} ({outside(art['tlp'])}, {outside(art['size'])} bytes) "
        f"with {outside(', '.join(to))}, sealed {outside(art.get('sealing', 'classic'))}"
    )
    console.print(f"  sha256 {outside(art['sha256'])}")


def inbox(
    url: UrlOpt,
    token: TokenOpt,
    partner: Annotated[str | None, typer.Option(help="Only from this partner")] = None,
    limit: Annotated[int, typer.Option(help="How many")] = 50,
    as_json: JsonOpt = False,
    follow: FollowOpt = False,
    after: AfterOpt = None,
) -> None:
    """List what partners shared with you."""
    if follow:
        _follow_inbox(url, token, after=after, as_json=as_json)
        return
    params: dict[str, Any] = {"direction": "received", "limit": limit}
    if partner:
        params["partner"] = partner
    with _client(url, token) as client:
        response = _send(lambda: client.get("/v1/artifacts", params=params))
    _raise_for(response)
    items = response.json()["items"]
    if as_json:
        typer.echo(json.dumps(items))
        return
    if not items:
        console.print("Nothing received yet.")
        return
    table = SafeTable("id", "from", "title", "TLP", "sealed", "size", "received", "state")
    for a in items:
        state = "revoked" if a["revoked_at"] else "open"
        if a.get("embargo_until") and a["embargo_until"] > datetime.now().astimezone().isoformat():
            state = f"embargoed until {str(a['embargo_until'])[:16]}"
        table.add_row(
            str(a["id"]),
            str(a["origin"]),
            str(a["title"]),
            str(a["tlp"]),
            str(a.get("sealing", "classic")),
            str(a["size"]),
            str(a["recorded_at"])[:19],
            state,
        )
    console.print(table)


def _follow_inbox(url: str, token: str, *, after: str | None, as_json: bool) -> None:
    with _client(url, token) as client:
        follow_inbox(client, url=url, after=after, as_json=as_json, raise_for=_raise_for)


def _destination(out: Path | None, served: str | None, artifact_id: str) -> Path:
    """Where a download goes: ``out``, or the name it was shared under (the node's
    ``Content-Disposition``) in ``out`` when that is a folder, else in the current folder."""
    if out is not None and not out.is_dir():
        return out
    fallback = f"{artifact_id}.bin"
    name = served or (fallback if is_base_name(fallback) else "artifact.bin")
    return (out or Path()) / name


def get(
    artifact_id: Annotated[str, typer.Argument(help="The artifact id")],
    url: UrlOpt,
    token: TokenOpt,
    out: Annotated[
        Path | None,
        typer.Option(
            "-o",
            "--out",
            help="Where to write the plaintext: a file, or a folder to write it into under the "
            "name it was shared with (default: that name, in the current folder)",
            show_default=False,
        ),
    ] = None,
    force: Annotated[bool, typer.Option(help="Overwrite an existing file")] = False,
) -> None:
    """Download and decrypt an artifact (your read is audited).

    The file keeps the name it was shared with (an Inspect log stays a log that `inspect view`
    opens), unless -o names a file."""
    if out is not None and out.exists() and not out.is_dir() and not force:
        raise UsageError(f"{out} exists; pass --force to overwrite it")
    try:
        with (
            _client(url, token) as client,
            client.stream("GET", f"/v1/artifacts/{artifact_id}/content") as response,
        ):
            _raise_for(response)
            served = disposition_filename(response.headers.get("content-disposition"))
            target = _destination(out, served, artifact_id)
            if target.exists() and not force:
                raise UsageError(f"{target} exists; pass --force to overwrite it")
            total = int(response.headers.get("content-length", "0")) or None
            with (
                atomic_write(target) as fh,
                progress_bar(total, f"downloading {artifact_id}") as advance,
            ):
                for chunk in response.iter_bytes(1 << 20):
                    fh.write(chunk)
                    advance(len(chunk))
    except httpx.HTTPError as exc:
        raise RemoteError(f"the download failed: {str(exc) or type(exc).__name__}") from None
    console.print(f"wrote {outside(target)}")


def revoke(
    artifact_id: Annotated[str, typer.Argument(help="The artifact id")],
    url: UrlOpt,
    token: TokenOpt,
    reason: Annotated[str, typer.Option(help="Why (sent to the recipients)")] = "",
) -> None:
    """Revoke an artifact you shared: recipients delete it and acknowledge."""
    with _client(url, token) as client:
        before = _send(lambda: client.get(f"/v1/artifacts/{artifact_id}"))
        _raise_for(before)
        already = before.json().get("revoked_at")
        if already:  # revoking is idempotent at the node; say so instead of "revoked" again
            console.print(
                f"{outside(artifact_id)} was already revoked at {outside(str(already)[:19])}; "
                "nothing more to do"
            )
            return
        response = _send(
            lambda: client.post(f"/v1/artifacts/{artifact_id}/revoke", params={"reason": reason})
        )
    _raise_for(response)
    console.print(f"revoked {outside(artifact_id)}; recipients are being notified")
