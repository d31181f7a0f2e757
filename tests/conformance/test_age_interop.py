"""Interop with independent age implementations: the ``age`` CLI (Go) and pyrage (rage, Rust).

* a file sealed by Entente to an ``age-keygen`` recipient decrypts with ``age -d`` and with pyrage
  to identical bytes;
* files encrypted by ``age`` (binary and armored) and by pyrage to the node's recipient decrypt
  with Entente's reader;
* passphrase key files written by Entente decrypt with pyrage.

pyrage and age 1.1 have no MLKEM768-X25519 recipient; the hybrid type is checked against the CCTV
vectors (made with the Go reference implementation) in ``test_age_vectors.py``.
"""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pyrage
import pytest

from crypto import age, sealed
from crypto.keys import SigningKey
from service import files
from tests.support import require_tool

pytestmark = pytest.mark.age_cli

# Sizes straddling STREAM chunk (64 KiB) and the reader's block (1 MiB) boundaries.
SIZES = [0, 1, 65536, 65537, 1 << 20, (1 << 20) + 65536 * 3 + 11]


def keygen(tmp_path: Path) -> tuple[Path, str]:
    tool = require_tool("age-keygen", "age")
    key_file = tmp_path / "key.txt"
    subprocess.run([tool, "-o", str(key_file)], check=True, capture_output=True)
    recipient = next(
        line.split(": ", 1)[1]
        for line in key_file.read_text().splitlines()
        if line.startswith("# public key: ")
    )
    return key_file, recipient


@pytest.mark.parametrize("size", SIZES)
def test_sealed_by_entente_decrypts_with_age_cli_and_pyrage(tmp_path: Path, size: int) -> None:
    age_cli = require_tool("age", "age")
    key_file, recipient = keygen(tmp_path)
    data = os.urandom(size)
    src = tmp_path / "plain.bin"
    src.write_bytes(data)
    signer = SigningKey.generate()
    result = files.seal_file(
        src,
        tmp_path / "sealed.age",
        artifact_id="interop-1",
        title="Interop",
        origin="uk-aisi",
        tlp="TLP:CLEAR",
        recipients=[sealed.ManifestRecipient("us-aisi", recipient)],
        signer=signer,
        policy={},
        now=datetime(2026, 1, 1, tzinfo=UTC),
    )
    assert result.sha256 == hashlib.sha256(data).hexdigest()
    out = subprocess.run(
        [age_cli, "-d", "-i", str(key_file), str(tmp_path / "sealed.age")],
        check=True,
        capture_output=True,
    ).stdout
    assert out == data
    identity = pyrage.x25519.Identity.from_str(
        next(line for line in key_file.read_text().splitlines() if line.startswith("AGE-"))
    )
    assert pyrage.decrypt((tmp_path / "sealed.age").read_bytes(), [identity]) == data


@pytest.mark.parametrize("armor", [False, True])
@pytest.mark.parametrize("size", SIZES)
def test_age_cli_file_decrypts_with_entente(tmp_path: Path, size: int, armor: bool) -> None:
    age_cli = require_tool("age", "age")
    node = age.X25519Identity.generate()
    other = age.X25519Identity.generate()
    data = os.urandom(size)
    args = [age_cli, "-r", other.recipient.to_string(), "-r", node.recipient.to_string()]
    encrypted = subprocess.run(
        [*args, *(["-a"] if armor else [])], input=data, check=True, capture_output=True
    ).stdout
    out = io.BytesIO()
    hasher = hashlib.sha256()
    age.decrypt(io.BytesIO(encrypted), out, [node], hasher=hasher)
    assert out.getvalue() == data
    assert hasher.hexdigest() == hashlib.sha256(data).hexdigest()


def test_age_keygen_identity_parses_and_matches_its_recipient(tmp_path: Path) -> None:
    key_file, recipient = keygen(tmp_path)
    secret = next(line for line in key_file.read_text().splitlines() if line.startswith("AGE-"))
    identity = age.parse_identity(secret)
    assert identity.recipient.to_string() == recipient
    assert identity.to_string() == secret


def test_pyrage_file_decrypts_with_entente() -> None:
    node = age.X25519Identity.generate()
    data = os.urandom(200_000)
    encrypted = pyrage.encrypt(data, [pyrage.x25519.Recipient.from_str(node.recipient.to_string())])
    out = io.BytesIO()
    age.decrypt(io.BytesIO(encrypted), out, [node])
    assert out.getvalue() == data


def test_passphrase_key_file_decrypts_with_pyrage() -> None:
    # The other direction (a third-party scrypt file read by Entente) is the CCTV "scrypt"
    # vectors: pyrage only encrypts with a work factor tuned to take seconds.
    secret = age.X25519Identity.generate().to_string().encode()
    ours = age.encrypt_with_passphrase(secret, "correct horse", work_factor=10)
    assert pyrage.passphrase.decrypt(ours, "correct horse") == secret
    armored = age.armor(ours)
    assert pyrage.passphrase.decrypt(armored, "correct horse") == secret
