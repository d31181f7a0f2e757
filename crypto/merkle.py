"""RFC 6962 / RFC 9162 Merkle tree hashing, inclusion proofs and consistency proofs (SHA-256).

The audit log is an append-only list of entries. Its Merkle tree hash (MTH) is defined in
RFC 9162 2.1.1: ``leaf_hash(d) = SHA-256(0x00 || d)``,
``node_hash(l, r) = SHA-256(0x01 || l || r)``, and the empty tree hashes to ``SHA-256("")``.
This module provides:

* :func:`leaf_hash`, :func:`node_hash`, :func:`root_from_leaf_hashes`;
* :class:`CompactRange`, the "frontier" of at most log2(n) perfect-subtree roots, to append leaves
  and read the root in O(log n) (amortised O(1) hashes per append);
* proof generation over an abstract :class:`HashSource` that answers the hash of a *perfect*
  subtree ``[start, end)``, so that the service can back it with a database or a file and an
  inclusion proof costs O(log n) lookups; :class:`MemoryHashStore` is an in-memory source;
* proof verification following RFC 9162 2.1.3.2 and 2.1.4.2 step by step.

Verification raises :class:`~crypto.errors.MalformedError` for structurally invalid input (a hash
that is not 32 bytes, a negative size, a proof longer than any tree could need) and
:class:`~crypto.errors.VerificationError` when the proof does not prove the claim. Every hash is
checked to be exactly 32 bytes, which is stricter than the transparency-dev reference (it compares
roots of any length when the two sizes are equal).

This module deliberately does not store anything, read files, sign tree heads (see
``crypto.note``), or decide what a log entry contains.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence
from typing import Protocol

from crypto.errors import MalformedError, VerificationError

__all__ = [
    "EMPTY_ROOT",
    "HASH_SIZE",
    "MAX_PROOF_HASHES",
    "MAX_TREE_SIZE",
    "CompactRange",
    "HashSource",
    "MemoryHashStore",
    "consistency_proof",
    "inclusion_proof",
    "leaf_hash",
    "node_hash",
    "root_from_leaf_hashes",
    "subtree_root",
    "verify_consistency",
    "verify_inclusion",
]

HASH_SIZE = 32  # bytes, SHA-256
MAX_TREE_SIZE = (1 << 63) - 1  # leaves; tree sizes travel as signed 64-bit integers (checkpoints)
MAX_PROOF_HASHES = 64  # hashes; an inclusion or consistency proof in a tree below 2**63 is shorter

_LEAF_PREFIX = hashlib.sha256(b"\x00")  # RFC 9162 2.1.1: HASH(0x00 || d)
_NODE_PREFIX = hashlib.sha256(b"\x01")  # RFC 9162 2.1.1: HASH(0x01 || MTH(left) || MTH(right))

EMPTY_ROOT = hashlib.sha256(b"").digest()  # RFC 9162 2.1.1: MTH({}) = HASH()


def leaf_hash(data: bytes) -> bytes:
    """The hash of one log entry: ``SHA-256(0x00 || data)``."""
    h = _LEAF_PREFIX.copy()
    h.update(data)
    return h.digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """The hash of an interior node: ``SHA-256(0x01 || left || right)``."""
    h = _NODE_PREFIX.copy()
    h.update(left)
    h.update(right)
    return h.digest()


class HashSource(Protocol):
    """Where proof generation reads subtree hashes from.

    Called as ``source(start, end)`` and returns the Merkle tree hash of leaves ``[start, end)``.
    Proof generation only ever asks for *perfect, aligned* subtrees: ``end - start`` is a power
    of two ``2**k`` and ``start`` is a multiple of it (``k = 0`` is a leaf hash). Those are the
    nodes an append-only store can write once and never change; a database keyed by
    ``(k, start >> k)`` is enough. A source raises any :class:`~crypto.errors.CryptoError` (or
    its own storage error) when it does not hold the node.
    """

    def __call__(self, start: int, end: int, /) -> bytes: ...


class CompactRange:
    """The compact range ``[0, size)``: one perfect-subtree root per set bit of ``size``.

    ``append`` costs amortised one node hash; ``root`` costs at most log2(size) node hashes.
    ``append`` can report each perfect subtree it completes (including the leaf itself) to a
    ``visit(level, index, hash)`` callback, which is how a store learns the nodes to persist.
    """

    __slots__ = ("_hashes", "_size")

    def __init__(self, size: int = 0, hashes: Sequence[bytes] = ()) -> None:
        """Resume from a stored frontier: ``hashes`` are the roots of the perfect subtrees that
        make up ``[0, size)``, largest first (one per set bit of ``size``)."""
        _check_size(size)
        if len(hashes) != size.bit_count():
            raise MalformedError("a compact range of this size needs one hash per set bit")
        for h in hashes:
            _check_hash(h, "compact range hash")
        self._size = size
        self._hashes = [bytes(h) for h in hashes]

    @property
    def size(self) -> int:
        return self._size

    @property
    def hashes(self) -> tuple[bytes, ...]:
        """The frontier, largest subtree first (what to persist to resume later)."""
        return tuple(self._hashes)

    def append(self, leaf: bytes, visit: Callable[[int, int, bytes], None] | None = None) -> None:
        """Append one leaf hash (not the entry: see :func:`leaf_hash`)."""
        if len(leaf) != HASH_SIZE:
            raise MalformedError("a leaf hash is 32 bytes")
        n = self._size
        if n >= MAX_TREE_SIZE:
            raise MalformedError("the tree is full")
        hashes = self._hashes
        h = leaf
        if visit is not None:
            visit(0, n, h)
        level = 0
        while n & 1:
            c = _NODE_PREFIX.copy()
            c.update(hashes.pop())
            c.update(h)
            h = c.digest()
            n >>= 1
            level += 1
            if visit is not None:
                visit(level, n, h)  # n is now the index of this node on its level
        hashes.append(h)
        self._size += 1

    def extend(self, leaves: Iterable[bytes]) -> None:
        """Append many leaf hashes; the fast path for recomputing a whole log."""
        hashes = self._hashes
        pop = hashes.pop
        push = hashes.append
        prefix = _NODE_PREFIX
        n = self._size
        # The size bound is checked once: 2**63 appends are out of reach of any single call.
        if n >= MAX_TREE_SIZE:
            raise MalformedError("the tree is full")
        for leaf in leaves:
            if len(leaf) != HASH_SIZE:
                self._size = n
                raise MalformedError("a leaf hash is 32 bytes")
            h = leaf
            m = n
            while m & 1:
                c = prefix.copy()
                c.update(pop())
                c.update(h)
                h = c.digest()
                m >>= 1
            push(h)
            n += 1
        self._size = n

    def extend_entries(self, entries: Iterable[bytes]) -> None:
        """Hash each entry as a leaf (``0x00 || entry``) and append it."""
        leaf_prefix = _LEAF_PREFIX
        node_prefix = _NODE_PREFIX
        hashes = self._hashes
        pop = hashes.pop
        push = hashes.append
        n = self._size
        if n >= MAX_TREE_SIZE:
            raise MalformedError("the tree is full")
        for entry in entries:
            c = leaf_prefix.copy()
            c.update(entry)
            h = c.digest()
            m = n
            while m & 1:
                c = node_prefix.copy()
                c.update(pop())
                c.update(h)
                h = c.digest()
                m >>= 1
            push(h)
            n += 1
        self._size = n

    def root(self) -> bytes:
        """The Merkle tree hash of ``[0, size)``."""
        hashes = self._hashes
        if not hashes:
            return EMPTY_ROOT
        # The subtrees are left to right, largest first; MTH folds them from the right.
        r = hashes[-1]
        for h in reversed(hashes[:-1]):
            r = node_hash(h, r)
        return r

    def copy(self) -> CompactRange:
        return CompactRange(self._size, self._hashes)

    def __repr__(self) -> str:
        return f"CompactRange(size={self._size})"


def root_from_leaf_hashes(leaves: Iterable[bytes]) -> bytes:
    """The Merkle tree hash of a whole list of leaf hashes."""
    cr = CompactRange()
    cr.extend(leaves)
    return cr.root()


class MemoryHashStore:
    """An in-memory :class:`HashSource` that keeps every perfect subtree of an append-only tree.

    Each level is one contiguous ``bytearray`` (32 bytes per node), so 10 million leaves take
    about 640 MB. For tests and one-off measurements; the service keeps the same nodes in its
    database.
    """

    __slots__ = ("_levels", "_range")

    def __init__(self, leaves: Iterable[bytes] = ()) -> None:
        self._levels: list[bytearray] = [bytearray()]
        self._range = CompactRange()
        for leaf in leaves:
            self.append(leaf)

    @property
    def size(self) -> int:
        return self._range.size

    def append(self, leaf: bytes) -> None:
        self._range.append(leaf, self._store)

    def _store(self, level: int, index: int, h: bytes) -> None:
        levels = self._levels
        if level == len(levels):
            levels.append(bytearray())
        # Nodes of one level complete in order, so ``index`` is always the next slot.
        levels[level] += h

    def root(self, size: int | None = None) -> bytes:
        """The root of the whole tree, or of its first ``size`` leaves."""
        if size is None or size == self.size:
            return self._range.root()
        if not 0 <= size <= self.size:
            raise MalformedError("size out of range")
        return subtree_root(0, size, self) if size else EMPTY_ROOT

    def __call__(self, start: int, end: int, /) -> bytes:
        width = end - start
        if start < 0 or width <= 0 or width & (width - 1) or start % width or end > self.size:
            raise MalformedError("not a stored perfect subtree")
        level = width.bit_length() - 1
        offset = (start >> level) * HASH_SIZE
        return bytes(self._levels[level][offset : offset + HASH_SIZE])


def subtree_root(start: int, end: int, source: HashSource) -> bytes:
    """MTH of leaves ``[start, end)``, from at most log2(end - start) perfect subtrees.

    ``start`` must be a multiple of the smallest power of two that is at least ``end - start``
    (true of every subtree in an RFC 9162 proof), so that the range splits into aligned perfect
    subtrees, largest first.
    """
    width = end - start
    if start < 0 or width <= 0:
        raise MalformedError("empty subtree")
    if start & ((1 << (width - 1).bit_length()) - 1):
        raise MalformedError("subtree is not aligned")
    parts: list[bytes] = []
    pos = start
    for level in range(width.bit_length() - 1, -1, -1):
        if width >> level & 1:
            parts.append(source(pos, pos + (1 << level)))
            pos += 1 << level
    r = parts[-1]
    for h in reversed(parts[:-1]):
        r = node_hash(h, r)
    return r


def _largest_power_of_two_below(n: int) -> int:
    """k such that k < n <= 2k (RFC 9162 2.1.1); requires n > 1."""
    return 1 << ((n - 1).bit_length() - 1)


def inclusion_proof(index: int, size: int, source: HashSource) -> list[bytes]:
    """The audit path for leaf ``index`` in the tree of ``size`` leaves (RFC 9162 2.1.3.1).

    Costs at most 2 * log2(size) calls to ``source``: the siblings on the path are perfect
    subtrees, except at most one on the right border, which is folded from perfect subtrees.
    """
    _check_size(size)
    if not 0 <= index < size:
        raise MalformedError("leaf index out of range")
    # PATH(m, D[n]) recurses into the half holding m and appends the other half's MTH; walk it
    # top-down and reverse, so the proof lists hashes from the leaf upwards.
    path: list[bytes] = []
    start, end = 0, size
    while end - start > 1:
        k = _largest_power_of_two_below(end - start)
        if index < start + k:
            # m < k: PATH(m, D[0:k]) : MTH(D[k:n])
            path.append(subtree_root(start + k, end, source))
            end = start + k
        else:
            # m >= k: PATH(m - k, D[k:n]) : MTH(D[0:k])
            path.append(source(start, start + k))
            start += k
    path.reverse()
    return path


def consistency_proof(size1: int, size2: int, source: HashSource) -> list[bytes]:
    """The proof that the tree of ``size1`` leaves is a prefix of the tree of ``size2`` leaves
    (RFC 9162 2.1.4.1 SUBPROOF). Requires ``0 < size1 <= size2``; equal sizes give ``[]``."""
    _check_size(size2)
    if not 0 < size1 <= size2:
        raise MalformedError("a consistency proof needs 0 < size1 <= size2")
    # SUBPROOF(m, D[n], b) appends one sibling per level; walk it top-down and reverse.
    tail: list[bytes] = []
    start, end, m, complete = 0, size2, size1, True
    while m != end - start:
        k = _largest_power_of_two_below(end - start)
        if m <= k:
            # SUBPROOF(m, D[0:k], b) : MTH(D[k:n])
            tail.append(subtree_root(start + k, end, source))
            end = start + k
        else:
            # SUBPROOF(m - k, D[k:n], false) : MTH(D[0:k])
            tail.append(source(start, start + k))
            start += k
            m -= k
            complete = False
    tail.reverse()
    if complete:
        # SUBPROOF(m, D[m], true) = {}: the verifier knows this subtree's hash (it is the old root).
        return tail
    # SUBPROOF(m, D[m], false) = {MTH(D[m])}; reached only by a left step, so it is perfect.
    return [source(start, end), *tail]


def verify_inclusion(
    *, leaf_hash: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes
) -> None:
    """Check that ``leaf_hash`` is leaf ``index`` of the tree of ``size`` leaves with ``root``.

    Raises :class:`VerificationError` if it is not proven, :class:`MalformedError` if the input
    is not of the right form.
    """
    _check_hash(leaf_hash, "leaf hash")
    _check_hash(root, "root hash")
    _check_proof(proof)
    _check_size(size)
    if index < 0:
        raise MalformedError("a leaf index is not negative")
    # RFC 9162 2.1.3.2 (1): leaf_index >= tree_size fails.
    if index >= size:
        raise VerificationError("leaf index is not below the tree size")
    # (2) fn = leaf_index, sn = tree_size - 1; (3) r = hash.
    fn, sn = index, size - 1
    r = leaf_hash
    # (4) for each p in the inclusion path:
    for p in proof:
        # (4a) if sn is 0, stop and fail.
        if sn == 0:
            raise VerificationError("inclusion proof is too long")
        # (4b) if LSB(fn) is set, or fn == sn:
        if fn & 1 or fn == sn:
            # (4b i) r = HASH(0x01 || p || r)
            r = node_hash(p, r)
            # (4b ii) if LSB(fn) is not set, shift fn and sn right until LSB(fn) is set or fn is 0.
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            # (4b, otherwise) r = HASH(0x01 || r || p)
            r = node_hash(r, p)
        # (4c) shift fn and sn right once.
        fn >>= 1
        sn >>= 1
    # (5) sn must be 0 and r must equal the root.
    if sn != 0:
        raise VerificationError("inclusion proof is too short")
    if r != root:
        raise VerificationError("inclusion proof does not lead to the root hash")


def verify_consistency(
    *, size1: int, size2: int, root1: bytes, root2: bytes, proof: Sequence[bytes]
) -> None:
    """Check that the tree of ``size1`` leaves with ``root1`` is a prefix of the tree of
    ``size2`` leaves with ``root2``.

    ``size1 == 0`` is refused: the empty tree is a prefix of every tree, so no proof can say
    anything about ``root2``; a caller that accepts growth from nothing (a witness seeing a log
    for the first time) handles that case itself. Equal sizes need an empty proof and equal roots.
    """
    _check_hash(root1, "first root hash")
    _check_hash(root2, "second root hash")
    _check_proof(proof)
    _check_size(size1)
    _check_size(size2)
    if size1 > size2:
        raise VerificationError("the first tree is larger than the second")
    if size1 == 0:
        raise VerificationError("no consistency proof exists from the empty tree")
    if size1 == size2:
        if proof:
            raise VerificationError("trees of equal size need an empty consistency proof")
        if root1 != root2:
            raise VerificationError("trees of equal size have different roots")
        return
    # RFC 9162 2.1.4.2 (1): an empty consistency_path fails.
    if not proof:
        raise VerificationError("consistency proof is empty")
    path = list(proof)
    # (2) if first is an exact power of 2, prepend first_hash.
    if size1 & (size1 - 1) == 0:
        path.insert(0, root1)
    # (3) fn = first - 1, sn = second - 1.
    fn, sn = size1 - 1, size2 - 1
    # (4) if LSB(fn) is set, shift fn and sn right until LSB(fn) is not set.
    while fn & 1:
        fn >>= 1
        sn >>= 1
    # (5) fr = sr = the first value of the path.
    fr = sr = path[0]
    # (6) for each subsequent value c:
    for c in path[1:]:
        # (6a) if sn is 0, stop and fail.
        if sn == 0:
            raise VerificationError("consistency proof is too long")
        # (6b) if LSB(fn) is set, or fn == sn:
        if fn & 1 or fn == sn:
            # (6b i, ii) fr = HASH(0x01 || c || fr), sr = HASH(0x01 || c || sr)
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            # (6b iii) if LSB(fn) is not set, shift right until LSB(fn) is set or fn is 0.
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            # (6b, otherwise) sr = HASH(0x01 || sr || c)
            sr = node_hash(sr, c)
        # (6c) shift fn and sn right once.
        fn >>= 1
        sn >>= 1
    # (7) fr == first_hash, sr == second_hash, and sn == 0.
    if sn != 0:
        raise VerificationError("consistency proof is too short")
    if fr != root1:
        raise VerificationError("consistency proof does not lead to the first root hash")
    if sr != root2:
        raise VerificationError("consistency proof does not lead to the second root hash")


def _check_hash(h: bytes, what: str) -> None:
    if not isinstance(h, bytes | bytearray) or len(h) != HASH_SIZE:
        raise MalformedError(f"a {what} is {HASH_SIZE} bytes")


def _check_proof(proof: Sequence[bytes]) -> None:
    if len(proof) > MAX_PROOF_HASHES:
        raise MalformedError(f"a proof has at most {MAX_PROOF_HASHES} hashes")
    for p in proof:
        _check_hash(p, "proof hash")


def _check_size(size: int) -> None:
    if not 0 <= size <= MAX_TREE_SIZE:
        raise MalformedError("a tree size is between 0 and 2**63 - 1")
