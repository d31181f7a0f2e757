"""``entente audit export`` and ``entente audit verify-export``: export bundles of a node's log,
written and checked offline.

``export`` writes a bundle (``service.audit.bundle``): the entries of a range (``--from``,
``--to``, both included), optionally of some kinds (``--kind``) or about one artifact
(``--artifact``), each with its inclusion proof against the latest signed checkpoint; over HTTP
(``--url``, ``GET /audit/v1/bundle``) or from the database (``--home``, recorded as
``audit.exported`` by ``admin:cli``). ``--raw`` writes the whole log as plain JSON Lines instead
(one canonical entry per line, no proofs: ``GET /audit/v1/export``), as this command did before
bundles.

``verify-export`` needs only the bundle and the node's descriptor (``entente identity export``,
or ``/.well-known/entente.json``), whose fingerprint the auditor confirmed out of band
(``--fingerprint``): it checks the checkpoint's signature with the log key the descriptor names,
every entry's proof against that checkpoint's root, and that the entries are what the bundle's
filter says. It prints one verdict and exits 0 (verified) or 1.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Annotated, Any

import httpx
import typer

from crypto.descriptor import NodeDescriptor, verify_descriptor
from crypto.dsse import Envelope
from crypto.errors import CryptoError
from crypto.keys import format_fingerprint, normalize_fingerprint
from crypto.note import NoteVerifier
from service.audit.bundle import BundleVerdict, bounded_lines, verify_bundle
from service.audit.checkpoints import latest_checkpoint
from service.audit.entries import encode_leaf, iter_entries, log_origin
from service.audit.errors import AuditSourceError, BundleError
from service.audit.export import bundle_lines, plan_export, record_export
from service.audit.log import record
from service.audit.rotations import log_key
from service.audit.sources import (
    IDENTITY,
    MAX_PROBLEM_BYTES,
    body_chunks,
    problem_detail,
    read_capped,
)
from service.cli._audit_common import (
    OPERATOR,
    TokenOpt,
    UrlOpt,
    http_client,
    open_offline,
    witness_keys,
)
from service.cli._common import DbUrlOpt, HomeOpt, JsonOpt, console, err_console, settings_for
from service.cli._terminal import outside
from service.errors import NotFoundError, UsageError
from service.home import open_home

__all__ = ["export", "verify_export"]


@contextmanager
def _sink(output: Path | None) -> Iterator[IO[bytes]]:
    """stdout, or ``output`` written beside itself and renamed into place once complete (a
    failed export leaves no file behind)."""
    if output is None:
        yield sys.stdout.buffer
        sys.stdout.buffer.flush()
        return
    partial = output.with_name(output.name + ".partial")
    try:
        with partial.open("wb") as sink:
            yield sink
        os.replace(partial, output)
    finally:
        partial.unlink(missing_ok=True)


def _download(client: httpx.Client, path: str, params: dict[str, Any], sink: IO[bytes]) -> int:
    """Copy the node's answer to ``sink`` as it comes (never inflated, at the minimum rate:
    ``service.audit.sources.body_chunks``); an error answer is read for its detail only."""
    lines = 0
    try:
        with client.stream("GET", path, params=params, headers=IDENTITY) as resp:
            if resp.status_code != 200:
                reason = problem_detail(resp, read_capped(resp, MAX_PROBLEM_BYTES))
                raise AuditSourceError(f"the export answered {resp.status_code}: {reason}")
            for chunk in body_chunks(resp):
                sink.write(chunk)
                lines += chunk.count(b"\n")
    except httpx.HTTPError as exc:
        raise AuditSourceError(f"the export failed: {type(exc).__name__}") from None
    return lines


def _raw_offline(db: Any, start: int, sink: IO[bytes]) -> int:
    with db.session() as session:
        try:
            size = latest_checkpoint(session).size
        except NotFoundError:
            size = 0
        record(
            session, kind="audit.exported", actor=OPERATOR,
            detail={"start": start, "size": size, "via": "cli"}, now=datetime.now(UTC),
        )  # fmt: skip
    count = 0
    for obj in iter_entries(db.session, after=start - 1, size=size):
        sink.write(encode_leaf(obj) + b"\n")
        count += 1
    return count


def export(
    url: UrlOpt = None,
    token: TokenOpt = None,
    home: HomeOpt = None,
    database_url: DbUrlOpt = None,
    output: Annotated[
        Path | None, typer.Option("-o", "--output", help="Write to FILE instead of stdout")
    ] = None,
    first: Annotated[
        int | None, typer.Option("--from", min=0, help="First entry (seq) \\[default: 0]")
    ] = None,
    last: Annotated[
        int | None,
        typer.Option("--to", min=0, help="Last entry (seq, included) \\[default: the latest]"),
    ] = None,
    kind: Annotated[
        list[str] | None, typer.Option("--kind", help="Only entries of this kind; repeatable")
    ] = None,
    artifact: Annotated[
        str | None, typer.Option("--artifact", help="Only entries about this artifact id")
    ] = None,
    raw: Annotated[
        bool,
        typer.Option("--raw", help="The whole log from --from as plain JSON Lines, no proofs"),
    ] = False,
) -> None:
    """Export a range of the log with inclusion proofs (a bundle for `audit verify-export`)."""
    if (url is None) == (home is None and database_url is None):
        raise UsageError("give either --url URL or --home DIR")
    if raw and (last is not None or kind or artifact is not None):
        raise UsageError("--raw exports the whole log from --from: no --to, --kind or --artifact")
    params: dict[str, Any] = {"from": first, "to": last, "kind": kind or [], "artifact": artifact}
    params = {k: v for k, v in params.items() if v not in (None, [])}
    with _sink(output) as sink:
        if url is not None:
            client = http_client(url, token)
            try:
                if raw:
                    count = _download(client, "/audit/v1/export", {"start": first or 0}, sink)
                else:
                    count = _download(client, "/audit/v1/bundle", params, sink) - 2
            finally:
                client.close()
        else:
            path, db = open_offline(home, database_url)
            try:
                if raw:
                    count = _raw_offline(db, first or 0, sink)
                else:
                    count = _bundle_offline(
                        path, db, database_url, first, last, kind, artifact, sink
                    )
            finally:
                db.dispose()
    if output is not None:
        what = "entries" if raw else "entries with their proofs"
        err_console.print(f"exported {count} {what} to {output}")


def _bundle_offline(
    path: Path, db: Any, database_url: str | None, first: int | None, last: int | None,
    kind: list[str] | None, artifact: str | None, sink: IO[bytes],
) -> int:  # fmt: skip
    node_id = open_home(path).node_id
    limit = settings_for(path, database_url).audit_export_max_entries
    now = datetime.now(UTC)
    with db.session() as session:
        plan = plan_export(
            session, node_id=node_id, first=first, last=last, kinds=kind or (),
            artifact=artifact, max_entries=limit,
        )  # fmt: skip
        record_export(session, plan, actor=OPERATOR, via="cli", now=now)
    lines = 0
    for line in bundle_lines(db.session, plan, now=now):
        sink.write(line)
        lines += 1
    return lines - 2


# ---------------------------------------------------------------------------------------------
# verify-export


def _descriptor(path: Path, fingerprint: str | None, notes: list[str]) -> NodeDescriptor:
    try:
        envelope = Envelope.from_bytes(path.read_bytes())
        created = NodeDescriptor.from_json(json.loads(envelope.payload)).created
        # Self-signature and form; an expired descriptor still names the key of its old log.
        descriptor = verify_descriptor(envelope, now=created)
    except (CryptoError, ValueError) as exc:
        raise UsageError(f"{path} is not a node descriptor that verifies: {exc}") from None
    if fingerprint is None:
        notes.append(
            f"the descriptor's fingerprint is {format_fingerprint(descriptor.fingerprint)}: "
            "compare it with the one you have out of band, or pass --fingerprint"
        )
        return descriptor
    try:
        wanted = normalize_fingerprint(fingerprint)
    except CryptoError as exc:
        raise UsageError(str(exc)) from None
    if wanted != descriptor.fingerprint:
        raise UsageError(
            f"the descriptor's fingerprint is {format_fingerprint(descriptor.fingerprint)}, "
            "not the --fingerprint given: this is not the node you meant"
        )
    return descriptor


def _print(verdict: BundleVerdict, log: NoteVerifier, source: str, notes: list[str]) -> None:
    # The filter's strings and exported_at are the bundle's (exported_at is not even signed):
    # outside text, each shown on the line that quotes it.
    flt = verdict.filter
    console.print(
        f"[bold green]VERIFIED[/] export bundle of {outside(verdict.origin)} ({outside(source)})"
    )
    console.print(
        f"  checkpoint   size {verdict.size}, signed by the log key {outside(log.name)}"
        f"+{log.key_id:08x}"
    )
    console.print(f"  entries      {verdict.count}, each proved to be in that checkpoint")
    kinds = outside(", ".join(flt.kinds) or "any")
    console.print(
        f"  filter       entries {flt.first} to {flt.last}, kind {kinds}, "
        f"artifact {outside(flt.artifact or 'any')}; every entry matches it"
    )
    if verdict.complete:
        console.print(f"  complete     every entry from {flt.first} to {flt.last} is present")
    else:
        console.print(
            "  complete     not provable: with a kind or artifact filter a bundle cannot show "
            "that no matching entry was left out (export the whole range to check)"
        )
    if verdict.cosigners:
        console.print(f"  cosigned     by {outside(', '.join(verdict.cosigners))}")
    console.print(f"  exported     {outside(verdict.exported_at)}")
    for note in notes:
        console.print(f"  note         {outside(note)}")


def verify_export(
    bundle: Annotated[Path, typer.Argument(help="The bundle (`audit export` output); - for stdin")],
    descriptor: Annotated[
        Path,
        typer.Option(
            "--descriptor",
            help="The node's descriptor (`entente identity export`, /.well-known/entente.json)",
        ),
    ],
    fingerprint: Annotated[
        str | None,
        typer.Option("--fingerprint", help="The node's fingerprint, as given out of band"),
    ] = None,
    witness: Annotated[
        list[str] | None,
        typer.Option("--witness", help="A witness key (vkey, type 0x04) to check; repeatable"),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Check an export bundle offline with the node's descriptor alone."""
    notes: list[str] = []
    desc = _descriptor(descriptor, fingerprint, notes)
    log = NoteVerifier(log_origin(desc.node_id), log_key(desc))
    witnesses = witness_keys(witness or [])
    source = "stdin" if str(bundle) == "-" else str(bundle)
    problem: str | None = None
    verdict: BundleVerdict | None = None
    try:
        if str(bundle) == "-":
            verdict = verify_bundle(bounded_lines(sys.stdin.buffer), log=log, witnesses=witnesses)
        else:
            with bundle.open("rb") as stream:
                verdict = verify_bundle(bounded_lines(stream), log=log, witnesses=witnesses)
    except BundleError as exc:
        problem = exc.message
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "ok": verdict is not None,
                    "origin": log.name,
                    "source": source,
                    "problem": problem,
                    "entries": verdict.count if verdict else None,
                    "size": verdict.size if verdict else None,
                    "filter": verdict.filter.to_json() if verdict else None,
                    "complete": verdict.complete if verdict else None,
                    "cosigners": list(verdict.cosigners) if verdict else [],
                    "notes": notes,
                }
            )
        )
    elif verdict is not None:
        _print(verdict, log, source, notes)
    else:
        console.print(
            f"[bold red]FAILED[/] export bundle of {outside(log.name)} ({outside(source)})"
        )
        console.print(f"  {outside(problem)}")
    if verdict is None:
        raise typer.Exit(1)
