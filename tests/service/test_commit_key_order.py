"""The group commit inserts each table's rows in primary-key order, whatever order the writes of
a group queued them in: replicas on one PostgreSQL database storing the same received artifacts
at once (a pulled page and a pushed batch carrying some of the same, two replicas pulling alike)
then meet at the first key they share, and one of them gets the key's conflict, which the
receiver answers by storing one at a time, instead of each holding a key the other waits for
("deadlock detected", which the receiver takes for the database not answering)."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from service.commits import group_commit
from service.db import open_database
from service.models import Artifact
from tests.support import start_until_blocked

_ARTIFACTS = Artifact.__table__  # type: ignore[attr-defined]
_NOW = datetime(2026, 12, 7, tzinfo=UTC)


def _received(ident: str) -> dict[str, Any]:
    return {
        "id": ident, "direction": "received", "origin": "us-aisi", "sender": "us-aisi",
        "title": "t", "tlp": "TLP:GREEN", "created_at": _NOW, "recorded_at": _NOW, "size": 1,
        "sha256": "0" * 64, "blob": ident.ljust(64, "0"), "ciphertext_size": 1,
        "header_sha256": "0" * 64, "manifest": "{}", "topics": "[]", "purposes": "[]",
        "recipients": "[]", "policy_ref": "{}", "obligations": "[]",
    }  # fmt: skip


@pytest.mark.postgres
def test_a_group_inserts_in_key_order_and_meets_another_replica_without_deadlock(
    tmp_path: Path, pg_url: str
) -> None:
    db = open_database(pg_url, migrate=True)
    other = sa.create_engine(pg_url)  # another replica's group, inserting in key order
    failed: list[BaseException] = []

    def ours() -> None:  # a batch whose items arrived in the other order
        try:
            group_commit(db).write({_ARTIFACTS: [_received("art_2"), _received("art_1")]})
        except BaseException as exc:
            failed.append(exc)

    writer = threading.Thread(target=ours)
    try:
        with other.begin() as conn:
            conn.execute(sa.insert(_ARTIFACTS), [_received("art_1")])
            start_until_blocked(writer, pg_url)
            conn.execute(sa.insert(_ARTIFACTS), [_received("art_2")])
        writer.join(30)
        assert not writer.is_alive()
        assert len(failed) == 1 and isinstance(failed[0], IntegrityError), failed
        with db.engine.connect() as conn:
            ids = conn.execute(sa.select(_ARTIFACTS.c.id).order_by(_ARTIFACTS.c.id)).scalars()
            assert list(ids) == ["art_1", "art_2"]  # the other replica's, committed
    finally:
        other.dispose()
        db.dispose()
