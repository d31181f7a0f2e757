"""The C2SP CCTV age vectors (../shared/vectors/age), every one of them.

Each file is a text header (``expect``, ``payload``, ``identity``/``passphrase``, ``armored``,
``compressed``), a blank line, then the age file (zlib-compressed when ``compressed: zlib``).
A ``success`` vector must decrypt to a plaintext whose SHA-256 is ``payload``; any other must fail
with the matching kind of :class:`~crypto.errors.DecryptionError` and write no plaintext at all.
"""

from __future__ import annotations

import hashlib
import io
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from crypto import age
from crypto.errors import (
    ArmorError,
    DecryptionError,
    HeaderError,
    HeaderMacError,
    NoIdentityMatchError,
    PayloadError,
)
from tests.support import vector_params, vectors_dir

pytestmark = pytest.mark.vectors

EXPECTED_ERROR: dict[str, type[DecryptionError] | None] = {
    "success": None,
    "no match": NoIdentityMatchError,
    "HMAC failure": HeaderMacError,
    "header failure": HeaderError,
    "payload failure": PayloadError,
    "armor failure": ArmorError,
}


@dataclass
class Vector:
    expect: str
    body: bytes
    payload: str | None = None
    armored: bool = False
    identities: list[age.Identity] = field(default_factory=list)


def load(path: Path) -> Vector:
    head, sep, body = path.read_bytes().partition(b"\n\n")
    assert sep, f"{path.name}: no blank line after the vector header"
    fields: list[tuple[str, str]] = []
    for line in head.decode("utf-8").splitlines():
        key, colon, value = line.partition(": ")
        assert colon, f"{path.name}: malformed header line {line!r}"
        fields.append((key, value))
    vector = Vector(expect="", body=body)
    for key, value in fields:
        if key == "expect":
            vector.expect = value
        elif key == "payload":
            vector.payload = value
        elif key == "identity":
            vector.identities.append(age.parse_identity(value))
        elif key == "passphrase":
            vector.identities.append(age.ScryptIdentity(value))
        elif key == "armored":
            vector.armored = value == "yes"
        elif key == "compressed":
            assert value == "zlib", f"{path.name}: unknown compression {value!r}"
            vector.body = zlib.decompress(body)
        elif key not in ("file key", "comment"):
            raise AssertionError(f"{path.name}: unknown vector field {key!r}")
    assert vector.expect in EXPECTED_ERROR, f"{path.name}: unknown expectation {vector.expect!r}"
    return vector


def test_all_143_vectors_are_present() -> None:
    folder = vectors_dir("age")
    assert len([p for p in folder.iterdir() if p.is_file() and p.name != "LICENSE"]) == 143


@pytest.mark.parametrize("path", vector_params("age"))
def test_age_vector(path: Path | None) -> None:
    vectors_dir("age")
    assert path is not None
    vector = load(path)
    expected = EXPECTED_ERROR[vector.expect]
    out = io.BytesIO()
    if expected is None:
        age.decrypt(io.BytesIO(vector.body), out, vector.identities, armor=vector.armored)
        assert hashlib.sha256(out.getvalue()).hexdigest() == vector.payload
        return
    with pytest.raises(DecryptionError) as info:
        age.decrypt(io.BytesIO(vector.body), out, vector.identities, armor=vector.armored)
    assert type(info.value) is expected, f"{vector.expect!r} vector raised {info.value!r}"
    assert out.getvalue() == b"", "a failing vector released plaintext"
