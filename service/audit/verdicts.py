"""What :func:`service.audit.verify.verify_log` reads from and says: the source it reads a log
through, what it remembers and what the witnesses answered, and its verdict."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from crypto.note import NoteVerifier

__all__ = ["CheckpointInfo", "LogSource", "Remembered", "Verdict", "WitnessView"]


class LogSource(Protocol):
    """Where a log is read from. Nothing it returns is trusted."""

    def checkpoints(self, upto: int | None) -> Iterable[bytes]:
        """Every checkpoint note (with cosignatures) of size at most ``upto``, in size order."""
        ...

    def entries(self, start: int | None, end: int) -> Iterable[Mapping[str, Any]]:
        """Entries with ``start <= seq < end`` (``start`` None: every seq below ``end``)."""
        ...

    def consistency_proof(self, old: int, new: int) -> list[bytes]:
        """A consistency proof (used only to locate a bad entry)."""
        ...

    def uncovered(self, size: int) -> tuple[int, int] | None:
        """(seq, id) of an entry with seq >= ``size``, if the source can tell; else None."""
        ...

    # Optional: ``leaf_batches(size) -> Iterable[LeafBatch]``, the verifier's own hashing of
    # seqs 0 .. size - 1 done closer to the data (``DatabaseSource`` uses worker processes).


@dataclass(frozen=True)
class Remembered:
    """The checkpoint a verifier saw last time (from its local state)."""

    size: int
    root: bytes
    note: bytes


@dataclass(frozen=True)
class WitnessView:
    """What one trusted witness answered when asked for the latest checkpoint it cosigned for
    this log (``note``), or why it could not be asked (``error``)."""

    verifier: NoteVerifier  # the witness's cosignature key
    note: bytes | None
    error: str | None = None


@dataclass(frozen=True)
class CheckpointInfo:
    size: int
    root: bytes
    note: bytes
    cosigners: tuple[str, ...]  # names of trusted witnesses whose cosignature verified
    remembered: bool = False  # the verifier's own copy from an earlier run
    witness: str | None = None  # the checkpoint a witness holds (its name)
    fresh: bool = False  # (a witness's) cosigned when it was asked, so it vouches


@dataclass
class Verdict:
    ok: bool
    origin: str
    size: int = 0  # entries verified
    checkpoints: int = 0
    latest: CheckpointInfo | None = None
    latest_cosigned: CheckpointInfo | None = None  # newest with >= min_cosignatures
    remembered_size: int | None = None
    witnessed: dict[str, int] = field(default_factory=dict)  # witness: size it holds, consistent
    vouched: tuple[str, ...] = ()  # witnesses vouching for the latest checkpoint
    keys: tuple[str, ...] = ()  # fingerprints of the log keys, oldest first (rotations)
    problem: str | None = None
    bad_seq: int | None = None
    bad_id: int | None = None
    notes: list[str] = field(default_factory=list)

    def fail(self, problem: str, *, seq: int | None = None, entry_id: int | None = None) -> Verdict:
        self.ok = False
        self.problem = problem
        self.bad_seq = seq
        self.bad_id = entry_id
        return self
