"""The start-up sweep reads the journal of blobs in flight, never a listing of the store, on both
stores (a folder and a real SeaweedFS): a crash between placing a blob and committing the row that
refers to it leaves a journal row, which the sweep clears once it is past the grace period."""

from __future__ import annotations

import hashlib
import io
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import select

from service.artifacts import share as sharing
from service.artifacts.sweep import referring, sweep
from service.artifacts.terms import ShareTerms
from service.blob_journal import DbBlobJournal
from service.blobs import CLAIM, BlobStore
from service.db import open_database
from service.errors import BlobStoreError
from service.models import Artifact, BlobInFlight
from service.tokens import Principal, Role
from tests.seaweed import SeaweedFS
from tests.service.nodekit import Kit, make_node, pin

PUBLISHER = Principal(token_id="tok_test", name="tester", role=Role.PUBLISHER)
GRACE = 600.0  # seconds


class Crash(Exception):
    """Stands for the process dying at a fault point (no cleanup runs after it)."""


class Counting:
    """A blob store that counts the calls made to it; listing the store is refused."""

    def __init__(self, inner: BlobStore) -> None:
        self.inner = inner
        self.calls: Counter[str] = Counter()

    def iter_digests(self) -> Any:
        raise AssertionError("the sweep listed the store")

    def __getattr__(self, name: str) -> Any:
        target = getattr(self.inner, name)
        if not callable(target):
            return target

        def counted(*args: Any, **kw: Any) -> Any:
            self.calls[name] += 1
            return target(*args, **kw)

        return counted


@pytest.fixture(params=["folder", "s3"])
def kit(request: pytest.FixtureRequest, tmp_path: Path) -> Kit:
    blob_settings: dict[str, Any] = {}
    if request.param == "s3":
        server: SeaweedFS = request.getfixturevalue("seaweedfs")
        prefix: str = request.getfixturevalue("s3_prefix")
        blob_settings = {
            k.removeprefix("ENTENTE_").lower(): v for k, v in server.env(prefix).items()
        }
    uk = make_node(tmp_path, "uk-aisi", blob_orphan_grace_seconds=GRACE, **blob_settings)
    us = make_node(tmp_path, "us-aisi")
    pin(uk, us)
    return uk


def share(kit: Kit, content: bytes) -> str:
    meta = ShareTerms(
        title="finding", tlp="TLP:GREEN", topics=("evaluation",), purposes=("evaluation",),
        partners=("us-aisi",),
    )  # fmt: skip
    decisions = sharing.decide_share(kit.node, meta, principal=PUBLISHER)
    row = sharing.share_artifact(
        kit.node, kit.node.blobs, meta, io.BytesIO(content), principal=PUBLISHER,
        decisions=decisions,
    )  # fmt: skip
    return row.id


def journal(kit: Kit) -> list[str]:
    with kit.node.db.session() as session:
        return list(session.exec(select(BlobInFlight.digest)).all())


def blob_of(kit: Kit, artifact_id: str) -> str:
    with kit.node.db.session() as session:
        blob = session.exec(select(Artifact.blob).where(Artifact.id == artifact_id)).one()
    assert blob is not None
    return blob


def test_a_committed_share_leaves_no_journal_row(kit: Kit) -> None:
    share(kit, b"finding" * 100)
    assert journal(kit) == []  # removed in the transaction that wrote the artifact


def test_a_crash_between_place_and_commit_is_swept_from_the_journal(
    kit: Kit, monkeypatch: pytest.MonkeyPatch
) -> None:
    kept = blob_of(kit, share(kit, b"kept" * 1000))

    def crash(name: str) -> None:
        if name == "share.blob_committed":
            raise Crash(name)

    monkeypatch.setattr(sharing, "fault_point", crash)
    with pytest.raises(Crash):
        share(kit, b"lost" * 1000)
    monkeypatch.undo()
    [orphan] = journal(kit)
    assert sorted(kit.node.blobs.iter_digests()) == sorted([kept, orphan])

    counting = Counting(kit.node.blobs)
    kit.node.blobs = counting
    young = sweep(kit.node, clock=time.time)  # within the grace period: maybe in flight
    assert (young.orphans_removed, journal(kit)) == (0, [orphan])
    late = sweep(kit.node, clock=lambda: time.time() + 2 * GRACE)
    assert (late.orphans_removed, late.missing_blobs) == (1, 0)
    assert journal(kit) == []
    assert counting.calls == Counter(clean_temporary=2, delete=1)  # no listing, no walk
    kit.node.blobs = counting.inner
    assert list(kit.node.blobs.iter_digests()) == [kept]


