"""Two replicas of one node on one PostgreSQL database create a witness's submission state at
once.

Found in CI (tests/integration/test_replicas_s3.py, three replicas killed and restarted over and
over): each replica runs the witness submission worker, and two that first submitted to the same
witness together both found no state row and both inserted one; the second failed with a
duplicate key, logged as "submitting a checkpoint to us-aisi failed". The insert now yields to
the row the other inserted.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime

import sqlalchemy as sa
from sqlmodel import select

from service.audit.models import AuditWitnessSubmission
from service.audit.submission import _submission_row
from service.db import open_database


def test_two_replicas_creating_the_submission_state_at_once(pg_url: str) -> None:
    db = open_database(pg_url, migrate=True)
    now = datetime.now(UTC)
    got: list[str] = []
    errors: list[BaseException] = []

    def other_replica() -> None:
        try:
            with db.session() as session:
                row = _submission_row(session, "us-aisi", now)
                row.attempts += 1
                got.append(row.partner)
        except BaseException as exc:
            errors.append(exc)

    def someone_waits_on_a_lock() -> bool:
        with db.engine.connect() as conn:
            waiting = conn.execute(
                sa.text(
                    "SELECT count(*) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND wait_event_type = 'Lock'"
                )
            ).scalar_one()
        return bool(waiting)

    try:
        with db.session() as first:  # this replica inserts the row and has not committed yet
            _submission_row(first, "us-aisi", now)
            first.flush()
            thread = threading.Thread(target=other_replica)
            thread.start()
            deadline = time.monotonic() + 30
            while not someone_waits_on_a_lock() and time.monotonic() < deadline:
                time.sleep(0.05)
            assert someone_waits_on_a_lock(), "the other replica never reached its insert"
        thread.join(30)
        assert not errors, errors
        assert got == ["us-aisi"]
        with db.session() as session:
            rows = list(session.exec(select(AuditWitnessSubmission)))
        assert [(r.partner, r.attempts) for r in rows] == [("us-aisi", 1)]
    finally:
        db.dispose()
