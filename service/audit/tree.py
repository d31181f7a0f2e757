"""The stored Merkle tree of the audit log: inclusion and consistency proofs read from
``audit_merkle_nodes``.

The sequencer stores every perfect subtree it completes; a proof reads at most ``2 * log2(n)``
stored nodes, fetched in one query. Hashing and proof algorithms are ``crypto.merkle``.

This module does not append to the tree (``service.audit.sequencer``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import ClassVar

import sqlalchemy as sa
from sqlmodel import Session

from crypto import merkle
from crypto.errors import MalformedError
from service.audit.errors import LogInconsistentError
from service.audit.models import AuditMerkleNode
from service.errors import InvalidInputError

__all__ = ["consistency_proof", "inclusion_proof", "stored_root"]


# ---------------------------------------------------------------------------------------------
# The stored tree

_nodes = AuditMerkleNode.__table__  # type: ignore[attr-defined]


def _node_key(start: int, end: int) -> tuple[int, int]:
    width = end - start
    if width <= 0 or width & (width - 1) or start % width:
        raise MalformedError("not a perfect, aligned subtree")
    level = width.bit_length() - 1
    return level, start >> level


def _fetch_nodes(session: Session, keys: Iterable[tuple[int, int]]) -> dict[tuple[int, int], bytes]:
    """The stored nodes ``(level, idx)`` in one indexed query (plain driver SQL: building and
    compiling an expression costs more than the lookups themselves)."""
    wanted = sorted(set(keys))
    if not wanted:
        return {}
    conn = session.connection()
    mark = "?" if conn.dialect.paramstyle == "qmark" else "%s"
    where = " OR ".join([f"(level = {mark} AND idx = {mark})"] * len(wanted))
    params = tuple(v for key in wanted for v in key)
    rows = conn.exec_driver_sql(
        f"SELECT level, idx, hash FROM audit_merkle_nodes WHERE {where}",  # noqa: S608 - markers only
        params,
    ).all()
    found = {(int(r[0]), int(r[1])): bytes(r[2]) for r in rows}
    if len(found) != len(wanted):
        raise LogInconsistentError("the stored Merkle tree is missing nodes")
    return found


class _Recorder:
    """A HashSource that only records which perfect subtrees a proof needs."""

    _dummy: ClassVar[bytes] = bytes(merkle.HASH_SIZE)

    def __init__(self) -> None:
        self.keys: list[tuple[int, int]] = []

    def __call__(self, start: int, end: int, /) -> bytes:
        self.keys.append(_node_key(start, end))
        return self._dummy


class _Fetched:
    def __init__(self, nodes: Mapping[tuple[int, int], bytes]) -> None:
        self._nodes = nodes

    def __call__(self, start: int, end: int, /) -> bytes:
        return self._nodes[_node_key(start, end)]


def _with_store(
    session: Session, compute: Callable[[merkle.HashSource], list[bytes]]
) -> list[bytes]:
    """Run a proof computation twice: once to learn the nodes, once over them (one query)."""
    recorder = _Recorder()
    compute(recorder)
    return compute(_Fetched(_fetch_nodes(session, recorder.keys)))


def _head_size(session: Session) -> int:
    size = (
        session.connection()
        .exec_driver_sql("SELECT size FROM audit_log_head WHERE id = 1")
        .scalar_one_or_none()
    )
    if size is None:
        raise LogInconsistentError("the audit log head is missing; is the database migrated?")
    return int(size)


def inclusion_proof(session: Session, *, index: int, size: int) -> list[bytes]:
    """The RFC 6962 inclusion proof of leaf ``index`` in the stored tree of ``size`` leaves."""
    if not 0 <= index < size:
        raise InvalidInputError(f"seq {index} is not in a tree of {size} entries")
    if size > _head_size(session):
        raise InvalidInputError(f"the log has fewer than {size} entries")
    return _with_store(session, lambda src: merkle.inclusion_proof(index, size, src))


def consistency_proof(session: Session, *, old: int, new: int) -> list[bytes]:
    """The RFC 6962 consistency proof from the stored tree of ``old`` leaves to ``new`` leaves."""
    if not 0 < old <= new:
        raise InvalidInputError("a consistency proof needs 0 < old <= new")
    if new > _head_size(session):
        raise InvalidInputError(f"the log has fewer than {new} entries")
    return _with_store(session, lambda src: merkle.consistency_proof(old, new, src))


def stored_root(session: Session, size: int) -> bytes:
    """The root of the first ``size`` leaves of the stored tree."""
    if size == 0:
        return merkle.EMPTY_ROOT
    result = _with_store(session, lambda src: [merkle.subtree_root(0, size, src)])
    return result[0]


def stored_leaf_hashes(session: Session, seqs: Iterable[int]) -> dict[int, bytes]:
    """The stored leaf hashes of the given log indexes (untrusted: a hint for people)."""
    wanted = sorted(set(seqs))
    if not wanted:
        return {}
    rows = session.execute(
        sa.select(_nodes.c.idx, _nodes.c.hash).where(_nodes.c.level == 0, _nodes.c.idx.in_(wanted))
    )
    return {int(r[0]): bytes(r[1]) for r in rows}


def _frontier(session: Session, size: int) -> list[bytes]:
    """The compact range of ``[0, size)``: one perfect subtree per set bit, largest first."""
    keys: list[tuple[int, int]] = []
    start = 0
    for level in range(size.bit_length() - 1, -1, -1):
        if size >> level & 1:
            keys.append((level, start >> level))
            start += 1 << level
    nodes = _fetch_nodes(session, keys)
    return [nodes[k] for k in keys]
