"""``entente audit``: verify a node's audit log without trusting the node, export it, show its
checkpoint.

``verify`` reads the log over HTTP (``--url`` with an auditor token) or straight from the
database (``--home``, offline), recomputes every leaf hash and the tree, checks every checkpoint
signature and cosignature, and checks consistency with the checkpoint it verified last time
(kept per log in a local state file) and with the latest checkpoint each witness holds (asked
of the witnesses themselves, ``GET /witness/v1/checkpoint``, before the log is read). The log's
keys are followed across rotations from the rotation records in the log, starting from the key
pinned with ``--fingerprint`` or remembered from last time. It prints one verdict and exits 0
(verified) or 1. ``export`` and ``verify-export`` (export bundles) are ``audit_export``.
"""

from __future__ import annotations

import base64
import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer

from crypto.descriptor import NodeDescriptor, verify_descriptor
from crypto.dsse import MAX_ENVELOPE_BYTES, Envelope
from crypto.errors import CryptoError
from crypto.keys import format_fingerprint, normalize_fingerprint
from crypto.note import MAX_NOTE_BYTES, NoteVerifier, open_checkpoint
from service.audit.checkpoints import latest_checkpoint
from service.audit.entries import log_origin
from service.audit.errors import AuditSourceError, RotationError
from service.audit.rotations import LogKeys, follow_rotations, log_key
from service.audit.sources import DatabaseSource, HttpSource, ask_witness
from service.audit.verify import Remembered, Verdict, verify_log
from service.audit.witness_choice import quorum
from service.cli import audit_export
from service.cli._audit_common import (
    TokenOpt,
    UrlOpt,
    http_client,
    open_offline,
    rolled_back,
    witness_keys,
    witnesses_from_db,
    witnesses_from_node,
)
from service.cli._audit_state import (
    STATE_VERSION,
    default_state_path,
    forget,
)
from service.cli._audit_state import (
    load_state as _load_state,
)
from service.cli._audit_state import (
    save_state as _save_state,
)
from service.cli._common import DbUrlOpt, HomeOpt, JsonOpt, console, err_console, settings_for
from service.cli._terminal import outside, printable
from service.errors import UsageError
from service.home import open_home

app = typer.Typer(
    help="Verify, export and inspect a node's audit transparency log.", no_args_is_help=True
)
app.command("export")(audit_export.export)
app.command("verify-export")(audit_export.verify_export)
app.command("forget")(forget)

# Without --witness the witness keys come from the party being audited, which chooses them.
_UNPINNED = "witness keys {where}, the audited party's choice: pin your own with --witness"


def _remembered(entry: Any) -> Remembered | None:
    if not isinstance(entry, dict):
        return None
    try:
        note = str(entry["checkpoint"]).encode("utf-8")
        return Remembered(int(entry["size"]), base64.b64decode(entry["root"]), note)
    except (KeyError, TypeError, ValueError):
        raise UsageError(
            "the audit state file is corrupt; remove the entry or pass --state"
        ) from None


# ---------------------------------------------------------------------------------------------
# Keys


def _pin(
    descriptor: NodeDescriptor,
    keys: LogKeys,
    fingerprint: str | None,
    previous: dict[str, Any],
    notes: list[str],
) -> None:
    """The pinned key (--fingerprint) or the one seen last time must be a key of the log's
    chain, which ends at the node's current key: each rotation record is signed by the key it
    retires and the one it brings, so trust in one key of the chain extends to the others."""
    chain = keys.fingerprints
    if fingerprint is not None:
        try:
            wanted = normalize_fingerprint(fingerprint)
        except CryptoError as exc:
            raise UsageError(str(exc)) from None
        if wanted not in chain:
            raise UsageError(
                f"the node's key is {format_fingerprint(descriptor.fingerprint)}, and the "
                "--fingerprint given is not one of the keys its log was signed with"
            )
        start = wanted
    else:
        seen = previous.get("fingerprint")
        if seen is not None and seen not in chain:
            raise UsageError(
                f"the log key of {descriptor.node_id} changed since the last verification "
                f"(was {str(seen)[:16]}…, now {descriptor.fingerprint[:16]}…) and its log "
                "records no rotation from that key; if you confirmed the new key out of band, "
                "pass --fingerprint with it"
            )
        start = seen if isinstance(seen, str) else descriptor.fingerprint
    if start != descriptor.fingerprint:
        hops = len(chain) - 1 - chain.index(start)
        notes.append(
            f"followed {hops} key rotation(s) from {start[:16]}… to "
            f"{descriptor.fingerprint[:16]}… (rotation records in the log, signed by both keys)"
        )


