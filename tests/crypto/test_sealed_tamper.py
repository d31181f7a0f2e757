"""Tampering: any changed byte of the ciphertext, its header or the manifest file is refused.

Every position of the age header and of the manifest file is flipped (two different bit masks),
and positions spread over the payload; each case goes through the all-or-nothing file opener,
which must raise a :class:`~crypto.errors.CryptoError` and leave the output folder empty.
:func:`crypto.sealed.verify` (no key) must refuse every header and manifest change as well.
"""

from __future__ import annotations

import io
import os
from datetime import UTC, datetime
from pathlib import Path

import pytest

from crypto import age, sealed
from crypto.errors import CryptoError
from crypto.keys import SigningKey
from service import files
from tests.crypto.test_age_keys import counting_rng

NOW_KEY = SigningKey(b"\x33" * 32)
TRUSTED = {NOW_KEY.fingerprint: NOW_KEY.public}
READER = age.X25519Identity(b"\x05" * 32)
PLAINTEXT = os.urandom(2 * 64 * 1024 + 300)  # three STREAM chunks


@pytest.fixture(scope="module")
def artifact() -> tuple[bytes, bytes, int]:
    sink = io.BytesIO()
    result = sealed.seal(
        io.BytesIO(PLAINTEXT),
        sink,
        artifact_id="tamper-1",
        title="Tamper target",
        origin="uk-aisi",
        tlp="TLP:AMBER+STRICT",
        recipients=[sealed.ManifestRecipient("us-aisi", READER.recipient.to_string())],
        signer=NOW_KEY,
        policy={"policy": "us-uk", "version": 1},
        now=datetime(2026, 5, 1, tzinfo=UTC),
        rng=counting_rng(9),
    )
    ciphertext = sink.getvalue()
    return ciphertext, result.envelope.to_bytes(), len(age.read_header(io.BytesIO(ciphertext)).raw)


def open_file(tmp_path: Path, ciphertext: bytes, envelope_bytes: bytes) -> None:
    src = tmp_path / "in.age"
    src.write_bytes(ciphertext)
    out_dir = tmp_path / "out"
    out_dir.mkdir(exist_ok=True)
    try:
        envelope = sealed.load_envelope(envelope_bytes)
        files.open_sealed_file(
            src, out_dir / "plain", envelope=envelope, identities=[READER], trusted=TRUSTED
        )
    finally:
        left = list(out_dir.iterdir())
        for p in left:
            p.unlink()
        assert left == [] or left == [out_dir / "plain"]
        if left:
            raise AssertionError("a tampered artifact was opened")


def flipped(data: bytes, index: int, mask: int) -> bytes:
    out = bytearray(data)
    out[index] ^= mask
    return bytes(out)


def test_untampered_artifact_opens(tmp_path: Path, artifact: tuple[bytes, bytes, int]) -> None:
    ciphertext, envelope_bytes, _ = artifact
    out = tmp_path / "plain"
    files.open_sealed_file(
        _write(tmp_path / "c.age", ciphertext),
        out,
        envelope=sealed.load_envelope(envelope_bytes),
        identities=[READER],
        trusted=TRUSTED,
    )
    assert out.read_bytes() == PLAINTEXT


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("mask", [0x01, 0x5A])
def test_every_header_byte_flip_is_refused(
    tmp_path: Path, artifact: tuple[bytes, bytes, int], mask: int
) -> None:
    ciphertext, envelope_bytes, header_len = artifact
    envelope = sealed.load_envelope(envelope_bytes)
    for i in range(header_len + 16):  # the header and the payload nonce
        bad = flipped(ciphertext, i, mask)
        with pytest.raises(CryptoError):
            open_file(tmp_path, bad, envelope_bytes)
        if i < header_len:
            with pytest.raises(CryptoError):
                sealed.verify(envelope, trusted=TRUSTED, ciphertext=bad)


def test_payload_byte_flips_are_refused(tmp_path: Path, artifact: tuple[bytes, bytes, int]) -> None:
    ciphertext, envelope_bytes, header_len = artifact
    start = header_len + 16
    positions = sorted(
        {start, len(ciphertext) - 1, len(ciphertext) - 16, *range(start, len(ciphertext), 4099)}
    )
    for i in positions:
        with pytest.raises(CryptoError):
            open_file(tmp_path, flipped(ciphertext, i, 0x80), envelope_bytes)


def test_truncated_or_extended_ciphertext_is_refused(
    tmp_path: Path, artifact: tuple[bytes, bytes, int]
) -> None:
    ciphertext, envelope_bytes, _ = artifact
    for bad in (ciphertext[:-1], ciphertext[:-65552], ciphertext + b"\x00", ciphertext[:100]):
        with pytest.raises(CryptoError):
            open_file(tmp_path, bad, envelope_bytes)


@pytest.mark.parametrize("mask", [0x01, 0x20])
def test_every_manifest_byte_flip_is_refused(
    tmp_path: Path, artifact: tuple[bytes, bytes, int], mask: int
) -> None:
    ciphertext, envelope_bytes, _ = artifact
    for i in range(len(envelope_bytes)):
        bad = flipped(envelope_bytes, i, mask)
        with pytest.raises(CryptoError):
            sealed.verify(sealed.load_envelope(bad), trusted=TRUSTED, ciphertext=ciphertext)
        if i % 7 == 0:  # the file opener runs the same checks first; sample it
            with pytest.raises(CryptoError):
                open_file(tmp_path, ciphertext, bad)
