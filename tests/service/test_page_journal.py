"""A feed page, or a batch delivery, journals its blobs in one transaction before placing them.

Each blob a receiver stores is recorded in the journal of blobs in flight before it appears
under its content address (``service.blob_journal``), so that a crash between the blob and its
row leaves an entry for the start-up sweep. A page of 500 used to record them one transaction
at a time, a seventh of a catch-up's CPU; now the page's (or batch's) digests go in one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlmodel import func, select

from service.federation.pull import pull_all
from service.models import Artifact, BlobInFlight
from tests.service.nodekit import Kit, make_node
from tests.service.test_federation_sync import Pair, accepted, joined, share


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[Pair]:
    pair = joined(make_node(tmp_path, "uk-aisi"), make_node(tmp_path, "us-aisi"))
    yield pair
    pair.transport.close()


def _record_intents(kit: Kit, monkeypatch: pytest.MonkeyPatch) -> list[list[tuple[str, bool]]]:
    """Each call of the receiver's journal ``intend``: its digests, and whether each blob was
    already in the store at that moment (it must not be)."""
    calls: list[list[tuple[str, bool]]] = []
    journal, store = kit.node.blobs.journal, kit.node.blobs
    real: Callable[..., None] = journal.intend

    def intend(*digests: str) -> None:
        calls.append([(digest, store.exists(digest)) for digest in digests])
        real(*digests)

    monkeypatch.setattr(journal, "intend", intend)
    return calls


def _pull(pair: Pair) -> None:
    assert pull_all(pair.us.node, pair.client(pair.us)) == 12


def _push(pair: Pair) -> None:
    worker = pair.worker(pair.uk)
    try:
        assert worker.run_once() == 12
    finally:
        worker.close()


@pytest.mark.parametrize("deliver", [_pull, _push], ids=["feed page", "batch delivery"])
def test_a_page_journals_its_blobs_in_one_transaction_before_they_appear(
    pair: Pair, monkeypatch: pytest.MonkeyPatch, deliver: Callable[[Pair], None]
) -> None:
    ids = share(pair.uk, 12)
    calls = _record_intents(pair.us, monkeypatch)
    deliver(pair)
    assert accepted(pair.us) == dict.fromkeys(ids, 1)
    assert len(calls) == 1  # one transaction for the twelve (twelve before)
    with pair.us.node.db.session() as session:
        blobs = set(session.exec(select(Artifact.blob).where(Artifact.direction == "received")))
        in_flight = session.exec(select(func.count()).select_from(BlobInFlight)).one()
    assert {digest for digest, _ in calls[0]} == blobs and len(blobs) == 12
    assert not any(existed for _, existed in calls[0])  # journaled before placed
    assert all(pair.us.node.blobs.exists(digest) for digest in blobs)
    assert in_flight == 0  # the rows that refer to them settled their entries


def test_a_page_that_fails_to_commit_leaves_no_blob_and_no_entry(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    share(pair.uk, 12)
    calls = _record_intents(pair.us, monkeypatch)

    def broken(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("the disk went away")

    monkeypatch.setattr(pair.us.node.blobs, "sync_placed", broken)
    assert pull_all(pair.us.node, pair.client(pair.us)) == 0  # the pull error is recorded
    assert accepted(pair.us) == {}
    with pair.us.node.db.session() as session:
        entries = set(session.exec(select(BlobInFlight.digest)))
    assert len(calls) == 1 and len(calls[0]) == 12
    assert not any(pair.us.node.blobs.exists(digest) for digest, _ in calls[0])
    assert entries == set()  # each deleted blob forgot its entry
