"""The verifier's hashing on SQLite: leaves built by SQLite itself (``json_quote``) are byte for
byte the specification's, and whatever a row holds, a worker's answer (leaves, problem, rows
read) is the one the specification's encoder gives. A tampered row never passes because SQLite
built its leaf: it falls back to the specification's encoder or fails to match."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from service.audit import hashing
from service.audit.entries import log_signer
from service.audit.errors import AuditSourceError
from service.audit.hashing import (
    LEAF_SQL,
    hash_sqlite_range,
    sqlite_quotes_like_python,
)
from service.audit.log import record
from service.audit.sources import DatabaseSource
from service.audit.verify import verify_log
from service.node import Node
from tests.service.audit_fixtures import T0, add_events, make_node, seq_all

ROOT = Path(__file__).resolve().parents[2]
N = 40
# Every character JSON escapes but NUL (which no node stores), non-ASCII, the line separators
# JSON lets through, a value that looks like JSON: logged honestly, so both encoders must agree.
AWKWARD = ['quote " back \\ slash', "tab\t nl\n cr\r bs\b ff\f \x1f \x7f",
           "é ü 中 😀 \u2028 \u2029 \ufeff", '{"actor":"x"}', ""]  # fmt: skip


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    n = make_node(tmp_path, "uk-aisi", f"sqlite:///{tmp_path / 'log.db'}")
    add_events(n, N // 2)
    with n.db.session() as session:
        for i, text in enumerate(AWKWARD * 3):
            record(session, kind="read", actor=f"reader:{text}", partner=text or None,
                   detail={"awkward": text, "i": i}, clause=text, now=n.now())  # fmt: skip
    add_events(n, N - N // 2 - len(AWKWARD) * 3)
    seq_all(n, batch_max=10)
    yield n
    n.db.dispose()


def _path(node: Node) -> str:
    path = node.db.engine.url.database
    assert path is not None
    return path


def _sql(node: Node, *statements: str) -> None:
    conn = sqlite3.connect(_path(node))
    try:
        for statement in statements:
            conn.execute(statement)
        conn.commit()
    finally:
        conn.close()


def _both(node: Node, lo: int = 0, hi: int = N) -> tuple[object, object]:
    path = _path(node)
    built = hash_sqlite_range(path, True, lo, hi, lo)
    reference = hash_sqlite_range(path, False, lo, hi, lo)
    return built, reference


def test_this_sqlite_quotes_every_character_as_the_specification_does() -> None:
    assert sqlite_quotes_like_python()


def test_the_check_of_sqlite_quoting_can_fail(monkeypatch: pytest.MonkeyPatch) -> None:
    """One character escaped differently by the specification's encoder is found."""
    real = hashing.encode_basestring

    def escaping_one_more(text: str) -> str:
        return real(text).replace("\u2028", "\\u2028")

    monkeypatch.setattr(hashing, "encode_basestring", escaping_one_more)
    sqlite_quotes_like_python.cache_clear()
    try:
        assert not sqlite_quotes_like_python()
    finally:
        sqlite_quotes_like_python.cache_clear()


def test_sqlite_builds_every_leaf_of_an_honest_log_as_the_specification(node: Node) -> None:
    conn = sqlite3.connect(_path(node))
    try:
        built = hashing._built_by_sqlite(conn.execute(LEAF_SQL, (0, N, N + 1)), 0)
    finally:
        conn.close()
    assert built is not None and built[1] == N  # no row fell back
    blob, problem, count = hash_sqlite_range(_path(node), False, 0, N, 0)
    assert (built[0], problem, count) == (blob, None, N)


Tamper = Callable[[Node], None]


def _blob_detail(node: Node) -> None:  # SQLite's JSON refuses a BLOB: the statement fails
    _sql(node, "UPDATE audit_entries SET detail = CAST('{}' AS BLOB) WHERE seq = 13")


def _time_in_another_form(node: Node) -> None:  # the same instant, written with a T
    _sql(node, "UPDATE audit_entries SET created_at = replace(created_at, ' ', 'T') WHERE seq = 7")


def _time_as_number(node: Node) -> None:
    _sql(node, "UPDATE audit_entries SET created_at = 1764234000 WHERE seq = 7")


def _seq_as_real(node: Node) -> None:
    _sql(node, "UPDATE audit_entries SET seq = 21.5 WHERE seq = 21")


def _seq_as_text(node: Node) -> None:
    _sql(node, "UPDATE audit_entries SET seq = 'x' WHERE seq = 21")


def _negative_seq(node: Node) -> None:
    _sql(node, "UPDATE audit_entries SET seq = -1 WHERE seq = 0")


