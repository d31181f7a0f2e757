"""``entente share`` of an evaluation log: which summary goes with it, and ``--dry-run``.

The summary itself is :mod:`service.evaluations`' (Inspect's reader, a bounded schema); this
module decides, for one invocation, whether the share carries the summary read from the log,
one the publisher wrote (``--summary FILE``), or none (``--no-summary``, a file that is not an
Inspect log, or a machine without ``inspect-ai``: the log is then shared as an opaque file, and
stderr says how to enable the summary). :func:`show_dry_run` prints what would leave the
machine unencrypted, and shares nothing.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import typer
from pydantic import ValidationError

from service.cli._common import console, err_console
from service.cli._terminal import SafeTable, outside
from service.errors import UsageError
from service.evaluations import (
    EvaluationSummary,
    InspectUnavailableError,
    NotAnEvaluationLogError,
    looks_like_log,
    read_summary,
)

__all__ = ["evaluation_summary", "show_dry_run"]

MAX_SUMMARY_FILE_BYTES = 64 * 1024


def _from_file(path: Path) -> EvaluationSummary:
    try:
        with open(path, "rb") as fh:
            raw = fh.read(MAX_SUMMARY_FILE_BYTES + 1)
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None
    if len(raw) > MAX_SUMMARY_FILE_BYTES:
        raise UsageError(f"--summary: {path} is larger than {MAX_SUMMARY_FILE_BYTES} bytes")
    try:
        return EvaluationSummary.model_validate_json(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "the summary"
        raise UsageError(f"--summary: {path}: {where}: {err['msg']}") from None


def evaluation_summary(
    file: Path, *, summary_file: Path | None, skip: bool
) -> EvaluationSummary | None:
    """The summary to share ``file`` with, or None (shared as an opaque file)."""
    if summary_file is not None and skip:
        raise UsageError("--summary and --no-summary exclude each other")
    if summary_file is not None:
        return _from_file(summary_file)
    if skip or not looks_like_log(file):
        return None
    try:
        return read_summary(file)
    except InspectUnavailableError as exc:
        err_console.print(outside(str(exc)))
    except NotAnEvaluationLogError as exc:
        err_console.print(f"{outside(str(exc))}: shared as a file without a summary")
    return None


def _sha256(file: Path) -> tuple[int, str]:
    digest = hashlib.sha256()
    size = 0
    with open(file, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


def _metrics(summary: dict[str, Any]) -> str:
    parts = []
    for scorer in summary.get("scorers", []):
        shown = ", ".join(f"{m['name']} {m['value']:.4g}" for m in scorer["metrics"]) or "-"
        parts.append(f"{scorer['name']}: {shown}")
    return "; ".join(parts) or "-"


def show_dry_run(file: Path, meta: dict[str, Any], *, as_json: bool) -> None:
    """Print what a share of ``file`` with ``meta`` would send unencrypted; share nothing."""
    size, sha256 = _sha256(file)
    if as_json:
        typer.echo(json.dumps({"metadata": meta, "size": size, "sha256": sha256}))
        return
    console.print(
        "Dry run: nothing was shared. In the signed manifest, readable by every recipient and "
        "by anyone who sees the delivery (not encrypted):"
    )
    table = SafeTable("field", "value")
    table.columns[1].overflow = "fold"  # whole values: a digest or a file name is copied
    for name in ("title", "tlp", "topics", "purposes", "partners", "embargo_until",
                 "expires_at", "onward_approved", "filename"):  # fmt: skip
        value = meta.get(name)
        shown = ", ".join(value) if isinstance(value, list) else value
        table.add_row(name, str(shown if shown not in (None, "") else "-"))
    table.add_row("size", f"{size} bytes")
    table.add_row("sha256", sha256)
    evaluation = meta.get("evaluation")
    if isinstance(evaluation, dict):
        dataset = evaluation.get("dataset") or {}
        headline = evaluation.get("headline") or {}
        rows = {
            "task": f"{evaluation['task']} (version {evaluation.get('task_version')})",
            "model": evaluation["model"],
            "dataset": f"{dataset.get('name') or '-'} ({dataset.get('samples')} samples)",
            "scorers and metrics": _metrics(evaluation),
            "headline": (
                f"{headline.get('scorer')} {headline.get('metric')} {headline.get('value')}"
                if headline
                else "-"
            ),
            "status": evaluation["status"],
            "run": f"{evaluation.get('started_at') or '-'} to "
            f"{evaluation.get('completed_at') or '-'}",
            "samples completed": f"{evaluation.get('samples_completed')} of "
            f"{evaluation.get('samples_total')}",
            "inspect version": evaluation.get("inspect_version") or "-",
        }
        for name, value in rows.items():
            table.add_row(f"evaluation: {name}", str(value))
    console.print(table)
    console.print(
        f"Encrypted to the partners and your node only: the content of {outside(file.name)}"
        + (" (its samples, answers, scores and transcripts)." if evaluation else ".")
    )