def _descriptor_from_home(home: Path) -> NodeDescriptor:
    envelope = open_home(home).descriptor_envelope()
    try:
        data = json.loads(envelope.payload)
        created = NodeDescriptor.from_json(data).created
        # Self-signature and form; an expired descriptor still names the key of its old log.
        return verify_descriptor(envelope, now=created)
    except (CryptoError, ValueError) as exc:
        raise UsageError(f"the node descriptor in {home} does not verify: {exc}") from None


# ---------------------------------------------------------------------------------------------
# Output


@contextmanager
def _progress(enabled: bool) -> Iterator[Callable[[int, int], None] | None]:
    if not enabled:
        yield None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=err_console,
        transient=True,
    ) as bar:
        task = bar.add_task("recomputing the tree", total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield update


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _print_verdict(
    verdict: Verdict, *, as_json: bool, source: str, notes: list[str], quorum: dict[str, Any]
) -> None:
    latest = verdict.latest
    cosigned = verdict.latest_cosigned
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "ok": verdict.ok,
                    "origin": verdict.origin,
                    "source": source,
                    "entries": verdict.size,
                    "checkpoints": verdict.checkpoints,
                    "latest": None
                    if latest is None
                    else {"size": latest.size, "root": _b64(latest.root)},
                    "cosigned": None
                    if cosigned is None
                    else {"size": cosigned.size, "witnesses": list(cosigned.cosigners)},
                    "remembered_size": verdict.remembered_size,
                    "witnessed": verdict.witnessed,
                    "vouched": list(verdict.vouched),
                    "quorum": quorum,
                    "keys": list(verdict.keys),
                    "problem": verdict.problem,
                    "bad_seq": verdict.bad_seq,
                    "bad_id": verdict.bad_id,
                    "notes": notes + verdict.notes,
                }
            )
        )
        return
    # Problems, notes and names quote what the node (or its witnesses) sent: outside text.
    origin, where = outside(verdict.origin), outside(source)
    if not verdict.ok:
        console.print(f"[bold red]FAILED[/] audit log {origin} ({where})")
        console.print(f"  {outside(verdict.problem)}")
        if verdict.bad_seq is not None:
            who = f" (id {verdict.bad_id})" if verdict.bad_id is not None else ""
            console.print(f"  first bad entry: seq {verdict.bad_seq}{who}")
        return
    console.print(f"[bold green]VERIFIED[/] audit log {origin} ({where})")
    console.print(f"  entries      {verdict.size}, every leaf hash recomputed from its fields")
    if latest is not None:
        console.print(
            f"  checkpoints  {verdict.checkpoints} signed by the log key; "
            f"latest size {latest.size}, root {_b64(latest.root)}"
        )
    if cosigned is not None:
        by = outside(", ".join(cosigned.cosigners))
        console.print(f"  cosigned     size {cosigned.size} by {by}")
    else:
        console.print("  cosigned     no checkpoint is cosigned by a trusted witness yet")
    for name, size in sorted(verdict.witnessed.items()):
        console.print(
            f"  witness      {outside(name)} holds size {size}: the log is consistent with it"
        )
    if len(verdict.keys) > 1:
        console.print(f"  keys         {len(verdict.keys)} (rotations followed from the log)")
    if verdict.remembered_size is not None:
        console.print(
            "  consistent   with the checkpoint verified last time "
            f"(size {verdict.remembered_size})"
        )
    for note in notes + verdict.notes:
        console.print(f"  note         {outside(note)}")


# ---------------------------------------------------------------------------------------------
# Commands