def _null_artifact(node: Node) -> None:  # NULL is JSON's null, never the string
    _sql(node, "UPDATE audit_entries SET artifact_id = NULL WHERE seq = 3")


def _artifact_null_text(node: Node) -> None:
    _sql(node, "UPDATE audit_entries SET artifact_id = 'null' WHERE seq = 3")


def _nul_in_actor(node: Node) -> None:  # written past the node, which refuses NUL
    _sql(node, "UPDATE audit_entries SET actor = 'reader:' || char(0) || 'x' WHERE seq = 5")


def _edited_detail(node: Node) -> None:
    _sql(node, "UPDATE audit_entries SET detail = '{\"i\": 27}' WHERE seq = 27")


def _deleted(node: Node) -> None:
    _sql(node, "DELETE FROM audit_entries WHERE seq = 30")


TAMPERS = [None, _blob_detail, _time_in_another_form, _time_as_number, _seq_as_real,
           _seq_as_text, _negative_seq, _null_artifact, _artifact_null_text, _nul_in_actor,
           _edited_detail, _deleted]  # fmt: skip


@pytest.mark.parametrize("tamper", TAMPERS, ids=lambda f: f.__name__.strip("_") if f else "none")
def test_a_worker_answers_as_the_specification_whatever_the_rows_hold(
    node: Node, tamper: Tamper | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(hashing, "_FETCH_ROWS", 7)  # several takes from the cursor per range
    if tamper is not None:
        tamper(node)
    for lo, hi in [(0, N), (10, 20), (20, 40)]:
        built, reference = _both(node, lo, hi)
        assert built == reference, (lo, hi)


@pytest.mark.parametrize("tamper", TAMPERS, ids=lambda f: f.__name__.strip("_") if f else "none")
def test_verdicts_from_worker_processes_on_sqlite_are_the_serial_ones(
    node: Node, tamper: Tamper | None
) -> None:
    if tamper is not None:
        tamper(node)
    verdicts = [
        verify_log(source, log=log_signer(node).verifier, now=int(T0.timestamp()))
        for source in (
            DatabaseSource(node.db, workers=1),
            DatabaseSource(node.db, workers=2, parallel_min=0, chunk=9),
        )
    ]
    serial, parallel = ((v.ok, v.size, v.bad_seq, v.bad_id, v.problem) for v in verdicts)
    assert parallel == serial
    assert serial[0] is (tamper in (None, _time_in_another_form))


def test_a_hashing_worker_starts_without_sqlalchemy_or_the_models() -> None:
    """What a spawned worker imports to run ``hash_sqlite_range``: nothing of the ORM (which took
    each worker about a second to start)."""
    code = (
        "import sys, service.audit.hashing; "
        "print(sorted(m for m in sys.modules if m.startswith(('sqlalchemy', 'sqlmodel', "
        "'service.models', 'service.db'))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("blob", [False, True], ids=["alone", "beside-a-blob"])
@pytest.mark.parametrize("workers", [1, 2])
def test_a_row_that_cannot_be_read_is_a_source_error_not_a_crash(
    node: Node, workers: int, blob: bool
) -> None:
    """Text that is not UTF-8, written past the node: the verifier stops with the one error a
    terminal shows in a line (whichever process met it), never a driver's exception. Beside a
    BLOB, a worker meets it itself (SQLite cannot build that chunk, the encoder reads it)."""
    _sql(node, "UPDATE audit_entries SET actor = CAST(x'72ff' AS TEXT) WHERE seq = 13")
    if blob:
        _blob_detail(node)  # seq 13 as well: same chunk
    source = DatabaseSource(node.db, workers=workers, parallel_min=0, chunk=9)
    with pytest.raises(AuditSourceError, match="cannot read entries"):
        verify_log(source, log=log_signer(node).verifier, now=int(T0.timestamp()))


def test_the_quoting_check_keeps_the_verifier_small() -> None:
    """The check probes 65,536 scalar values at a time: holding all 1,112,064 as strings at once
    raised the verifier's peak by about 100 MiB (its peak on a 10M log 187 MiB instead of 104)."""
    # VmHWM from /proc, not ru_maxrss: that carries the high-water mark of the process that
    # started this one (pytest's) across exec.
    code = (
        "import re; from service.audit.hashing import sqlite_quotes_like_python\n"
        "def hwm(): return int(re.search(r'VmHWM:\\s+(\\d+)', "
        "open('/proc/self/status').read())[1])\n"
        "before = hwm(); assert sqlite_quotes_like_python(); print(hwm() - before)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert int(out.stdout) < 40 * 1024  # KiB