def test_a_journaled_blob_whose_row_committed_is_kept(kit: Kit) -> None:
    """A crash after the commit but with a journal row left (a deletion journaled in its
    transaction, or an older row of the same bytes): the blob stays, the row goes."""
    blob = blob_of(kit, share(kit, b"finding" * 100))
    kit.node.blobs.journal.intend(blob)  # type: ignore[attr-defined]
    report = sweep(kit.node, clock=lambda: time.time() + 2 * GRACE)
    assert (report.orphans_removed, report.settled, report.missing_blobs) == (0, 1, 0)
    assert kit.node.blobs.exists(blob) and journal(kit) == []


def test_a_referenced_blob_missing_from_the_store_is_reported_not_repaired(kit: Kit) -> None:
    blob = blob_of(kit, share(kit, b"finding" * 100))
    kit.node.blobs.delete(blob)  # lost behind the node's back (forgotten by the journal too)
    kit.node.blobs.journal.intend(blob)  # type: ignore[attr-defined]
    report = sweep(kit.node, clock=lambda: time.time() + 2 * GRACE)
    assert (report.orphans_removed, report.missing_blobs) == (0, 1)
    assert blob_of(kit, share(kit, b"another")) != blob  # the node goes on


class Clock:
    """A wall clock that the test moves; it starts at the time the test runs."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


CHUNK = 1 << 20  # bytes per write; a multipart upload starts after 5 of them on S3


def long_writer(kit: Kit, clock: Clock) -> Any:
    """A writer of the kit's store whose claims and sweep run on ``clock`` (S3 parts of 5 MiB)."""
    store: Any = kit.node.blobs
    store.journal = DbBlobJournal(kit.node.db, clock=clock)
    store.clock = clock
    if hasattr(store, "part_bytes"):
        store.part_bytes = 5 << 20
    assert store.heartbeat_seconds == GRACE / 4  # from the settings: a quarter of the grace
    return store.writer()


def claims(kit: Kit) -> list[str]:
    return [name for name in journal(kit) if name.startswith(CLAIM)]


def test_a_write_lasting_three_graces_is_never_swept(kit: Kit) -> None:
    clock = Clock()
    writer = long_writer(kit, clock)
    sent = b""
    for step in range(12):  # 12 x grace/4 = 3 x grace of writing
        chunk = bytes([step]) * CHUNK
        writer.write(chunk)
        sent += chunk
        clock.now += GRACE / 4
        report = sweep(kit.node, clock=clock)  # another replica starting meanwhile
        assert report.temporary_removed == 0, step
    assert len(claims(kit)) == 1  # one claim, kept young
    digest = writer.place()
    assert claims(kit) == []  # released once the write is over
    with kit.node.blobs.open(digest) as fh:
        assert hashlib.sha256(fh.read()).hexdigest() == digest == hashlib.sha256(sent).hexdigest()


def test_an_abandoned_write_is_swept_with_its_claim(kit: Kit) -> None:
    clock = Clock()
    writer = long_writer(kit, clock)
    for step in range(6):  # claimed (after grace/4), and a multipart upload started on S3
        writer.write(bytes([step]) * CHUNK)
        clock.now += GRACE / 4
    assert len(claims(kit)) == 1
    clock.now += GRACE  # then nothing: the writer died
    report = sweep(kit.node, clock=clock)
    assert report.temporary_removed == 1
    assert claims(kit) == []
    with pytest.raises((OSError, BlobStoreError)):  # its temporary file or upload is gone
        writer.place()


def test_a_short_write_never_touches_the_database(kit: Kit) -> None:
    clock = Clock()
    writer = long_writer(kit, clock)
    writer.write(b"x" * CHUNK)
    clock.now += GRACE / 8
    writer.write(b"y" * CHUNK)
    assert claims(kit) == []
    writer.abort()


def test_whether_a_blob_is_referenced_is_an_index_search(tmp_path: Path) -> None:
    """A blob goes only once no row refers to it: asked on every revocation, retention deletion
    and failed receipt, that question scanned the whole artifacts table without an index."""
    db = open_database(f"sqlite:///{tmp_path / 'plan.db'}", migrate=True)
    artifacts, pending = referring(["a" * 64, "b" * 64])
    try:
        with db.engine.connect() as conn:
            plans = []
            for query in (artifacts, pending):
                sql = query.compile(
                    dialect=db.engine.dialect, compile_kwargs={"literal_binds": True}
                )
                plans.append([r[-1] for r in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}")])
    finally:
        db.dispose()
    assert plans[0] == ["SEARCH artifacts USING COVERING INDEX ix_artifacts_blob (blob=?)"]
    assert all(step.startswith("SEARCH approvals USING INDEX") for step in plans[1]), plans[1]
