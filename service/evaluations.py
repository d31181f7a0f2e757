"""Inspect evaluation logs: the summary a partner sees before opening one.

An Inspect log (``.eval`` or ``.json``, written by ``inspect-ai``) is shared like any file: its
bytes travel only in the encrypted payload. What leaves unencrypted, in the signed manifest's
``evaluation`` field, is :class:`EvaluationSummary`, built here from the log's *header* as
Inspect's own reader returns it (``inspect_ai.log.read_eval_log(path, header_only=True)``; this
module never parses the format itself): task and task version, model, dataset name and size,
scorers with their metrics and the headline metric, Inspect's version, the run's status and
times. Nothing else of the header is copied: not the samples, not their reductions (which hold
answers), not the error message and traceback of a failed run, not task arguments or metadata.

:class:`EvaluationSummary` is the one schema of that summary: ``POST /v1/artifacts`` checks it
(``service.schemas.ShareMetadata``), and a received manifest's summary is shown only if it
passes it (:func:`summary_from_manifest`). Every string and list in it is bounded; the manifest
bounds the whole (``crypto.sealed.MAX_EVALUATION_BYTES``).

``inspect-ai`` is optional (``pip install 'entente[inspect]'``): without it
:func:`read_summary` raises :class:`InspectUnavailableError`, and ``entente share`` sends the log
as an opaque file, saying how to enable the summary. This module does not talk to a node or a
database; ``service.client`` (used by ``entente share`` and the Inspect hook) does.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

from service.errors import UsageError

__all__ = [
    "DEFAULT_PURPOSES",
    "DEFAULT_TOPICS",
    "EVALUATION_SUFFIXES",
    "INSTALL_HINT",
    "EvaluationSummary",
    "InspectUnavailableError",
    "NotAnEvaluationLogError",
    "default_title",
    "looks_like_log",
    "read_summary",
    "summarize",
    "summary_from_manifest",
]

EVALUATION_SUFFIXES = (".eval", ".json")  # the file names Inspect writes its logs under
INSTALL_HINT = "pip install 'entente[inspect]'"
DEFAULT_TOPICS = ("evaluation",)  # of a share of an evaluation log, unless the publisher names some
DEFAULT_PURPOSES = ("evaluation",)
MAX_SCORERS = 16
MAX_METRICS = 16  # per scorer

Text = Annotated[str, StringConstraints(min_length=1, max_length=200)]
Stamp = Annotated[str, StringConstraints(min_length=1, max_length=40)]


class InspectUnavailableError(UsageError):
    """``inspect-ai`` is not installed here: a log can be shared only as an opaque file."""


class NotAnEvaluationLogError(UsageError):
    """The file is not an Inspect log its reader accepts."""


def _finite(value: float) -> float:
    if not math.isfinite(value):
        raise ValueError("a metric value is a finite number")
    return value


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Metric(_Model):
    name: Text
    value: Annotated[float, AfterValidator(_finite)]


class Scorer(_Model):
    name: Text
    scorer: Text
    metrics: Annotated[list[Metric], Field(max_length=MAX_METRICS)] = []


class Headline(_Model):
    """The metric that best summarises the run, as Inspect resolved it."""

    scorer: Text
    metric: Text
    value: Annotated[float, AfterValidator(_finite)] | None = None


class Dataset(_Model):
    name: Text | None = None
    samples: Annotated[int, Field(ge=0)] | None = None


class EvaluationSummary(_Model):
    """What a partner sees of an evaluation log before opening it (unencrypted, signed)."""

    format: Literal["inspect"] = "inspect"  # the tool that wrote the log
    task: Text
    task_version: Annotated[str, StringConstraints(max_length=64)] | int = 0
    model: Text
    dataset: Dataset = Dataset()
    scorers: Annotated[list[Scorer], Field(max_length=MAX_SCORERS)] = []
    headline: Headline | None = None
    samples_total: Annotated[int, Field(ge=0)] | None = None
    samples_completed: Annotated[int, Field(ge=0)] | None = None
    status: Literal["started", "success", "cancelled", "error"]
    started_at: Stamp | None = None
    completed_at: Stamp | None = None
    inspect_version: Text | None = None


def looks_like_log(path: Path) -> bool:
    """Whether ``path`` is named as Inspect names its logs (``.eval``, ``.json``)."""
    return path.suffix.lower() in EVALUATION_SUFFIXES


def _cut(value: object, limit: int = 200) -> str | None:
    """A header string, within its bound (Inspect does not bound them); None when empty."""
    if value is None:
        return None
    text = str(value)
    return text[:limit] or None


def summarize(log: Any) -> EvaluationSummary:
    """The summary of an ``inspect_ai.log.EvalLog`` (a header suffices): only the fields named
    in :class:`EvaluationSummary`, each within its bound."""
    spec = log.eval
    results = log.results
    scorers = []
    headline = None
    if results is not None:
        for score in results.scores[:MAX_SCORERS]:
            metrics = [
                Metric(name=str(m.name)[:200], value=float(m.value))
                for m in list(score.metrics.values())[:MAX_METRICS]
                if isinstance(m.value, int | float) and math.isfinite(m.value)
            ]
            scorers.append(
                Scorer(name=score.name[:200], scorer=score.scorer[:200], metrics=metrics)
            )
        chosen = getattr(results, "headline", None)
        if chosen is not None:
            value = next(
                (
                    m.value
                    for s in scorers
                    if s.name == chosen.score
                    for m in s.metrics
                    if m.name == chosen.metric
                ),
                None,
            )
            headline = Headline(
                scorer=str(chosen.score)[:200], metric=str(chosen.metric)[:200], value=value
            )
    elif spec.scorers:
        scorers = [
            Scorer(name=s.name[:200], scorer=s.name[:200]) for s in spec.scorers[:MAX_SCORERS]
        ]
    version = spec.task_version
    stats = log.stats
    return EvaluationSummary(
        task=str(spec.task)[:200],
        task_version=version if isinstance(version, int) else str(version)[:64],
        model=str(spec.model)[:200],
        dataset=Dataset(name=_cut(spec.dataset.name), samples=spec.dataset.samples),
        scorers=scorers,
        headline=headline,
        samples_total=None if results is None else results.total_samples,
        samples_completed=None if results is None else results.completed_samples,
        status=log.status,
        started_at=_cut(stats.started_at, 40),
        completed_at=_cut(stats.completed_at, 40),
        inspect_version=_cut(spec.packages.get("inspect_ai")),
    )


def read_summary(path: Path) -> EvaluationSummary:
    """Read ``path``'s header with Inspect's reader and summarise it.

    Raises :class:`InspectUnavailableError` when ``inspect-ai`` is not installed, and
    :class:`NotAnEvaluationLogError` when Inspect does not read the file as a log."""
    try:
        from inspect_ai.log import read_eval_log
    except ImportError:
        raise InspectUnavailableError(
            f"inspect-ai is not installed, so {path.name} is shared as an opaque file without "
            f"a summary; to summarise evaluation logs: {INSTALL_HINT}"
        ) from None
    try:
        header = read_eval_log(str(path), header_only=True)
    except Exception as exc:  # Inspect's reader raises many kinds on a file it cannot read
        raise NotAnEvaluationLogError(
            f"{path.name} is not an Inspect evaluation log ({type(exc).__name__})"
        ) from None
    try:
        return summarize(header)
    except (ValueError, AttributeError, TypeError) as exc:
        raise NotAnEvaluationLogError(
            f"{path.name}: its header cannot be summarised ({type(exc).__name__})"
        ) from None


def default_title(summary: EvaluationSummary) -> str:
    """``task on model`` (and the status, unless it succeeded): the share's default title."""
    title = f"Inspect evaluation: {summary.task} on {summary.model}"
    if summary.status != "success":
        title += f" ({summary.status})"
    return title[:500]


def summary_from_manifest(value: object) -> EvaluationSummary | None:
    """A manifest's ``evaluation`` field as a checked summary, or None (absent, or not a
    summary this node understands: it is then shown nowhere but in the manifest itself)."""
    if not isinstance(value, dict):
        return None
    try:
        return EvaluationSummary.model_validate(value)
    except ValueError:
        return None
