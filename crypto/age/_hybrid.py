"""The hybrid post-quantum recipient type, MLKEM768-X25519 (X-Wing), as age v1.3 specifies it.

c2sp.org/age "The MLKEM768-X25519 (i.e. X-Wing) hybrid post-quantum recipient type":

* an identity is a 32-byte seed, Bech32-encoded with HRP ``AGE-SECRET-KEY-PQ-``;
* the recipient is the HPKE MLKEM768-X25519 public key (ML-KEM-768 encapsulation key, 1184
  bytes, then the X25519 public key, 32 bytes), Bech32-encoded with HRP ``age1pq``;
* a stanza is ``-> mlkem768x25519 <enc>`` (enc is 1120 bytes) whose 32-byte body is the HPKE
  SealBase ciphertext of the file key, with KDF HKDF-SHA256, AEAD ChaCha20Poly1305,
  info "age-encryption.org/mlkem768x25519" and empty aad.

The seed expands as in X-Wing / draft-ietf-hpke-pq: SHAKE256(seed, 96) gives the ML-KEM-768 seed
(d || z, 64 bytes) and the X25519 private key (32 bytes). HPKE itself is pyca's
``hpke.KEM.MLKEM768_X25519``.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric import mlkem
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from crypto.age import _bech32
from crypto.age._base import Identity, Recipient, Rng
from crypto.age._format import Stanza, b64decode, b64encode
from crypto.age._primitives import FILE_KEY_SIZE, TAG_SIZE
from crypto.errors import HeaderError, MalformedError

__all__ = ["HybridIdentity", "HybridRecipient"]

STANZA_TYPE = "mlkem768x25519"
RECIPIENT_HRP = "age1pq"
IDENTITY_HRP = "age-secret-key-pq-"
_INFO = b"age-encryption.org/mlkem768x25519"
_SEED_SIZE = 32
_MLKEM_PUBLIC_SIZE = 1184
_MLKEM_CIPHERTEXT_SIZE = 1088
_X25519_SIZE = 32
_PUBLIC_SIZE = _MLKEM_PUBLIC_SIZE + _X25519_SIZE  # 1216
_ENC_SIZE = _MLKEM_CIPHERTEXT_SIZE + _X25519_SIZE  # 1120
_SUITE = hpke.Suite(hpke.KEM.MLKEM768_X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.CHACHA20_POLY1305)


class HybridRecipient(Recipient):
    """An ``age1pq1...`` recipient (post-quantum hybrid)."""

    __slots__ = ("_key", "_public")
    mix_label = "postquantum"

    def __init__(self, public_key: bytes) -> None:
        if len(public_key) != _PUBLIC_SIZE:
            raise MalformedError("an MLKEM768-X25519 recipient is 1216 bytes")
        try:
            mlkem_key = mlkem.MLKEM768PublicKey.from_public_bytes(public_key[:_MLKEM_PUBLIC_SIZE])
            x25519_key = X25519PublicKey.from_public_bytes(public_key[_MLKEM_PUBLIC_SIZE:])
        except ValueError:
            raise MalformedError("not a valid MLKEM768-X25519 public key") from None
        self._key = hpke.MLKEM768X25519PublicKey(mlkem_key, x25519_key)
        self._public = bytes(public_key)

    @classmethod
    def from_string(cls, text: str) -> HybridRecipient:
        try:
            hrp, data = _bech32.decode(text)
        except _bech32.Bech32Error as exc:
            raise MalformedError(f"not an age hybrid recipient: {exc}") from None
        if hrp != RECIPIENT_HRP or text != text.lower():
            raise MalformedError("not an age hybrid recipient (expected age1pq1...)")
        return cls(data)

    @property
    def public_key(self) -> bytes:
        return self._public

    def to_string(self) -> str:
        return _bech32.encode(RECIPIENT_HRP, self._public)

    def wrap(self, file_key: bytes, *, rng: Rng = os.urandom) -> list[Stanza]:
        # pyca draws the HPKE encapsulation randomness itself; ``rng`` is not used here.
        sealed = _SUITE.encrypt(file_key, self._key, info=_INFO)
        enc, body = sealed[:_ENC_SIZE], sealed[_ENC_SIZE:]
        return [Stanza(STANZA_TYPE, (b64encode(enc),), body)]

    def __str__(self) -> str:
        return self.to_string()

    def __repr__(self) -> str:
        text = self.to_string()
        return f"HybridRecipient('{text[:16]}…{text[-8:]}')"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, HybridRecipient) and other._public == self._public

    def __hash__(self) -> int:
        return hash((STANZA_TYPE, self._public))


class HybridIdentity(Identity):
    """An ``AGE-SECRET-KEY-PQ-1...`` identity. Its repr never shows the seed."""

    __slots__ = ("_key", "_recipient", "_seed", "_x25519")

    def __init__(self, seed: bytes) -> None:
        if len(seed) != _SEED_SIZE:
            raise MalformedError("an MLKEM768-X25519 identity is a 32-byte seed")
        expanded = hashlib.shake_256(seed).digest(96)
        mlkem_key = mlkem.MLKEM768PrivateKey.from_seed_bytes(expanded[:64])
        self._x25519 = X25519PrivateKey.from_private_bytes(expanded[64:])
        self._key = hpke.MLKEM768X25519PrivateKey(mlkem_key, self._x25519)
        self._seed = bytes(seed)
        public = (
            mlkem_key.public_key().public_bytes_raw() + self._x25519.public_key().public_bytes_raw()
        )
        self._recipient = HybridRecipient(public)

    @classmethod
    def generate(cls, *, rng: Rng = os.urandom) -> HybridIdentity:
        return cls(rng(_SEED_SIZE))

    @classmethod
    def from_string(cls, text: str) -> HybridIdentity:
        try:
            hrp, data = _bech32.decode(text)
        except _bech32.Bech32Error as exc:
            raise MalformedError(f"not an age hybrid identity: {exc}") from None
        if hrp != IDENTITY_HRP or text != text.upper():
            raise MalformedError("not an age hybrid identity (expected AGE-SECRET-KEY-PQ-1...)")
        return cls(data)

    def to_string(self) -> str:
        return _bech32.encode(IDENTITY_HRP, self._seed).upper()

    @property
    def seed(self) -> bytes:
        return self._seed

    @property
    def recipient(self) -> HybridRecipient:
        return self._recipient

    def unwrap(self, stanzas: Sequence[Stanza]) -> bytes | None:
        for stanza in stanzas:
            if stanza.type != STANZA_TYPE:
                continue
            if len(stanza.args) != 1:
                raise HeaderError("invalid mlkem768x25519 stanza: wrong number of arguments")
            enc = b64decode(stanza.args[0])
            if len(enc) != _ENC_SIZE:
                raise HeaderError("invalid mlkem768x25519 stanza: enc is not 1120 bytes")
            if len(stanza.body) != FILE_KEY_SIZE + TAG_SIZE:
                raise HeaderError("invalid mlkem768x25519 stanza: the body is not 32 bytes")
            # The X25519 half must not be a low-order point (an all-zero shared secret).
            try:
                shared = self._x25519.exchange(X25519PublicKey.from_public_bytes(enc[-32:]))
            except ValueError:
                shared = bytes(32)
            if shared == bytes(32):
                raise HeaderError("invalid mlkem768x25519 stanza: low-order X25519 share")
            try:
                return _SUITE.decrypt(enc + stanza.body, self._key, info=_INFO)
            except InvalidTag:
                continue
        return None

    def __repr__(self) -> str:
        return f"HybridIdentity(recipient={self._recipient!r})"
