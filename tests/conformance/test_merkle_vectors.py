"""The transparency-dev/merkle proof vectors (``../shared/vectors/merkle``), one test id per file.

Every ``wantErr`` vector must be rejected. A vector whose hashes are not 32 bytes is rejected as
malformed; any other rejection is a failed verification. One happy vector uses 12-byte placeholder
roots ("don't care 2") for two trees of equal size; Entente checks that every hash is a SHA-256
hash, so it refuses that input as malformed, on purpose (see ``STRICTER_THAN_REFERENCE``).
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from crypto.errors import MalformedError, VerificationError
from crypto.merkle import (
    MemoryHashStore,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    verify_consistency,
    verify_inclusion,
)
from tests.support import vector_params, vectors_dir

# Vectors where the reference accepts input that is not made of SHA-256 hashes.
STRICTER_THAN_REFERENCE = {
    "additional/sizes-are-equal-one-and-proof-is-empty.json": "12-byte placeholder roots",
}

# The leaves behind the vectors (RFC 6962 test data used by transparency-dev/merkle).
LEAVES = [
    b"",
    b"\x00",
    b"\x10",
    b"\x20\x21",
    b"\x30\x31",
    b"\x40\x41\x42\x43",
    b"\x50\x51\x52\x53\x54\x55\x56\x57",
    b"\x60\x61\x62\x63\x64\x65\x66\x67\x68\x69\x6a\x6b\x6c\x6d\x6e\x6f",
]


def _b64(value: str | None) -> bytes:
    return base64.b64decode(value or "", validate=True)


def _proof(vector: dict[str, Any]) -> list[bytes]:
    return [_b64(p) for p in vector["proof"] or []]


def _load(path: Path | None, kind: str) -> tuple[str, dict[str, Any]]:
    folder = vectors_dir("merkle", kind)
    assert path is not None
    return str(path.relative_to(folder)), json.loads(path.read_text())


def _expected_error(hashes: list[bytes]) -> type[Exception]:
    return MalformedError if any(len(h) != 32 for h in hashes) else VerificationError


@pytest.mark.vectors
@pytest.mark.parametrize("path", vector_params("merkle", "inclusion", pattern="*.json"))
def test_inclusion_vector(path: Path | None) -> None:
    _, v = _load(path, "inclusion")
    proof = _proof(v)
    leaf, root = _b64(v["leafHash"]), _b64(v["root"])

    def check() -> None:
        verify_inclusion(
            leaf_hash=leaf, index=v["leafIdx"], size=v["treeSize"], proof=proof, root=root
        )

    if v["wantErr"]:
        with pytest.raises(_expected_error([leaf, root, *proof])):
            check()
        return
    check()
    # Our generator reproduces the published proof from the same leaves.
    size = v["treeSize"]
    if size <= len(LEAVES) and leaf == leaf_hash(LEAVES[v["leafIdx"]]):
        store = MemoryHashStore(leaf_hash(d) for d in LEAVES[:size])
        assert store.root() == root
        assert inclusion_proof(v["leafIdx"], size, store) == proof


@pytest.mark.vectors
@pytest.mark.parametrize("path", vector_params("merkle", "consistency", pattern="*.json"))
def test_consistency_vector(path: Path | None) -> None:
    name, v = _load(path, "consistency")
    proof = _proof(v)
    root1, root2 = _b64(v["root1"]), _b64(v["root2"])

    def check() -> None:
        verify_consistency(
            size1=v["size1"], size2=v["size2"], root1=root1, root2=root2, proof=proof
        )

    if name in STRICTER_THAN_REFERENCE:
        assert not v["wantErr"], "the exception list names a vector the reference accepts"
        with pytest.raises(MalformedError):
            check()
        return
    if v["wantErr"]:
        with pytest.raises(_expected_error([root1, root2, *proof])):
            check()
        return
    check()
    size1, size2 = v["size1"], v["size2"]
    if size2 <= len(LEAVES) and size1 > 0:
        store = MemoryHashStore(leaf_hash(d) for d in LEAVES[:size2])
        if store.root(size1) == root1:
            assert store.root() == root2
            assert consistency_proof(size1, size2, store) == proof
