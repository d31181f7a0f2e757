"""ML-DSA-65 (FIPS 204) signing keys and their public halves, shaped like ``crypto.keys``.

A node that signs for the long term (manifests, descriptors, receipts, onward chains) carries an
ML-DSA-65 key beside its Ed25519 key, so that its signatures stay unforgeable once a quantum
computer breaks Ed25519. An ML-DSA key's *fingerprint* is the lowercase hex SHA-256 of its 1952-byte
raw public key (FIPS 204 ``pkEncode``), which is what a DSSE ``keyid`` carries, exactly as for
Ed25519. The private key is kept as its 32-byte seed (FIPS 204 ``xi``), from which the whole key is
derived.

Signing uses pyca's default, FIPS 204's *hedged* variant with an empty context: each signature
mixes fresh randomness from the operating system, so signatures are not reproducible and cannot
take an ``rng``; keys can (:meth:`MLDSASigningKey.generate`).

This module does not read or write files, combine keys into sets (``crypto.keyset``), or know
about passphrases (``crypto.age`` holds keys at rest).
"""

from __future__ import annotations

import os

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.mldsa import MLDSA65PrivateKey, MLDSA65PublicKey

from crypto.errors import MalformedError, VerificationError
from crypto.keys import Rng, fingerprint_of

__all__ = [
    "MLDSA65_PUBLIC_KEY_SIZE",
    "MLDSA65_SEED_SIZE",
    "MLDSA65_SIGNATURE_SIZE",
    "MLDSASigningKey",
    "MLDSAVerifyKey",
]

MLDSA65_PUBLIC_KEY_SIZE = 1952  # bytes, FIPS 204 Table 2
MLDSA65_SIGNATURE_SIZE = 3309  # bytes, FIPS 204 Table 2
MLDSA65_SEED_SIZE = 32  # bytes, FIPS 204 Algorithm 1 (xi)


class MLDSAVerifyKey:
    """An ML-DSA-65 public key."""

    __slots__ = ("_key", "_raw")

    def __init__(self, raw: bytes) -> None:
        if len(raw) != MLDSA65_PUBLIC_KEY_SIZE:
            raise MalformedError(f"an ML-DSA-65 public key is {MLDSA65_PUBLIC_KEY_SIZE} bytes")
        try:
            self._key = MLDSA65PublicKey.from_public_bytes(bytes(raw))
        except ValueError as exc:
            raise MalformedError("not a valid ML-DSA-65 public key") from exc
        self._raw = bytes(raw)

    @property
    def raw(self) -> bytes:
        return self._raw

    @property
    def fingerprint(self) -> str:
        return fingerprint_of(self._raw)

    def verify(self, signature: bytes, message: bytes) -> None:
        """Raise :class:`VerificationError` unless ``signature`` is valid over ``message``."""
        if len(signature) != MLDSA65_SIGNATURE_SIZE:
            raise VerificationError("ML-DSA-65 signature does not verify")
        try:
            self._key.verify(signature, message)
        except InvalidSignature:
            raise VerificationError("ML-DSA-65 signature does not verify") from None

    def is_valid(self, signature: bytes, message: bytes) -> bool:
        try:
            self.verify(signature, message)
        except VerificationError:
            return False
        return True

    def __eq__(self, other: object) -> bool:
        return isinstance(other, MLDSAVerifyKey) and other._raw == self._raw

    def __hash__(self) -> int:
        return hash(self._raw)

    def __repr__(self) -> str:
        return f"MLDSAVerifyKey({self.fingerprint[:16]}…)"


class MLDSASigningKey:
    """An ML-DSA-65 private key. Never printed: its repr shows only the public fingerprint."""

    __slots__ = ("_key", "_public")

    def __init__(self, seed: bytes) -> None:
        if len(seed) != MLDSA65_SEED_SIZE:
            raise MalformedError(f"an ML-DSA-65 seed is {MLDSA65_SEED_SIZE} bytes")
        self._key = MLDSA65PrivateKey.from_seed_bytes(bytes(seed))
        self._public = MLDSAVerifyKey(self._key.public_key().public_bytes_raw())

    @classmethod
    def generate(cls, *, rng: Rng = os.urandom) -> MLDSASigningKey:
        return cls(rng(MLDSA65_SEED_SIZE))

    @property
    def seed(self) -> bytes:
        return self._key.private_bytes_raw()

    @property
    def public(self) -> MLDSAVerifyKey:
        return self._public

    @property
    def fingerprint(self) -> str:
        return self._public.fingerprint

    def sign(self, message: bytes) -> bytes:
        return self._key.sign(message)

    def __repr__(self) -> str:
        return f"MLDSASigningKey(public={self.fingerprint[:16]}…)"
