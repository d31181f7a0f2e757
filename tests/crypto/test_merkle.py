"""Unit and property tests for ``crypto.merkle`` against a literal reading of RFC 9162 2.1."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crypto.errors import MalformedError, VerificationError
from crypto.merkle import (
    EMPTY_ROOT,
    MAX_PROOF_HASHES,
    CompactRange,
    MemoryHashStore,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    node_hash,
    root_from_leaf_hashes,
    subtree_root,
    verify_consistency,
    verify_inclusion,
)

MAX_LEAVES = 300
PROPS = settings(max_examples=150, deadline=None)


# --- An independent, recursive reference: the definitions of RFC 9162 2.1.1, 2.1.3.1, 2.1.4.1.


def _k(n: int) -> int:
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def ref_mth(d: list[bytes]) -> bytes:
    if not d:
        return hashlib.sha256(b"").digest()
    if len(d) == 1:
        return hashlib.sha256(b"\x00" + d[0]).digest()
    k = _k(len(d))
    return hashlib.sha256(b"\x01" + ref_mth(d[:k]) + ref_mth(d[k:])).digest()


def ref_path(m: int, d: list[bytes]) -> list[bytes]:
    if len(d) == 1:
        return []
    k = _k(len(d))
    if m < k:
        return [*ref_path(m, d[:k]), ref_mth(d[k:])]
    return [*ref_path(m - k, d[k:]), ref_mth(d[:k])]


def ref_subproof(m: int, d: list[bytes], b: bool) -> list[bytes]:
    if m == len(d):
        return [] if b else [ref_mth(d)]
    k = _k(len(d))
    if m <= k:
        return [*ref_subproof(m, d[:k], b), ref_mth(d[k:])]
    return [*ref_subproof(m - k, d[k:], False), ref_mth(d[:k])]


def path_shape(m: int, n: int) -> list[str]:
    """Which side each sibling of PATH(m, D[n]) is on: all a verifier learns from a size."""
    if n == 1:
        return []
    k = _k(n)
    return [*path_shape(m, k), "R"] if m < k else [*path_shape(m - k, n - k), "L"]


def subproof_shape(m: int, n: int, b: bool) -> list[str]:
    if m == n:
        return [] if b else ["H"]
    k = _k(n)
    if m <= k:
        return [*subproof_shape(m, k, b), "R"]
    return [*subproof_shape(m - k, n - k, False), "L"]


def entries(n: int) -> list[bytes]:
    return [b"entry %d" % i for i in range(n)]


def store_of(n: int) -> MemoryHashStore:
    return MemoryHashStore(leaf_hash(e) for e in entries(n))


# --- Hashing and the compact range.


def test_hash_prefixes() -> None:
    assert leaf_hash(b"abc") == hashlib.sha256(b"\x00abc").digest()
    assert (
        node_hash(b"l" * 32, b"r" * 32) == hashlib.sha256(b"\x01" + b"l" * 32 + b"r" * 32).digest()
    )
    assert hashlib.sha256(b"").digest() == EMPTY_ROOT
    assert root_from_leaf_hashes([]) == EMPTY_ROOT


@pytest.mark.parametrize("n", [*range(0, 70), 127, 128, 129, 255, 256, 257])
def test_compact_range_matches_reference(n: int) -> None:
    d = entries(n)
    want = ref_mth(d)
    cr = CompactRange()
    for e in d:
        cr.append(leaf_hash(e))
    assert cr.size == n
    assert len(cr.hashes) == n.bit_count()
    assert cr.root() == want
    bulk = CompactRange()
    bulk.extend(leaf_hash(e) for e in d)
    assert bulk.root() == want
    raw = CompactRange()
    raw.extend_entries(d)
    assert raw.root() == want
    assert root_from_leaf_hashes([leaf_hash(e) for e in d]) == want
    assert store_of(n).root() == want


def test_compact_range_resumes_from_its_frontier() -> None:
    d = entries(100)
    first = CompactRange()
    first.extend_entries(d[:37])
    resumed = CompactRange(first.size, first.hashes)
    resumed.extend_entries(d[37:])
    assert resumed.root() == ref_mth(d)
    copied = first.copy()
    copied.append(leaf_hash(b"x"))
    assert first.size == 37
    assert copied.size == 38


@pytest.mark.parametrize(
    ("size", "hashes", "match"),
    [
        (3, [b"a" * 32], "one hash per set bit"),
        (1, [b"a" * 31], "32 bytes"),
        (-1, [], "tree size"),
    ],
)
def test_compact_range_rejects_bad_frontier(size: int, hashes: list[bytes], match: str) -> None:
    with pytest.raises(MalformedError, match=match):
        CompactRange(size, hashes)


def test_compact_range_rejects_bad_leaf() -> None:
    cr = CompactRange()
    with pytest.raises(MalformedError):
        cr.append(b"short")
    with pytest.raises(MalformedError):
        cr.extend([b"a" * 32, b"short"])
    assert cr.size == 1  # the good leaf before the bad one was appended


def test_visit_reports_every_perfect_subtree() -> None:
    seen: dict[tuple[int, int], bytes] = {}
    cr = CompactRange()
    d = entries(13)
    for e in d:
        cr.append(leaf_hash(e), lambda level, index, h: seen.__setitem__((level, index), h))
    for (level, index), h in seen.items():
        assert h == ref_mth(d[index << level : (index + 1) << level])
    # 13 leaves, 6 + 3 + 1 completed interior nodes.
    assert len(seen) == 13 + 6 + 3 + 1


def test_memory_store_answers_only_perfect_subtrees() -> None:
    store = store_of(10)
    assert store(8, 10) == ref_mth(entries(10)[8:10])
    for start, end in [(0, 3), (1, 3), (8, 12), (4, 4), (-2, 0), (-1, 0)]:
        with pytest.raises(MalformedError):
            store(start, end)
    with pytest.raises(MalformedError):
        store.root(11)
    assert store.root(0) == EMPTY_ROOT
    assert store.root(7) == ref_mth(entries(7))
    with pytest.raises(MalformedError):
        subtree_root(1, 3, store)  # not aligned
    with pytest.raises(MalformedError):
        subtree_root(-4, 0, store)


# --- Proof generation against the reference; verification of generated proofs.


def test_inclusion_proof_bounds() -> None:
    store = store_of(5)
    for index, size in [(5, 5), (-1, 5), (0, 0)]:
        with pytest.raises(MalformedError):
            inclusion_proof(index, size, store)
    for size1, size2 in [(0, 5), (3, 2)]:
        with pytest.raises(MalformedError):
            consistency_proof(size1, size2, store)
    assert consistency_proof(5, 5, store) == []


def test_lookups_are_logarithmic() -> None:
    store = store_of(1000)
    calls: list[tuple[int, int]] = []

    def counting(start: int, end: int, /) -> bytes:
        calls.append((start, end))
        return store(start, end)

    inclusion_proof(3, 1000, counting)
    assert len(calls) <= 2 * 10
    calls.clear()
    consistency_proof(333, 1000, counting)
    assert len(calls) <= 2 * 10


@PROPS
@given(data=st.data(), size=st.integers(min_value=1, max_value=MAX_LEAVES))
def test_inclusion_proofs_match_reference_and_verify(data: st.DataObject, size: int) -> None:
    d = entries(size)
    store = store_of(size)
    root = store.root()
    index = data.draw(st.integers(min_value=0, max_value=size - 1))
    proof = inclusion_proof(index, size, store)
    assert proof == ref_path(index, d)
    leaf = leaf_hash(d[index])
    verify_inclusion(leaf_hash=leaf, index=index, size=size, proof=proof, root=root)


@PROPS
@given(data=st.data(), size2=st.integers(min_value=1, max_value=MAX_LEAVES))
def test_consistency_proofs_match_reference_and_verify(data: st.DataObject, size2: int) -> None:
    d = entries(size2)
    store = store_of(size2)
    size1 = data.draw(st.integers(min_value=1, max_value=size2))
    proof = consistency_proof(size1, size2, store)
    assert proof == ref_subproof(size1, d, True)
    verify_consistency(
        size1=size1, size2=size2, root1=store.root(size1), root2=store.root(), proof=proof
    )


def _flip(h: bytes, bit: int) -> bytes:
    return bytes([h[0] ^ (1 << bit)]) + h[1:]


@PROPS
@given(data=st.data(), size=st.integers(min_value=1, max_value=MAX_LEAVES))
def test_altered_inclusion_claims_fail(data: st.DataObject, size: int) -> None:
    store = store_of(size)
    root = store.root()
    index = data.draw(st.integers(min_value=0, max_value=size - 1))
    leaf = leaf_hash(entries(size)[index])
    proof = inclusion_proof(index, size, store)
    bit = data.draw(st.integers(min_value=0, max_value=7))

    variants: list[tuple[bytes, int, int, list[bytes], bytes]] = [
        (_flip(leaf, bit), index, size, proof, root),
        (leaf, index, size, proof, _flip(root, bit)),
        (leaf, index, size, [*proof, root], root),
        (leaf, index, size, [root, *proof], root),
    ]
    if proof:
        i = data.draw(st.integers(min_value=0, max_value=len(proof) - 1))
        bad = list(proof)
        bad[i] = _flip(bad[i], bit)
        variants += [(leaf, index, size, bad, root), (leaf, index, size, proof[:-1], root)]
    other_index = data.draw(st.integers(min_value=0, max_value=2 * size))
    if other_index != index:
        variants.append((leaf, other_index, size, proof, root))
    for other_size in {size * 2, size // 2, data.draw(st.integers(1, 2 * MAX_LEAVES))} - {size}:
        claim = (leaf, index, other_size, proof, root)
        if other_size > index and path_shape(index, other_size) == path_shape(index, size):
            # A proof binds the size only through its shape; the signed checkpoint binds it.
            verify_inclusion(leaf_hash=leaf, index=index, size=other_size, proof=proof, root=root)
        else:
            variants.append(claim)
    for v_leaf, v_index, v_size, v_proof, v_root in variants:
        with pytest.raises(VerificationError):
            verify_inclusion(
                leaf_hash=v_leaf, index=v_index, size=v_size, proof=v_proof, root=v_root
            )


@PROPS
@given(data=st.data(), size2=st.integers(min_value=2, max_value=MAX_LEAVES))
def test_altered_consistency_claims_fail(data: st.DataObject, size2: int) -> None:
    store = store_of(size2)
    size1 = data.draw(st.integers(min_value=1, max_value=size2 - 1))
    root1, root2 = store.root(size1), store.root()
    proof = consistency_proof(size1, size2, store)
    bit = data.draw(st.integers(min_value=0, max_value=7))
    i = data.draw(st.integers(min_value=0, max_value=len(proof) - 1))
    bad = list(proof)
    bad[i] = _flip(bad[i], bit)

    variants: list[tuple[int, int, bytes, bytes, list[bytes]]] = [
        (size1, size2, _flip(root1, bit), root2, proof),
        (size1, size2, root1, _flip(root2, bit), proof),
        (size1, size2, root2, root1, proof),
        (size1, size2, root1, root2, bad),
        (size1, size2, root1, root2, proof[:-1]),
        (size1, size2, root1, root2, [*proof, root1]),
        (size1, size2, root1, root2, [root2, *proof]),
        (size1, size2, root1, root2, []),
    ]
    shape = subproof_shape(size1, size2, True)
    others = {
        (size1 - 1, size2),
        (size1 + 1, size2),
        (size1 ^ 2, size2),
        (size1, size2 * 2),
        (size1, size2 // 2),
        (data.draw(st.integers(0, size2 + 1)), size2),
        (size1, data.draw(st.integers(1, 2 * MAX_LEAVES))),
    } - {(size1, size2)}
    for o1, o2 in others:
        if 0 < o1 < o2 and subproof_shape(o1, o2, True) == shape:
            # As for inclusion, only the shape of the proof depends on the sizes.
            verify_consistency(size1=o1, size2=o2, root1=root1, root2=root2, proof=proof)
        else:
            variants.append((o1, o2, root1, root2, proof))
    for v1, v2, r1, r2, p in variants:
        with pytest.raises(VerificationError):
            verify_consistency(size1=v1, size2=v2, root1=r1, root2=r2, proof=p)


# --- Bounds and malformed input.


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"leaf_hash": b"x" * 31}, MalformedError),
        ({"root": b""}, MalformedError),
        ({"proof": [b"x" * 33]}, MalformedError),
        ({"proof": [b"x" * 32] * (MAX_PROOF_HASHES + 1)}, MalformedError),
        ({"index": -1}, MalformedError),
        ({"size": -1}, MalformedError),
        ({"size": 1 << 63}, MalformedError),
        ({"index": 1, "size": 1}, VerificationError),
        ({"proof": [b"x" * 32]}, VerificationError),
    ],
)
def test_verify_inclusion_rejects(kwargs: dict[str, object], error: type[Exception]) -> None:
    args: dict[str, object] = {
        "leaf_hash": b"l" * 32,
        "index": 0,
        "size": 1,
        "proof": [],
        "root": b"l" * 32,
    }
    verify_inclusion(**args)  # type: ignore[arg-type]
    args.update(kwargs)
    with pytest.raises(error):
        verify_inclusion(**args)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"root1": b"x"}, MalformedError, "32 bytes"),
        ({"proof": [b"x" * 32] * (MAX_PROOF_HASHES + 1)}, MalformedError, "at most"),
        ({"size1": -1}, MalformedError, "tree size"),
        ({"size1": 0, "size2": 0}, VerificationError, "empty tree"),
        ({"size1": 0}, VerificationError, "empty tree"),
        ({"size1": 6}, VerificationError, "larger"),
        ({"root2": b"y" * 32}, VerificationError, "different roots"),
        ({"proof": [b"r" * 32]}, VerificationError, "empty consistency proof"),
    ],
)
def test_verify_consistency_rejects(
    kwargs: dict[str, object], error: type[Exception], match: str
) -> None:
    args: dict[str, object] = {
        "size1": 5,
        "size2": 5,
        "root1": b"r" * 32,
        "root2": b"r" * 32,
        "proof": [],
    }
    verify_consistency(**args)  # type: ignore[arg-type]
    args.update(kwargs)
    with pytest.raises(error, match=match):
        verify_consistency(**args)  # type: ignore[arg-type]


class _SparseSource:
    """A 2**40-leaf tree without 2**40 leaves: perfect subtrees wider than 2**14 are opaque
    stored hashes, smaller ones are real Merkle nodes over synthetic entries. Verification only
    checks hash chaining, so proofs from this source must verify against its own root."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.calls = 0
        self.cache: dict[tuple[int, int], bytes] = {}

    def __call__(self, start: int, end: int, /) -> bytes:
        assert end <= self.size
        self.calls += 1
        return self._node(start, end)

    def _node(self, start: int, end: int) -> bytes:
        width = end - start
        if width > 1 << 14:
            return hashlib.sha256(b"opaque %d %d" % (start, end)).digest()
        key = (start, end)
        if key not in self.cache:
            if width == 1:
                self.cache[key] = leaf_hash(start.to_bytes(8, "big"))
            else:
                half = width // 2
                self.cache[key] = node_hash(
                    self._node(start, start + half), self._node(start + half, end)
                )
        return self.cache[key]


@pytest.mark.parametrize("offset", [1, 3, 100, 12345])
def test_proofs_in_a_huge_tree_need_few_lookups(offset: int) -> None:
    size = (1 << 40) + 12345
    source = _SparseSource(size)
    root = subtree_root(0, size, source)
    index = size - offset
    source.calls = 0
    proof = inclusion_proof(index, size, source)
    assert source.calls <= 2 * 41
    verify_inclusion(
        leaf_hash=leaf_hash(index.to_bytes(8, "big")),
        index=index,
        size=size,
        proof=proof,
        root=root,
    )
    size1 = size - offset
    old_root = subtree_root(0, size1, source)
    proof = consistency_proof(size1, size, source)
    verify_consistency(size1=size1, size2=size, root1=old_root, root2=root, proof=proof)