@app.command("verify")
def verify(
    url: UrlOpt = None,
    token: TokenOpt = None,
    home: HomeOpt = None,
    database_url: DbUrlOpt = None,
    state: Annotated[
        Path | None,
        typer.Option(
            "--state",
            help="Where the last verified checkpoint of each log is kept "
            "\\[default: ~/.config/entente/audit-state.json]",
            show_default=False,
        ),
    ] = None,
    fingerprint: Annotated[
        str | None,
        typer.Option("--fingerprint", help="Pin the node's key (as given out of band)"),
    ] = None,
    witness: Annotated[
        list[str] | None,
        typer.Option(
            "--witness",
            help="A trusted witness key (vkey, type 0x04); repeat for several. Default: the "
            "node's pinned partners (as the node lists them)",
        ),
    ] = None,
    min_cosignatures: Annotated[
        int,
        typer.Option(
            "--min-cosignatures",
            min=0,
            help="Fail unless N trusted witnesses vouch for the LATEST checkpoint (cosign it, or "
            "hold a checkpoint the log is consistent with)",
        ),
    ] = 0,
    fetch_witnesses: Annotated[
        bool,
        typer.Option(
            "--ask-witnesses/--no-ask-witnesses",
            help="Ask each trusted witness for the latest checkpoint it cosigned for this log "
            "and fail if the log is behind it or inconsistent with it",
        ),
    ] = True,
    quorum_of: Annotated[
        int,
        typer.Option(
            "--quorum",
            min=0,
            help="How many trusted witnesses must vouch for the latest checkpoint for it to count "
            "as witnessed \\[default: a majority of them]",
            show_default=False,
        ),
    ] = 0,
    require_quorum: Annotated[
        bool, typer.Option("--require-quorum", help="Fail when the quorum is not met")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Verify a node's audit log: every entry, every checkpoint, consistency with last time and
    with what its witnesses hold, and whether a quorum of them vouches for the latest one."""
    if (url is None) == (home is None and database_url is None):
        raise UsageError("give either --url URL (online) or --home DIR (offline)")
    state_path = state or default_state_path()
    data = _load_state(state_path)
    now = datetime.now(UTC)
    notes: list[str] = []
    trusted = witness_keys(witness or [])
    if url is not None:
        client = http_client(url, token)
        try:
            descriptor = _descriptor_from_url(client, now)
            listed = witnesses_from_node(client)
            if not witness:
                trusted = [v for v, _url in listed]
                notes.append(_UNPINNED.format(where="as listed by the node"))
            source: Any = HttpSource(client)
            urls = {v.vkey: u for v, u in listed}
            verdict = _run(
                source, descriptor, trusted, urls, fingerprint, data, notes,
                min_cosignatures, fetch_witnesses, now,
            )  # fmt: skip
        finally:
            client.close()
        where = url
    else:
        path, db = open_offline(home, database_url)
        try:
            descriptor = _descriptor_from_home(path)
            listed = witnesses_from_db(db, descriptor.node_id, settings_for(home).witness_count)
            if not witness:
                trusted = [v for v, _url in listed]
                notes.append(_UNPINNED.format(where="as read from the node's own database"))
            urls = {v.vkey: u for v, u in listed}
            verdict = _run(
                DatabaseSource(db), descriptor, trusted, urls, fingerprint, data, notes,
                min_cosignatures, fetch_witnesses, now,
            )  # fmt: skip
            rolled_back(db, verdict, notes)
        finally:
            db.dispose()
        where = str(path)
    origin = log_origin(descriptor.node_id)
    needed = quorum(len(trusted), quorum_of)
    met = bool(trusted) and len(verdict.vouched) >= needed  # no witness at all: no quorum
    verdict.notes.insert(0, f"quorum {'met' if met else 'NOT met'}: {len(verdict.vouched)} of "
                         f"{len(trusted)} trusted witnesses vouch, {needed} needed")  # fmt: skip
    _print_verdict(verdict, as_json=as_json, source=where, notes=notes,
                   quorum={"witnesses": len(trusted), "needed": needed,
                           "vouching": len(verdict.vouched), "met": met})  # fmt: skip
    if not verdict.ok or (require_quorum and not met):
        raise typer.Exit(1)
    if verdict.latest is not None:
        data.setdefault("version", STATE_VERSION)
        data["logs"][origin] = {
            "size": verdict.latest.size,
            "root": _b64(verdict.latest.root),
            "checkpoint": verdict.latest.note.decode("utf-8"),
            "fingerprint": descriptor.fingerprint,
            "verified_at": now.isoformat(),
            "source": where,
        }
        _save_state(state_path, data)


def _run(
    source: Any,
    descriptor: NodeDescriptor,
    witnesses: list[NoteVerifier],
    witness_urls: dict[str, str],  # witness vkey: its node's URL
    fingerprint: str | None,
    data: dict[str, Any],
    notes: list[str],
    min_cosignatures: int,
    fetch_witnesses: bool,
    now: datetime,
) -> Verdict:
    origin = log_origin(descriptor.node_id)
    previous: dict[str, Any] = data["logs"].get(origin) or {}
    try:
        keys = follow_rotations(
            origin,
            node_id=descriptor.node_id,
            current=descriptor.signing_key,
            current_log_key=descriptor.checkpoint_key,
            entries=source.rotations(),
        )
    except RotationError as exc:
        return Verdict(ok=False, origin=origin, problem=str(exc))
    except AuditSourceError as exc:
        return Verdict(ok=False, origin=origin, problem=f"reading the log failed: {exc}")
    _pin(descriptor, keys, fingerprint, previous, notes)
    seen = previous.get("fingerprint")
    if fingerprint is not None and seen is not None and seen not in keys.fingerprints:
        # A new log under the same node id (a node re-created), confirmed with --fingerprint:
        # what was remembered belongs to the old log, not to this one.
        notes.append(
            f"the checkpoint remembered for {origin} was the log of key {str(seen)[:16]}…, "
            "not of this one; it is replaced by this verification"
        )
        previous = {}
    # Asked BEFORE the log is read: an honest log only grows, so it cannot be behind them.
    views = (
        [ask_witness(v, witness_urls.get(v.vkey), origin) for v in witnesses]
        if fetch_witnesses
        else []
    )
    with _progress(sys.stderr.isatty()) as progress:
        try:
            verdict = verify_log(
                source,
                log=keys,
                witnesses=witnesses,
                remembered=_remembered(previous) if previous else None,
                witnessed=views,
                min_cosignatures=min_cosignatures,
                now=int(now.timestamp()),
                progress=progress,
            )
        except AuditSourceError as exc:
            verdict = Verdict(ok=False, origin=origin, problem=f"reading the log failed: {exc}")
    return verdict


def _descriptor_from_url(client: httpx.Client, now: datetime) -> NodeDescriptor:
    raw = HttpSource(client).get("/.well-known/entente.json", max_bytes=MAX_ENVELOPE_BYTES)
    try:
        return verify_descriptor(Envelope.from_bytes(raw), now=now)
    except CryptoError as exc:
        raise AuditSourceError(f"the node's descriptor does not verify: {exc}") from None


@app.command("checkpoint")
def checkpoint(
    url: UrlOpt = None,
    token: TokenOpt = None,
    home: HomeOpt = None,
    database_url: DbUrlOpt = None,
) -> None:
    """Print the latest signed checkpoint (a C2SP signed note with its cosignatures), once it
    verifies with the log key of the node's descriptor."""
    if (url is None) == (home is None and database_url is None):
        raise UsageError("give either --url URL or --home DIR")
    if url is not None:
        client = http_client(url, token)
        try:
            descriptor = _descriptor_from_url(client, datetime.now(UTC))
            note = HttpSource(client).get("/audit/v1/checkpoint", max_bytes=MAX_NOTE_BYTES)
        finally:
            client.close()
    else:
        path, db = open_offline(home, database_url)
        try:
            with db.session() as session:
                note = latest_checkpoint(session).note
        finally:
            db.dispose()
        descriptor = _descriptor_from_home(path)
    verifier = NoteVerifier(log_origin(descriptor.node_id), log_key(descriptor))
    open_checkpoint(note, log=verifier)  # CryptoError: one line, the note unprinted
    sys.stdout.write(printable(note.decode("utf-8"), lines=True))
