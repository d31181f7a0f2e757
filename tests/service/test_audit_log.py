"""The audit transparency log: entry encoding, sequencing, stored proofs and checkpoints,
concurrent sequencers, on SQLite and PostgreSQL."""

from __future__ import annotations

import dataclasses
import json
import threading
from pathlib import Path

import pytest
import sqlalchemy as sa
from hypothesis import given
from hypothesis import strategies as st

from crypto import merkle
from crypto.errors import MalformedError
from crypto.note import Checkpoint, open_checkpoint
from service.audit.checkpoints import latest_checkpoint, list_checkpoints
from service.audit.entries import (
    ENTRY_FIELDS,
    SEQUENCE_BATCH_MAX,
    created_text,
    encode_leaf,
    encode_row,
    entry_columns,
    format_time,
    iter_entries,
    log_origin,
    log_signer,
    row_mapping,
    row_object,
    select_entry_rows,
)
from service.audit.errors import LogInconsistentError
from service.audit.log import record
from service.audit.sequencer import run_sequencer, sequence
from service.audit.sources import DatabaseSource
from service.audit.tree import consistency_proof, inclusion_proof, stored_root
from service.audit.verify import verify_log
from service.db import open_database
from service.node import Node
from tests.service.audit_fixtures import T0, Clock, add_events, make_node, seq_all

_text = st.text(st.characters(exclude_categories=("Cs",)), max_size=40)
_opt = st.none() | _text


@given(
    seq=st.integers(0, 2**62),
    ident=st.integers(0, 2**62),
    kind=_text,
    actor=_text,
    partner=_opt,
    artifact_id=_opt,
    digest=_opt,
    decision=_opt,
    rule=_opt,
    clause=_opt,
    detail=_text,
    micros=st.integers(0, 10**6 - 1),
)
def test_encoding_is_canonical_json(
    seq: int,
    ident: int,
    kind: str,
    actor: str,
    partner: str | None,
    artifact_id: str | None,
    digest: str | None,
    decision: str | None,
    rule: str | None,
    clause: str | None,
    detail: str,
    micros: int,
) -> None:
    obj = {
        "actor": actor,
        "artifact_id": artifact_id,
        "clause": clause,
        "created_at": format_time(T0.replace(microsecond=micros)),
        "decision": decision,
        "detail": detail,
        "digest": digest,
        "id": ident,
        "kind": kind,
        "partner": partner,
        "rule": rule,
        "seq": seq,
        "v": 1,
    }
    expected = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert encode_leaf(obj) == expected.encode("utf-8")
    assert tuple(json.loads(encode_leaf(obj))) == ENTRY_FIELDS


def test_time_format_is_fixed_width() -> None:
    assert format_time(T0) == "2026-11-27T09:00:00.000000Z"
    with pytest.raises(ValueError, match="naive"):
        format_time(T0.replace(tzinfo=None))


@pytest.fixture
def node(tmp_path: Path, db_url: str) -> Node:
    n = make_node(tmp_path, "uk-aisi", db_url)
    yield n  # type: ignore[misc]
    n.db.dispose()


def _leaves(node: Node, size: int) -> list[bytes]:
    return [
        merkle.leaf_hash(encode_leaf(e))
        for e in iter_entries(node.db.session, after=None, size=size)
    ]


def test_a_backlog_is_sequenced_in_bounded_rounds_with_other_writers_let_in_between(
    node: Node,
) -> None:
    """The node's worker (``run_sequencer``) takes a backlog a full round at a time, each with
    its checkpoint, and says there is more, so that it goes straight on; an entry written
    between two rounds (the write lock is free then) joins the log after the backlog."""
    seq_all(node)
    add_events(node, SEQUENCE_BATCH_MAX + 3)
    first = run_sequencer(node)
    assert (first.sequenced, first.size, first.more) == (
        SEQUENCE_BATCH_MAX,
        SEQUENCE_BATCH_MAX,
        True,
    )
    add_events(node, 1, kind="share.allowed")
    second = run_sequencer(node)
    assert (second.sequenced, second.size, second.more) == (4, SEQUENCE_BATCH_MAX + 4, False)
    with node.db.session() as s:
        sizes = [cp.size for cp in list_checkpoints(s, after=None, limit=10)]
        last = s.execute(sa.text("SELECT kind FROM audit_entries ORDER BY seq DESC")).first()
    assert sizes == [0, SEQUENCE_BATCH_MAX, SEQUENCE_BATCH_MAX + 4]
    assert last is not None and last[0] == "share.allowed"
    assert run_sequencer(node).sequenced == 0


