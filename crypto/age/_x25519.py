"""The X25519 recipient type (c2sp.org/age "The X25519 recipient type").

An identity is 32 random bytes, Bech32-encoded with HRP ``AGE-SECRET-KEY-``; its recipient is the
X25519 public key, Bech32-encoded with HRP ``age``. A stanza is ``-> X25519 <ephemeral share>``
whose body is the file key sealed under HKDF(shared secret, share || recipient,
"age-encryption.org/v1/X25519").
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from crypto.age import _bech32
from crypto.age._base import Identity, Recipient, Rng
from crypto.age._format import Stanza, b64decode, b64encode
from crypto.age._primitives import (
    FILE_KEY_SIZE,
    TAG_SIZE,
    hkdf_sha256,
    open_file_key,
    seal_file_key,
)
from crypto.errors import HeaderError, MalformedError

__all__ = ["X25519Identity", "X25519Recipient"]

STANZA_TYPE = "X25519"
RECIPIENT_HRP = "age"
IDENTITY_HRP = "age-secret-key-"
_INFO = b"age-encryption.org/v1/X25519"
_KEY_SIZE = 32


def _exchange(private: X25519PrivateKey, public: bytes) -> bytes | None:
    """X25519, or ``None`` when the shared secret is all zeros (a low-order point)."""
    try:
        shared = private.exchange(X25519PublicKey.from_public_bytes(public))
    except ValueError:
        return None
    return None if shared == bytes(32) else shared


class X25519Recipient(Recipient):
    """An ``age1...`` recipient."""

    __slots__ = ("_public",)
    mix_label = "classic"

    def __init__(self, public_key: bytes) -> None:
        if len(public_key) != _KEY_SIZE:
            raise MalformedError("an X25519 recipient is 32 bytes")
        self._public = bytes(public_key)

    @classmethod
    def from_string(cls, text: str) -> X25519Recipient:
        try:
            hrp, data = _bech32.decode(text)
        except _bech32.Bech32Error as exc:
            raise MalformedError(f"not an age X25519 recipient: {exc}") from None
        if hrp != RECIPIENT_HRP or text != text.lower():
            raise MalformedError("not an age X25519 recipient (expected age1...)")
        return cls(data)

    @property
    def public_key(self) -> bytes:
        return self._public

    def to_string(self) -> str:
        return _bech32.encode(RECIPIENT_HRP, self._public)

    def wrap(self, file_key: bytes, *, rng: Rng = os.urandom) -> list[Stanza]:
        ephemeral = X25519PrivateKey.from_private_bytes(rng(32))
        share = ephemeral.public_key().public_bytes_raw()
        shared = _exchange(ephemeral, self._public)
        if shared is None:
            raise MalformedError("the X25519 recipient is a low-order point")
        wrap_key = hkdf_sha256(shared, share + self._public, _INFO)
        return [Stanza(STANZA_TYPE, (b64encode(share),), seal_file_key(wrap_key, file_key))]

    def __str__(self) -> str:
        return self.to_string()

    def __repr__(self) -> str:
        return f"X25519Recipient({self.to_string()!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, X25519Recipient) and other._public == self._public

    def __hash__(self) -> int:
        return hash((STANZA_TYPE, self._public))


class X25519Identity(Identity):
    """An ``AGE-SECRET-KEY-1...`` identity. Its repr shows only the public recipient."""

    __slots__ = ("_key", "_recipient")

    def __init__(self, secret: bytes) -> None:
        if len(secret) != _KEY_SIZE:
            raise MalformedError("an X25519 identity is 32 bytes")
        self._key = X25519PrivateKey.from_private_bytes(secret)
        self._recipient = X25519Recipient(self._key.public_key().public_bytes_raw())

    @classmethod
    def generate(cls, *, rng: Rng = os.urandom) -> X25519Identity:
        return cls(rng(_KEY_SIZE))

    @classmethod
    def from_string(cls, text: str) -> X25519Identity:
        try:
            hrp, data = _bech32.decode(text)
        except _bech32.Bech32Error as exc:
            raise MalformedError(f"not an age X25519 identity: {exc}") from None
        if hrp != IDENTITY_HRP or text != text.upper():
            raise MalformedError("not an age X25519 identity (expected AGE-SECRET-KEY-1...)")
        return cls(data)

    def to_string(self) -> str:
        return _bech32.encode(IDENTITY_HRP, self.secret).upper()

    @property
    def secret(self) -> bytes:
        return self._key.private_bytes_raw()

    @property
    def recipient(self) -> X25519Recipient:
        return self._recipient

    def unwrap(self, stanzas: Sequence[Stanza]) -> bytes | None:
        for stanza in stanzas:
            if stanza.type != STANZA_TYPE:
                continue
            if len(stanza.args) != 1:
                raise HeaderError("invalid X25519 stanza: wrong number of arguments")
            share = b64decode(stanza.args[0])
            if len(share) != _KEY_SIZE:
                raise HeaderError("invalid X25519 stanza: the share is not 32 bytes")
            if len(stanza.body) != FILE_KEY_SIZE + TAG_SIZE:
                raise HeaderError("invalid X25519 stanza: the body is not 32 bytes")
            shared = _exchange(self._key, share)
            if shared is None:
                raise HeaderError("invalid X25519 stanza: low-order share")
            wrap_key = hkdf_sha256(shared, share + self._recipient.public_key, _INFO)
            file_key = open_file_key(wrap_key, stanza.body)
            if file_key is not None:
                return file_key
        return None

    def __repr__(self) -> str:
        return f"X25519Identity(recipient={self._recipient.to_string()!r})"
