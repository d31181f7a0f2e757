"""``entente backup`` and ``entente restore`` (``service.backup``; docs/backup.md)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer

from service.cli._common import DbUrlOpt, HomeOpt, console, err_console, settings_for
from service.cli._terminal import outside

__all__ = ["backup", "restore"]

OPERATOR = "admin:cli"


@contextmanager
def _progress() -> Iterator[Callable[[str, int, int | None], None]]:
    """A rich progress line on a terminal (stderr); nothing otherwise."""
    if not sys.stderr.isatty():
        yield lambda _what, _done, _total: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        console=err_console,
        transient=True,
    ) as bar:
        task = bar.add_task("starting", total=None)

        def update(what: str, done: int, total: int | None) -> None:
            bar.update(task, description=what, completed=done, total=total)

        yield update


def backup(
    output: Annotated[
        Path,
        typer.Option(
            "-o",
            "--output",
            help="The new backup: a folder, or one tar file when the name ends in .tar",
        ),
    ],
    home: HomeOpt = None,
    database_url: DbUrlOpt = None,
) -> None:
    """Write a consistent backup of a node, running or not: database snapshot, home (keys still
    encrypted), blobs (or their object keys on S3), and a manifest of SHA-256 digests."""
    from service.backup.take import take_backup

    settings = settings_for(home, database_url)
    with _progress() as progress:
        summary = take_backup(settings, output, progress=progress, actor=OPERATOR)
    what = "object keys listed" if summary.store == "s3" else "copied"
    console.print(f"Backup written to [bold]{summary.path}[/]")
    console.print(f"  database  {summary.database}, audit log size {summary.log_size}")
    console.print(f"  blobs     {summary.blobs} {what} ({summary.blob_bytes} bytes)")
    if summary.missing:
        console.print(
            f"  [yellow]note[/]      {summary.missing} blob(s) were deleted after the snapshot "
            "(retention or revocation); their rows are restored without them"
        )
    console.print(f"  manifest  sha256 {summary.manifest_sha256}")


def restore(
    source: Annotated[Path, typer.Argument(help="A backup folder or .tar file")],
    home: HomeOpt = None,
    database_url: DbUrlOpt = None,
    ask_witnesses: Annotated[
        bool,
        typer.Option(
            "--ask-witnesses/--no-ask-witnesses",
            help="Ask the log's witnesses now whether they hold a newer checkpoint (else: when "
            "the node starts; it signs nothing before)",
        ),
    ] = True,
    manifest_sha256: Annotated[
        str | None,
        typer.Option(
            "--manifest-sha256",
            help="The manifest digest `entente backup` printed (and audited as node.backup): "
            "the restore refuses any other backup",
        ),
    ] = None,
    unverified: Annotated[
        bool,
        typer.Option(
            "--unverified",
            help="Restore without --manifest-sha256: the backup's own digests prove it whole, "
            "not that it is the one you took (recorded in node.restored)",
        ),
    ] = False,
) -> None:
    """Restore a backup into a new home and an empty database, after checking every digest and
    that its manifest is the one the backup printed; refuses a home or database that is not
    empty."""
    from service.backup.restore import restore_backup

    if home is None:
        raise typer.BadParameter("--home is required: the new home to restore into")
    if manifest_sha256 is None and not unverified:
        raise typer.BadParameter(
            "give --manifest-sha256 DIGEST, the digest `entente backup` printed (its node.backup "
            "audit entry holds it too): whoever can edit a backup can recompute the digests "
            "inside it. --unverified restores without it."
        )
    settings = settings_for(home, database_url)
    with _progress() as progress:
        summary = restore_backup(
            source, settings, progress=progress, actor=OPERATOR, ask_witnesses=ask_witnesses,
            manifest_sha256=manifest_sha256,
        )  # fmt: skip
    console.print(f"Restored node [bold]{summary.node_id}[/] into {summary.home}")
    console.print(f"  audit log size {summary.log_size}, {summary.blobs} blobs")
    behind = [c for c in summary.witnesses if c.state == "behind"]
    waiting = [c for c in summary.witnesses if c.state in ("unreachable", "unverifiable")]
    for check in behind:
        err_console.print(f"[bold red]LOG BEHIND ITS WITNESSES:[/] {check.detail}")
    if behind:
        err_console.print(
            "The restored node will sign no checkpoint (it would fork its log). Restore a newer "
            "backup if there is one; see docs/backup.md."
        )
        raise typer.Exit(2)
    for check in waiting:
        err_console.print(
            f"[yellow]witness {check.witness} not confirmed[/] ({check.detail}): the node signs "
            "no checkpoint until it answers"
        )
    if not ask_witnesses:
        console.print("  witnesses are asked when the node starts; it signs nothing before")
    err_console.print(
        f"[yellow]This is the node as of {outside(summary.created or 'its snapshot')}.[/] Before "
        "serving it: revoke again every token revoked since, pin again every partner that "
        "rotated its keys since, and tell the partners it was restored (docs/backup.md, "
        "'What a restore cannot know'). Every console session was ended."
    )
    console.print(
        "Check it with `entente audit verify --home`, then start it with `entente serve`."
    )
