"""Ed25519 signing keys, their public halves and fingerprints.

A node's identity is its Ed25519 key. Its *fingerprint* is the lowercase hex SHA-256 of the 32-byte
raw public key (RFC 8032 encoding), which is what operators compare out of band when they pin a
partner, and what RFC 9421 ``keyid`` and DSSE ``keyid`` carry. :func:`format_fingerprint` groups it
for people to read aloud.

:class:`Verifier` and :class:`Signer` are the shapes every signature algorithm's keys share
(Ed25519 here, ML-DSA-65 in ``crypto.mldsa``), so that DSSE signs and verifies with either.

This module does not read or write files, and it does not know about passphrases: see
``crypto.age`` for the scrypt-encrypted form in which the service keeps keys at rest.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from typing import Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

from crypto.errors import MalformedError, VerificationError

__all__ = [
    "Signer",
    "SigningKey",
    "Verifier",
    "VerifyKey",
    "fingerprint_of",
    "format_fingerprint",
    "normalize_fingerprint",
]

Rng = Callable[[int], bytes]

_FINGERPRINT_HEX_LEN = 64


def fingerprint_of(raw_public_key: bytes) -> str:
    """The fingerprint of a raw 32-byte Ed25519 public key: hex SHA-256."""
    return hashlib.sha256(raw_public_key).hexdigest()


def format_fingerprint(fingerprint: str) -> str:
    """Group a fingerprint in blocks of four for reading aloud: ``ab12 cd34 ...``."""
    return " ".join(fingerprint[i : i + 4] for i in range(0, len(fingerprint), 4))


def normalize_fingerprint(text: str) -> str:
    """Accept a fingerprint as typed by a person (spaces, colons, upper case) or raise."""
    cleaned = "".join(ch for ch in text.lower() if ch not in " :-")
    cleaned = cleaned.removeprefix("sha256")
    if len(cleaned) != _FINGERPRINT_HEX_LEN or any(ch not in "0123456789abcdef" for ch in cleaned):
        raise MalformedError("a fingerprint is 64 hexadecimal digits (SHA-256)")
    return cleaned


class Verifier(Protocol):
    """A public key that checks signatures: :class:`VerifyKey` or ``mldsa.MLDSAVerifyKey``."""

    @property
    def raw(self) -> bytes: ...

    @property
    def fingerprint(self) -> str: ...

    def verify(self, signature: bytes, message: bytes) -> None: ...

    def is_valid(self, signature: bytes, message: bytes) -> bool: ...


class Signer(Protocol):
    """A private key that signs: :class:`SigningKey` or ``crypto.mldsa.MLDSASigningKey``."""

    @property
    def fingerprint(self) -> str: ...

    @property
    def public(self) -> Verifier: ...

    def sign(self, message: bytes) -> bytes: ...


class VerifyKey:
    """An Ed25519 public key."""

    __slots__ = ("_key", "_raw")

    def __init__(self, raw: bytes) -> None:
        if len(raw) != 32:
            raise MalformedError("an Ed25519 public key is 32 bytes")
        try:
            self._key = Ed25519PublicKey.from_public_bytes(raw)
        except ValueError as exc:
            raise MalformedError("not a valid Ed25519 public key") from exc
        self._raw = bytes(raw)

    @property
    def raw(self) -> bytes:
        return self._raw

    @property
    def fingerprint(self) -> str:
        return fingerprint_of(self._raw)

    def verify(self, signature: bytes, message: bytes) -> None:
        """Raise :class:`VerificationError` unless ``signature`` is valid over ``message``."""
        try:
            self._key.verify(signature, message)
        except InvalidSignature:
            raise VerificationError("Ed25519 signature does not verify") from None

    def is_valid(self, signature: bytes, message: bytes) -> bool:
        try:
            self.verify(signature, message)
        except VerificationError:
            return False
        return True

    def __eq__(self, other: object) -> bool:
        return isinstance(other, VerifyKey) and other._raw == self._raw

    def __hash__(self) -> int:
        return hash(self._raw)

    def __repr__(self) -> str:
        return f"VerifyKey({self.fingerprint[:16]}…)"


class SigningKey:
    """An Ed25519 private key. Never printed: its repr shows only the public fingerprint."""

    __slots__ = ("_key", "_public")

    def __init__(self, seed: bytes) -> None:
        if len(seed) != 32:
            raise MalformedError("an Ed25519 seed is 32 bytes")
        self._key = Ed25519PrivateKey.from_private_bytes(seed)
        self._public = VerifyKey(
            self._key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        )

    @classmethod
    def generate(cls, *, rng: Rng = os.urandom) -> SigningKey:
        return cls(rng(32))

    @property
    def seed(self) -> bytes:
        return self._key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())

    @property
    def public(self) -> VerifyKey:
        return self._public

    @property
    def fingerprint(self) -> str:
        return self._public.fingerprint

    def sign(self, message: bytes) -> bytes:
        return self._key.sign(message)

    def __repr__(self) -> str:
        return f"SigningKey(public={self.fingerprint[:16]}…)"
