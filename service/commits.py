"""Group commit: rows written at the same time by several threads share one transaction.

A local share writes a handful of rows (the artifact, an outbox row and an audit event per
partner). On SQLite most of the cost of such a transaction is its commit, not its inserts: the
write lock, and a WAL frame for every B-tree page it touched (the artifact table has eight
indexes), written again at the next checkpoint. Shares that arrive together mostly touch the
same pages (the newest end of each index), so committing them together writes each page once.

:meth:`GroupCommit.write` queues a caller's rows; the first caller to find no group running
leads: it takes everything queued (up to ``max_group`` writes), inserts it with one
``executemany`` per table in one transaction, commits, wakes the callers whose rows it carried
and hands the lead to the next caller in line. Every caller returns only once its own rows are
committed, or raises what its own rows raised: when a group's transaction fails, its writes are
retried one at a time, each in its own transaction, so one bad write cannot fail another.
``prepare`` runs before a group's transaction (once for the group: making the blobs its rows
refer to durable), ``before_commit`` inside it (the crash-test fault points use it). ``deletes``
removes rows by one column's values in the same transaction, after the inserts: the journal
entries of the blobs the inserted rows now refer to (``service.blob_journal``). ``within``
runs in the transaction after them, with its connection, for statements of the write's own
that are not plain inserts (``service.idempotency`` settles a key there, or raises to fail the
write when the key's claim was lost).

What it does not do: reads, updates, deletes by more than one column, or anything that must
see the rows of another write in the same group; rows of one write go to the tables in the
order the write lists them.
"""

from __future__ import annotations

import functools
import threading
import weakref
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from service.db import Database

__all__ = ["GroupCommit", "group_commit"]

Rows = Mapping[sa.Table, Sequence[dict[str, Any]]]


@dataclass(eq=False)
class _Write:
    rows: Rows
    before_commit: Callable[[], None] | None
    prepare: Callable[[], None] | None
    deletes: Mapping[sa.Column[Any], Sequence[Any]] | None = None
    within: Callable[[sa.Connection], None] | None = None
    wake: threading.Event = field(default_factory=threading.Event)
    finished: bool = False
    error: BaseException | None = None


class GroupCommit:
    """Group commit of inserts for one database, shared by the threads of one process."""

    def __init__(self, db: Database, *, max_group: int = 64) -> None:
        self._db = db
        self._max = max_group
        self._lock = threading.Lock()
        self._queue: deque[_Write] = deque()
        self._leading = False

    def write(
        self,
        rows: Rows,
        *,
        prepare: Callable[[], None] | None = None,
        before_commit: Callable[[], None] | None = None,
        deletes: Mapping[sa.Column[Any], Sequence[Any]] | None = None,
        within: Callable[[sa.Connection], None] | None = None,
    ) -> None:
        """Insert ``rows`` (table -> rows) and commit, together with whatever other threads
        are writing at the same time; raises if these rows were not committed.

        ``prepare`` runs before the transaction begins, once per group however many of its
        writes name it (equal callables): the blob store's ``sync_placed``, so that one sync
        makes the blobs of the whole group durable before the rows that refer to them."""
        write = _Write(rows, before_commit, prepare, deletes, within)
        with self._lock:
            self._queue.append(write)
            lead = not self._leading
            self._leading = True
        if lead:
            self._lead()
        while not _done(write):
            write.wake.wait()  # carried by a group, or handed the lead
            write.wake.clear()
            if not _done(write):
                self._lead()
        if write.error is not None:
            raise write.error

    def _lead(self) -> None:
        with self._lock:
            group = [self._queue.popleft() for _ in range(min(self._max, len(self._queue)))]
        try:
            self._commit(group)
        finally:
            with self._lock:
                if self._queue:
                    self._queue[0].wake.set()  # the next in line leads the next group
                else:
                    self._leading = False
            for write in group:
                write.finished = True
                write.wake.set()

    def _commit(self, group: list[_Write]) -> None:
        try:
            self._transaction(group)
        except BaseException as exc:
            if len(group) == 1:
                group[0].error = exc
                return
            for write in group:  # one at a time: only the bad write fails
                try:
                    self._transaction([write])
                except BaseException as one:
                    write.error = one

    def _transaction(self, group: list[_Write]) -> None:
        hooks: list[Callable[[], None]] = []
        for write in group:
            if write.prepare is not None and write.prepare not in hooks:
                hooks.append(write.prepare)
        for hook in hooks:
            hook()
        tables: dict[sa.Table, list[dict[str, Any]]] = {}
        for write in group:
            for table, rows in write.rows.items():
                tables.setdefault(table, []).extend(rows)
        with self._db.engine.begin() as conn:
            for table, rows in tables.items():
                if rows:
                    conn.execute(_insert(table), _in_key_order(table, rows))
            doomed: dict[sa.Column[Any], list[Any]] = {}
            for write in group:
                for column, values in (write.deletes or {}).items():
                    doomed.setdefault(column, []).extend(values)
            for column, values in doomed.items():
                if values:
                    conn.execute(sa.delete(column.table).where(column.in_(values)))
            for write in group:
                if write.within is not None:
                    write.within(conn)
            for write in group:
                if write.before_commit is not None:
                    write.before_commit()


def _in_key_order(table: sa.Table, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``rows`` sorted by ``table``'s primary key when each carries it (a natural key: a received
    artifact's ``(id, origin)``), else as they are. Replicas on one PostgreSQL database storing
    the same rows at once then meet at the first key they share, and one gets its conflict;
    in the order their writes queued, each could hold a key the other waits for (a deadlock)."""
    key = [column.name for column in table.primary_key.columns]
    if not all(row.get(name) is not None for row in rows for name in key):
        return rows  # keys the database assigns: nothing two replicas could both insert
    return sorted(rows, key=lambda row: tuple(row[name] for name in key))


@functools.cache
def _insert(table: sa.Table) -> sa.Insert:
    """One INSERT statement per table, built once (its cache key is memoized with it)."""
    return sa.insert(table)


def _done(write: _Write) -> bool:
    return write.finished


_groups: weakref.WeakKeyDictionary[Database, GroupCommit] = weakref.WeakKeyDictionary()
_groups_lock = threading.Lock()


def group_commit(db: Database) -> GroupCommit:
    """The group commit of ``db`` in this process."""
    with _groups_lock:
        group = _groups.get(db)
        if group is None:
            group = _groups[db] = GroupCommit(db)
        return group
