"""``Database.after_inserts_commit``: the delivery doorbell rings for every committed outbox row,
whichever path wrote it, and only once the rows are visible to the worker it wakes."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa

from service.commits import group_commit
from service.db import Database, open_database
from service.models import AuditEntry, Outbox

_NOW = datetime(2026, 12, 7, tzinfo=UTC)
_OUTBOX = Outbox.__table__  # type: ignore[attr-defined]
_AUDIT = AuditEntry.__table__  # type: ignore[attr-defined]


def _row(n: int) -> dict[str, object]:
    return {
        "partner": "us-aisi",
        "kind": "notice",
        "artifact_id": f"art-{n}",
        "artifact_origin": "uk-aisi",
        "payload": "{}",
        "state": "pending",
        "attempts": 0,
        "created_at": _NOW,
        "next_attempt_at": _NOW,
    }


class Watcher:
    """Counts the calls, and what a second connection sees of the outbox at each call."""

    def __init__(self, db: Database) -> None:
        self.seen: list[int] = []
        self._db = db

    def __call__(self) -> None:
        with self._db.engine.connect() as conn:  # as the delivery worker would look
            self.seen.append(conn.execute(sa.select(sa.func.count()).select_from(_OUTBOX)).one()[0])


@pytest.fixture
def watched(db_url: str) -> Iterator[tuple[Database, Watcher]]:
    db = open_database(db_url, migrate=True)
    watcher = Watcher(db)
    db.after_inserts_commit("outbox", watcher)
    try:
        yield db, watcher
    finally:
        db.dispose()


def test_an_orm_insert_calls_once_after_its_commit(watched: tuple[Database, Watcher]) -> None:
    db, watcher = watched
    with db.session() as session:
        session.add(Outbox.model_validate(_row(1)))
        session.add(Outbox.model_validate(_row(2)))
        session.flush()
        assert watcher.seen == []  # flushed, not committed
    assert watcher.seen == [2]  # once, and the worker it wakes sees both rows


def test_a_core_insert_through_the_group_commit_calls(watched: tuple[Database, Watcher]) -> None:
    db, watcher = watched
    group_commit(db).write({_OUTBOX: [_row(1), _row(2), _row(3)]})
    assert watcher.seen == [3]
    with db.engine.begin() as conn:
        conn.execute(sa.insert(_OUTBOX), [_row(4)])
    assert watcher.seen == [3, 4]


def test_a_rolled_back_insert_calls_nothing(watched: tuple[Database, Watcher]) -> None:
    db, watcher = watched

    def failing_action() -> None:
        with db.session() as session:
            session.add(Outbox.model_validate(_row(1)))
            session.flush()
            raise RuntimeError("the action failed")

    def refused_insert() -> None:
        with db.engine.begin() as conn:
            conn.execute(sa.insert(_OUTBOX), [_row(2)])
            conn.execute(sa.insert(_OUTBOX), [{**_row(3), "partner": None}])  # NOT NULL

    with pytest.raises(RuntimeError):
        failing_action()
    with pytest.raises(sa.exc.IntegrityError):
        refused_insert()
    for _ in range(4):  # the same pooled connections commit other work: still nothing owed
        with db.engine.begin() as conn:
            conn.execute(sa.text("SELECT 1"))
    assert watcher.seen == []
    with db.session() as session:
        session.add(Outbox.model_validate(_row(4)))
    assert watcher.seen == [1]


def test_other_tables_and_updates_call_nothing(watched: tuple[Database, Watcher]) -> None:
    db, watcher = watched
    with db.engine.begin() as conn:
        conn.execute(
            sa.insert(_AUDIT),
            [{"created_at": _NOW, "kind": "test", "actor": "t", "detail": "{}"}],
        )
    assert watcher.seen == []
    with db.engine.begin() as conn:
        conn.execute(sa.insert(_OUTBOX), [_row(1)])
    with db.engine.begin() as conn:  # a worker settling a row queues nothing new
        conn.execute(sa.update(_OUTBOX).values(state="delivered"))
        conn.execute(sa.text("SELECT 1"))
    assert watcher.seen == [1]
