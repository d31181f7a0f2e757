"""age v1 (age-encryption.org/v1, c2sp.org/age) on pyca/cryptography primitives.

Recipients: X25519 (``age1...``), the hybrid post-quantum MLKEM768-X25519 (``age1pq1...``), and
scrypt passphrases (for key files). Encryption and decryption stream in constant memory; ASCII
armor is read (strictly) and written for small files. Files interoperate with the ``age`` CLI,
rage and pyrage; the C2SP CCTV vectors are the conformance suite.

This package does not sign anything, decide whom to encrypt to, or touch the filesystem: see
``crypto.sealed`` for the signed, sealed-artifact format built on it. Every failure to decrypt is a
:class:`crypto.errors.DecryptionError` subclass naming the kind of failure.
"""

from crypto.age._armor import ArmoredReader, armor
from crypto.age._base import Identity, Recipient, Rng
from crypto.age._core import (
    Decryptor,
    EncryptResult,
    decrypt,
    decrypt_with_passphrase,
    encrypt,
    encrypt_with_passphrase,
    parse_identity,
    parse_recipient,
    read_header,
)
from crypto.age._format import MAX_HEADER_BYTES, Header, Stanza
from crypto.age._hybrid import HybridIdentity, HybridRecipient
from crypto.age._io import Hasher, Reader, Writer
from crypto.age._scrypt import ScryptIdentity, ScryptRecipient
from crypto.age._stream import CHUNK_SIZE, TAG_SIZE
from crypto.age._x25519 import X25519Identity, X25519Recipient

__all__ = [
    "CHUNK_SIZE",
    "MAX_HEADER_BYTES",
    "ArmoredReader",
    "Decryptor",
    "EncryptResult",
    "Hasher",
    "Header",
    "HybridIdentity",
    "HybridRecipient",
    "Identity",
    "Reader",
    "Recipient",
    "Rng",
    "ScryptIdentity",
    "ScryptRecipient",
    "Stanza",
    "Writer",
    "X25519Identity",
    "X25519Recipient",
    "armor",
    "decrypt",
    "decrypt_with_passphrase",
    "encrypt",
    "encrypt_with_passphrase",
    "largest_file",
    "parse_identity",
    "parse_recipient",
    "read_header",
]


def largest_file(size: int) -> int:
    """The most bytes an age file of ``size`` plaintext bytes can take, as this package reads
    it: the largest header it accepts, the 16-byte nonce, the plaintext and a tag per STREAM
    chunk (an empty plaintext is one chunk). A bound for what a partner may send for a manifest
    of that size."""
    chunks = max(1, -(-size // CHUNK_SIZE))
    return MAX_HEADER_BYTES + 16 + size + TAG_SIZE * chunks
