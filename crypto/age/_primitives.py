"""The primitives age is built from, on pyca/cryptography: HKDF-SHA-256 and ChaCha20-Poly1305.

Wrapping one 16-byte file key uses a fixed all-zero nonce (each wrap key is used once). This module
turns ``cryptography`` exceptions into return values; it never raises a ``cryptography`` error.
"""

from __future__ import annotations

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

__all__ = ["FILE_KEY_SIZE", "TAG_SIZE", "hkdf_sha256", "open_file_key", "seal_file_key"]

FILE_KEY_SIZE = 16
TAG_SIZE = 16
_ZERO_NONCE = bytes(12)


def hkdf_sha256(ikm: bytes, salt: bytes, info: bytes) -> bytes:
    """HKDF-SHA-256 (RFC 5869) with a 32-byte output, as age uses it throughout."""
    return HKDF(algorithm=SHA256(), length=32, salt=salt or None, info=info).derive(ikm)


def seal_file_key(wrap_key: bytes, file_key: bytes) -> bytes:
    return ChaCha20Poly1305(wrap_key).encrypt(_ZERO_NONCE, file_key, None)


def open_file_key(wrap_key: bytes, body: bytes) -> bytes | None:
    """The file key, or ``None`` when the body does not authenticate under ``wrap_key``."""
    try:
        return ChaCha20Poly1305(wrap_key).decrypt(_ZERO_NONCE, body, None)
    except InvalidTag:
        return None