def test_sequencing_signs_checkpoints_and_stores_a_provable_tree(node: Node) -> None:
    # An empty log still gets a checkpoint, so auditors have something to start from.
    first = seq_all(node)
    assert (first.size, first.checkpoint_signed) == (0, True)
    add_events(node, 45)
    signer = log_signer(node)
    with node.db.session() as s:
        assert (
            s.execute(sa.text("SELECT count(*) FROM audit_entries WHERE seq IS NULL")).scalar()
            == 45
        )
        result = sequence(s, signer=signer, now=node.now(), batch_max=20)
    assert (result.sequenced, result.size) == (20, 20)
    seq_all(node, batch_max=20)
    with node.db.session() as s:
        # One checkpoint per batch: 0, 20, 40, 45; each opens with the node's key.
        sizes = [cp.size for cp in list_checkpoints(s, after=None, limit=100)]
        latest = latest_checkpoint(s)
        assert sizes == [0, 20, 40, 45]
        opened = open_checkpoint(latest.note, log=signer.verifier)
        assert opened.checkpoint == Checkpoint(log_origin("uk-aisi"), 45, latest.root)
        seqs = [r[0] for r in s.execute(sa.text("SELECT seq FROM audit_entries ORDER BY id"))]
    assert seqs == list(range(45))  # id order
    leaves = _leaves(node, 45)
    assert merkle.root_from_leaf_hashes(leaves) == latest.root
    with node.db.session() as s:
        for size in (1, 20, 33, 45):
            root = merkle.root_from_leaf_hashes(leaves[:size])
            assert stored_root(s, size) == root
            for index in range(size):
                proof = inclusion_proof(s, index=index, size=size)
                merkle.verify_inclusion(
                    leaf_hash=leaves[index], index=index, size=size, proof=proof, root=root
                )
            for old in range(1, size + 1):
                merkle.verify_consistency(
                    size1=old,
                    size2=size,
                    root1=merkle.root_from_leaf_hashes(leaves[:old]),
                    root2=root,
                    proof=consistency_proof(s, old=old, new=size),
                )
    # Nothing new: no new checkpoint.
    assert seq_all(node).checkpoint_signed is False


def test_sequencer_refuses_to_extend_a_corrupted_tree(node: Node) -> None:
    add_events(node, 5)
    seq_all(node)
    with node.db.session() as s:
        s.execute(
            sa.text("UPDATE audit_merkle_nodes SET hash = :h WHERE level = 2"), {"h": b"\0" * 32}
        )
    add_events(node, 1)
    with pytest.raises(LogInconsistentError, match="does not match the log head"):
        seq_all(node)


def test_an_entry_is_part_of_its_action_transaction(node: Node) -> None:
    def action() -> None:
        with node.db.session() as s:
            record(s, kind="read", actor="reader:bob", now=node.now())
            raise RuntimeError("the action failed")

    with pytest.raises(RuntimeError):
        action()
    with node.db.session() as s:
        assert s.execute(sa.text("SELECT count(*) FROM audit_entries")).scalar() == 0


def test_concurrent_writers_and_sequencers_build_one_log(tmp_path: Path, db_url: str) -> None:
    """Two engines (as two replicas) append and sequence at once: one consistent log."""
    node_a = make_node(tmp_path, "uk-aisi", db_url, Clock())
    engine_b = open_database(db_url)
    node_b = dataclasses.replace(node_a, db=engine_b, clock=Clock())
    errors: list[BaseException] = []
    stop = threading.Event()

    def writer(n: Node, tag: str) -> None:
        try:
            for i in range(60):
                with n.db.session() as s:
                    record(s, kind="read", actor=f"{tag}:{i}", now=n.now())
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    def sequencer(n: Node) -> None:
        try:
            while not stop.is_set():
                seq_all(n, batch_max=7)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [
        threading.Thread(target=writer, args=(node_a, "a")),
        threading.Thread(target=writer, args=(node_b, "b")),
        threading.Thread(target=sequencer, args=(node_a,)),
        threading.Thread(target=sequencer, args=(node_b,)),
    ]
    for t in threads:
        t.start()
    for t in threads[:2]:
        t.join()
    stop.set()
    for t in threads[2:]:
        t.join()
    seq_all(node_a)
    assert errors == []
    with node_a.db.session() as s:
        seqs = sorted(r[0] for r in s.execute(sa.text("SELECT seq FROM audit_entries")))
        sizes = [cp.size for cp in list_checkpoints(s, after=None, limit=1000)]
    assert seqs == list(range(120))
    assert sizes == sorted(set(sizes)) and sizes[-1] == 120
    verdict = verify_log(
        DatabaseSource(node_a.db), log=log_signer(node_a).verifier, now=int(T0.timestamp())
    )
    assert verdict.ok, verdict.problem
    assert (verdict.size, verdict.checkpoints) == (120, len(sizes))
    engine_b.dispose()
    node_a.db.dispose()


def test_the_fast_row_path_encodes_exactly_like_the_entry_object(node: Node) -> None:
    """The sequencer and the offline verifier read rows with SQLite's stored time text; the API
    serves entry objects built from datetimes. Both must give the same leaf."""
    add_events(node, 20)
    with node.db.session() as s:
        s.execute(
            sa.text("UPDATE audit_entries SET created_at = :t WHERE id = 3"),
            {"t": T0.replace(microsecond=0)},
        )
    seq_all(node)
    with node.db.engine.connect() as conn:
        rows = select_entry_rows(conn, limit=1000)
        slow = conn.execute(sa.select(*entry_columns()).order_by(sa.text("seq"))).all()
    assert len(rows) == len(slow) == 20
    assert [encode_row(r) for r in rows] == [encode_leaf(row_object(r)) for r in slow]
    assert [encode_leaf(row_mapping(r)) for r in rows] == [encode_row(r) for r in rows]


@pytest.mark.parametrize(
    ("stored", "expected"),
    [
        ("2026-11-27 09:00:00.000000", "2026-11-27T09:00:00.000000Z"),
        ("2026-11-27 09:00:00.5", "2026-11-27T09:00:00.500000Z"),
        ("2026-11-27 09:00:00", "2026-11-27T09:00:00.000000Z"),
    ],
)
def test_stored_sqlite_times_are_read_as_sqlalchemy_reads_them(stored: str, expected: str) -> None:
    assert created_text(stored) == expected
    assert created_text(T0) == "2026-11-27T09:00:00.000000Z"


def test_a_malformed_stored_time_is_malformed_input() -> None:
    with pytest.raises(MalformedError):
        created_text("yesterday")
