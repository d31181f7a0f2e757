"""Tampering with the audit table directly in the database (SQLite and PostgreSQL) is detected by
the verifier, which names the first bad entry; a rewritten log fails against a remembered
checkpoint."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from crypto import merkle
from crypto.note import Note, NoteSignature, parse_note
from service.audit import leaves as audit_leaves
from service.audit.checkpoints import latest_checkpoint
from service.audit.entries import encode_leaf, log_signer
from service.audit.sources import DatabaseSource
from service.audit.verify import Remembered, Verdict, verify_log
from service.node import Node
from tests.service.audit_fixtures import T0, add_events, make_node, seq_all

N = 45  # entries


def _verify(node: Node, remembered: Remembered | None = None) -> Verdict:
    return verify_log(
        DatabaseSource(node.db),
        log=log_signer(node).verifier,
        remembered=remembered,
        now=int(T0.timestamp()),
    )


def _id_at(node: Node, seq: int) -> int:
    with node.db.engine.connect() as conn:
        value = conn.execute(
            sa.text("SELECT id FROM audit_entries WHERE seq = :s"), {"s": seq}
        ).scalar_one()
    return int(value)


def _sql(node: Node, *statements: str) -> None:
    with node.db.engine.begin() as conn:
        for statement in statements:
            conn.execute(sa.text(statement))


def _logged_node(tmp_path: Path, db_url: str, batch_max: int) -> Node:
    n = make_node(tmp_path, "uk-aisi", db_url)
    add_events(n, N)
    seq_all(n, batch_max=batch_max)
    verdict = _verify(n)
    assert verdict.ok, verdict.problem
    assert verdict.size == N
    return n


@pytest.fixture(params=[10, 10_000], ids=["checkpoint-every-10", "one-checkpoint"])
def node(tmp_path: Path, db_url: str, request: pytest.FixtureRequest) -> Iterator[Node]:
    n = _logged_node(tmp_path, db_url, request.param)
    yield n
    n.db.dispose()


@pytest.fixture
def node10(tmp_path: Path, db_url: str) -> Iterator[Node]:
    n = _logged_node(tmp_path, db_url, 10)
    yield n
    n.db.dispose()


Tamper = Callable[[Node], tuple[int, int | None]]  # returns (bad seq, bad id)


def _update_field(node: Node) -> tuple[int, int | None]:
    _sql(node, "UPDATE audit_entries SET actor = 'reader:mallory' WHERE seq = 13")
    return 13, _id_at(node, 13)


def _update_detail(node: Node) -> tuple[int, int | None]:
    _sql(node, "UPDATE audit_entries SET detail = '{\"i\": 27}' WHERE seq = 27")
    return 27, _id_at(node, 27)


def _update_time(node: Node) -> tuple[int, int | None]:
    expr = (
        "created_at + interval '1 microsecond'"
        if node.db.is_postgres
        else "strftime('%Y-%m-%d %H:%M:%f', created_at, '+1 second')"
    )
    _sql(node, f"UPDATE audit_entries SET created_at = {expr} WHERE seq = 3")  # noqa: S608
    return 3, _id_at(node, 3)


def _delete(node: Node) -> tuple[int, int | None]:
    _sql(node, "DELETE FROM audit_entries WHERE seq = 21")
    return 21, None


def _delete_last(node: Node) -> tuple[int, int | None]:
    _sql(node, f"DELETE FROM audit_entries WHERE seq = {N - 1}")  # noqa: S608
    return N - 1, None


def _swap(node: Node) -> tuple[int, int | None]:
    moved = _id_at(node, 30)
    _sql(
        node,
        "UPDATE audit_entries SET seq = -1 WHERE seq = 12",
        "UPDATE audit_entries SET seq = 12 WHERE seq = 30",
        "UPDATE audit_entries SET seq = 30 WHERE seq = -1",
    )
    return 12, moved


def _insert(node: Node) -> tuple[int, int | None]:
    with node.db.engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO audit_entries (seq, created_at, kind, actor, detail) "
                "VALUES (:seq, :at, 'read', 'reader:ghost', '{}')"
            ),
            {"seq": N, "at": T0},
        )
        new_id = conn.execute(sa.text(f"SELECT id FROM audit_entries WHERE seq = {N}")).scalar()  # noqa: S608
    return N, int(new_id)


def _replace(node: Node) -> tuple[int, int | None]:
    """Delete a row and insert a forged one in its place, seq and all."""
    with node.db.engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM audit_entries WHERE seq = 8"))
        conn.execute(
            sa.text(
                "INSERT INTO audit_entries (seq, created_at, kind, actor, detail) "
                "VALUES (8, :at, 'read', 'reader:ghost', '{}')"
            ),
            {"at": T0},
        )
    return 8, _id_at(node, 8)


@pytest.mark.parametrize(
    "tamper",
    [_update_field, _update_detail, _update_time, _delete, _delete_last, _swap, _insert, _replace],
    ids=lambda f: f.__name__.strip("_"),
)
def test_tampering_is_detected_and_the_entry_named(node: Node, tamper: Tamper) -> None:
    seq, entry_id = tamper(node)
    verdict = _verify(node)
    assert not verdict.ok
    assert verdict.bad_seq == seq, verdict.problem
    assert verdict.bad_id == entry_id, verdict.problem
    assert verdict.problem is not None and f"seq {seq}" in verdict.problem


def test_tampering_with_the_stored_tree_too_is_still_detected(node: Node) -> None:
    """Editing a row and its stored leaf hash: the signed roots still disagree."""
    _sql(node, "UPDATE audit_entries SET actor = 'reader:mallory' WHERE seq = 5")
    with node.db.engine.begin() as conn:
        entry = next(iter(DatabaseSource(node.db).entries(5, 6)))
        conn.execute(
            sa.text("UPDATE audit_merkle_nodes SET hash = :h WHERE level = 0 AND idx = 5"),
            {"h": merkle.leaf_hash(encode_leaf(entry))},
        )
    verdict = _verify(node)
    assert not verdict.ok
    assert verdict.bad_seq is not None and verdict.bad_seq <= 5


def test_a_rewritten_log_fails_against_the_remembered_checkpoint(node: Node) -> None:
    with node.db.session() as s:
        seen = latest_checkpoint(s)
    remembered = Remembered(seen.size, seen.root, seen.note)
    assert _verify(node, remembered).ok
    # The operator edits entry 1 and rebuilds and re-signs everything: self-consistent again.
    _sql(
        node,
        "UPDATE audit_entries SET actor = 'reader:mallory' WHERE seq = 1",
        "UPDATE audit_entries SET seq = NULL",
        "DELETE FROM audit_merkle_nodes",
        "DELETE FROM audit_checkpoints",
    )
    with node.db.engine.begin() as conn:
        conn.execute(
            sa.text("UPDATE audit_log_head SET size = 0, root = :r"), {"r": merkle.EMPTY_ROOT}
        )
    add_events(node, 2)
    seq_all(node, batch_max=7)
    assert _verify(node).ok  # a first-time verifier cannot tell ...
    verdict = _verify(node, remembered)  # ... one who remembers can
    assert not verdict.ok
    assert verdict.problem is not None
    assert "verified last time" in verdict.problem or "fork" in verdict.problem


def test_a_shrunk_log_fails_against_the_remembered_checkpoint(node: Node) -> None:
    with node.db.session() as s:
        seen = latest_checkpoint(s)
    _sql(node, f"DELETE FROM audit_checkpoints WHERE size = {seen.size}")  # noqa: S608
    verdict = _verify(node, Remembered(seen.size, seen.root, seen.note))
    assert not verdict.ok
    assert verdict.problem is not None


def test_a_forged_checkpoint_signature_is_detected(node: Node) -> None:
    with node.db.session() as s:
        seen = latest_checkpoint(s)
    note = parse_note(seen.note)
    (sig,) = note.signatures
    bad = NoteSignature(sig.name, sig.key_id, bytes([sig.signature[0] ^ 1]) + sig.signature[1:])
    forged = Note(note.text, (bad,)).to_bytes()
    with node.db.engine.begin() as conn:
        conn.execute(
            sa.text("UPDATE audit_checkpoints SET note = :n WHERE size = :s"),
            {"n": forged.decode(), "s": seen.size},
        )
    verdict = _verify(node)
    assert not verdict.ok
    assert verdict.problem is not None and "does not verify" in verdict.problem


@pytest.mark.parametrize("tamper", [None, _swap, _delete_last], ids=lambda f: f and f.__name__)
def test_hashing_in_worker_processes_gives_the_same_verdicts(
    node10: Node, tamper: Tamper | None
) -> None:
    node = node10
    if tamper is not None:
        tamper(node)
    serial = _verify(node)
    parallel = verify_log(
        DatabaseSource(node.db, workers=2, parallel_min=0, chunk=7),
        log=log_signer(node).verifier,
        now=int(T0.timestamp()),
    )
    assert (parallel.ok, parallel.bad_seq, parallel.size) == (
        serial.ok,
        serial.bad_seq,
        serial.size,
    )
    assert parallel.ok is (tamper is None)


@pytest.mark.parametrize(
    "tamper", [None, _swap, _delete, _delete_last], ids=lambda f: f and f.__name__
)
def test_reading_in_small_chunks_gives_the_same_verdicts(
    node10: Node, tamper: Tamper | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The serial reader's chunk boundaries (7 rows here) change nothing about the verdict."""
    node = node10
    if tamper is not None:
        tamper(node)
    whole = _verify(node)
    monkeypatch.setattr(audit_leaves, "SERIAL_CHUNK", 7)
    chunked = _verify(node)
    assert (chunked.ok, chunked.bad_seq, chunked.size, chunked.problem) == (
        whole.ok,
        whole.bad_seq,
        whole.size,
        whole.problem,
    )
    assert chunked.ok is (tamper is None)
