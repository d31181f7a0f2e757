"""Recomputing leaf hashes for the verifier, from entry objects or database rows, serially or
in worker processes.

The verifier consumes :class:`LeafBatch` es: consecutive leaves starting at a given seq, each leaf
``SHA-256(0x00 || encode(entry))`` computed here from the entry's fields, plus the first anomaly
met (a missing or misplaced ``seq``, a malformed entry), which ends the stream. Hashing is the
verifier's own work, so spreading it over processes changes nothing about what is trusted: each
worker reads a range of rows from the database and hashes them with the same code.

This module does not build the tree or check signatures (``service.audit.verify``).
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future, ProcessPoolExecutor
from multiprocessing import get_context
from typing import Any

from crypto import merkle
from crypto.errors import MalformedError
from service.audit.encoding import ENTRY_FIELDS, encode_leaf
from service.audit.entries import fetch_entry_rows, select_entry_rows
from service.audit.hashing import LeafBatch, Problem, hash_rows, int_id, missing

__all__ = [
    "HashRange",
    "LeafBatch",
    "Problem",
    "batches_from_entries",
    "batches_from_rows",
    "hash_range",
    "parallel_batches",
]

BATCH = 4096  # leaves per batch from entry objects
ROW_CHUNK = 50_000  # rows per worker task (PostgreSQL: a worker holds them all, about 140 MiB)
SERIAL_CHUNK = 10_000  # rows per database read in this process (50,000 rows held ~90 MiB here)
PARALLEL_MIN = 200_000  # entries below which worker processes are not worth starting
_FIELDS = frozenset(ENTRY_FIELDS)
_HINTS = frozenset({"leaf_hash"})  # served alongside entries by /audit/v1/entries; ignored
_ENTRY_LEN = len(ENTRY_FIELDS)


def known_fields(entry: Mapping[str, Any]) -> Mapping[str, Any]:
    """The entry without served hints (``leaf_hash``); any other unknown field is an error."""
    extra = set(entry) - _FIELDS - _HINTS
    if extra:
        raise MalformedError(f"unexpected field {sorted(extra)[0]!r}")
    return {k: v for k, v in entry.items() if k in _FIELDS}


def entry_leaf(entry: Mapping[str, Any]) -> bytes:
    if len(entry) != _ENTRY_LEN:
        entry = known_fields(entry)
    return merkle.leaf_hash(encode_leaf(entry))


def batches_from_entries(
    entries: Iterable[Mapping[str, Any]], *, start: int = 0
) -> Iterator[LeafBatch]:
    """Leaf batches from entry objects (the API's export, or anything else)."""
    expected = start
    leaves: list[bytes] = []
    last_id: Any = None
    leaf_hash, encode = merkle.leaf_hash, encode_leaf
    for entry in entries:
        seq = entry.get("seq")
        if seq != expected or type(seq) is not int:
            yield LeafBatch(
                expected - len(leaves), leaves, missing(expected, seq, entry.get("id"), last_id)
            )
            return
        try:
            leaves.append(
                leaf_hash(encode(entry if len(entry) == _ENTRY_LEN else known_fields(entry)))
            )
        except MalformedError as exc:
            entry_id = entry.get("id")
            problem = Problem(
                f"entry seq {seq} (id {entry_id}) is malformed: {exc}", seq, int_id(entry_id)
            )
            yield LeafBatch(expected - len(leaves), leaves, problem)
            return
        expected += 1
        last_id = entry.get("id")
        if len(leaves) >= BATCH:
            yield LeafBatch(expected - len(leaves), leaves)
            leaves = []
    yield LeafBatch(expected - len(leaves), leaves)


def batches_from_rows(conn_factory: Any, size: int) -> Iterator[LeafBatch]:
    """Leaf batches of seqs ``0 .. size - 1`` read from the database in this process."""
    expected = 0
    last_id: Any = None
    cursor: int | None = None
    while True:
        with conn_factory() as conn:
            # The first read has no lower bound, so a row with a negative seq shows up.
            rows = select_entry_rows(conn, seq_after=cursor, seq_below=size, limit=SERIAL_CHUNK)
        batch = hash_rows(rows, expected, last_id)
        yield batch
        if batch.problem is not None or len(rows) < SERIAL_CHUNK:
            return
        expected += len(batch.leaves)
        last_id = rows[-1][0]
        cursor = int(rows[-1][1])


# --- worker processes -------------------------------------------------------------------------

_engine: Any = None


def hash_range(
    url: str, lo: int | None, hi: int, expected: int
) -> tuple[bytes, Problem | None, int]:
    """In a worker: hash the rows with ``lo <= seq < hi`` (``lo`` None: every seq below ``hi``)
    of the database at ``url`` through SQLAlchemy (PostgreSQL; SQLite has
    ``service.audit.hashing.hash_sqlite_range``)."""
    global _engine
    if _engine is None:
        from service.db import open_database

        _engine = open_database(url, pool_size=1).engine
    rows = fetch_entry_rows(_engine, seq_from=lo, seq_below=hi, limit=hi - expected + 1)
    batch = hash_rows(rows, expected)
    return b"".join(batch.leaves), batch.problem, len(rows)


def worker_count() -> int:
    return max(1, min(os.cpu_count() or 1, 16))


HashRange = Callable[..., tuple[bytes, Problem | None, int]]


def parallel_batches(
    job: HashRange, head: tuple[Any, ...], size: int, *, workers: int, chunk: int = ROW_CHUNK
) -> Iterator[LeafBatch]:
    """Leaf batches of seqs ``0 .. size - 1``, hashed by ``workers`` processes, in order: each
    task is ``job(*head, lo, hi, expected)`` (:func:`hash_range`, or on SQLite
    ``service.audit.hashing.hash_sqlite_range``), picklable.

    At most ``2 * workers`` chunks are in flight, and a chunk's result is dropped once it is
    handed on: memory stays flat whatever the size of the log."""
    bounds = [*range(0, size, chunk), size]
    context = get_context("spawn")  # no forking of a process that holds database connections
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        pending: deque[tuple[int, int, Future[tuple[bytes, Problem | None, int]]]] = deque()
        next_task = 0

        def submit() -> None:
            nonlocal next_task
            lo, hi = bounds[next_task], bounds[next_task + 1]
            future = pool.submit(job, *head, None if lo == 0 else lo, hi, lo)
            pending.append((lo, hi, future))
            next_task += 1

        while next_task < len(bounds) - 1 and len(pending) < workers * 2:
            submit()
        while pending:
            start, end, future = pending.popleft()
            blob, problem, count = future.result()
            del future
            leaves = [blob[i : i + 32] for i in range(0, len(blob), 32)]
            del blob
            if problem is None and count != end - start:
                # Fewer rows than seqs: the entry after the last one is missing.
                missing = start + len(leaves)
                problem = Problem(f"entry seq {missing} is missing (deleted?)", seq=missing)
            yield LeafBatch(start, leaves, problem)
            if problem is not None:
                for _lo, _hi, rest in pending:
                    rest.cancel()
                return
            if next_task < len(bounds) - 1:
                submit()
