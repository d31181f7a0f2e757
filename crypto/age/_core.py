"""age v1 encryption and decryption over streams: the header, the file key, then the payload.

Decryption follows c2sp.org/age in this order, and raises the matching error:

1. parse the header strictly (:class:`HeaderError`; :class:`ArmorError` for bad armor);
2. reject an scrypt stanza that is not alone (:class:`HeaderError`);
3. offer the stanzas to each identity in turn; a malformed stanza of a known type is a
   :class:`HeaderError`, and no identity opening any stanza is :class:`NoIdentityMatchError`;
4. check the header MAC with the file key (:class:`HeaderMacError`);
5. read the 16-byte payload nonce (:class:`HeaderError` if missing);
6. decrypt the STREAM payload (:class:`PayloadError`).

No plaintext is written before step 5 has succeeded. The payload is then written in blocks of 16
chunks (1 MiB), each only after all its chunks authenticated: a file of up to 1 MiB releases
nothing on failure, but a larger one may release earlier blocks before a later one fails (that is
what streaming in constant memory means). Callers that must release nothing write to a temporary
file and rename it only on success (the shell's ``service.files.open_sealed_file``).
"""

from __future__ import annotations

import functools
import hmac
import io
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from crypto.age._armor import ArmoredReader, looks_armored
from crypto.age._base import Identity, Recipient, Rng
from crypto.age._format import Header, Stanza, header_mac, marshal_header, parse_header
from crypto.age._hybrid import HybridIdentity, HybridRecipient
from crypto.age._io import Hasher, Reader, Source, Writer
from crypto.age._primitives import FILE_KEY_SIZE, hkdf_sha256
from crypto.age._scrypt import (
    DEFAULT_MAX_WORK_FACTOR,
    DEFAULT_WORK_FACTOR,
    ScryptIdentity,
    ScryptRecipient,
)
from crypto.age._scrypt import STANZA_TYPE as SCRYPT_TYPE
from crypto.age._stream import decrypt_payload, encrypt_payload
from crypto.age._x25519 import X25519Identity, X25519Recipient
from crypto.errors import (
    HeaderError,
    HeaderMacError,
    KeyLoadError,
    MalformedError,
    NoIdentityMatchError,
    RecipientsError,
)

__all__ = [
    "Decryptor",
    "EncryptResult",
    "decrypt",
    "decrypt_with_passphrase",
    "encrypt",
    "encrypt_with_passphrase",
    "parse_identity",
    "parse_recipient",
    "read_header",
]

NONCE_SIZE = 16


@dataclass(frozen=True)
class EncryptResult:
    """What :func:`encrypt` wrote: the header (through the MAC line) and the plaintext length."""

    header: bytes
    plaintext_size: int


def _check_recipients(recipients: Sequence[Recipient]) -> None:
    if not recipients:
        raise RecipientsError("encrypting needs at least one recipient")
    labels = {r.mix_label for r in recipients}
    if "passphrase" in labels and len(recipients) > 1:
        raise RecipientsError("a passphrase (scrypt) recipient must be the only recipient")
    if len(labels) > 1:
        raise RecipientsError(
            "post-quantum and classic recipients cannot be mixed: the file would be only as "
            "strong as its classic recipients"
        )


def encrypt(
    reader: Reader,
    writer: Writer,
    recipients: Iterable[Recipient],
    *,
    rng: Rng = os.urandom,
    hasher: Hasher | None = None,
) -> EncryptResult:
    """Encrypt all of ``reader`` to ``writer`` as a binary age v1 file, in constant memory.

    ``hasher`` (for example ``hashlib.sha256()``), when given, is updated with every plaintext
    byte in order, on a helper thread while encryption proceeds.
    """
    recipient_list = list(recipients)
    _check_recipients(recipient_list)
    file_key = rng(FILE_KEY_SIZE)
    if len(file_key) != FILE_KEY_SIZE:
        raise ValueError("rng returned the wrong number of bytes")
    stanzas = [stanza for r in recipient_list for stanza in r.wrap(file_key, rng=rng)]
    header = marshal_header(stanzas, file_key)
    nonce = rng(NONCE_SIZE)
    writer.write(header + nonce)
    key = hkdf_sha256(file_key, nonce, b"payload")
    size = encrypt_payload(Source(reader), writer, key, hasher)
    return EncryptResult(header=header, plaintext_size=size)


def _source(reader: Reader, armor: bool | None) -> Source:
    src = Source(reader)
    if armor is None:
        armor = looks_armored(src)
    return Source(ArmoredReader(src)) if armor else src


def read_header(reader: Reader, *, armor: bool | None = None) -> Header:
    """Parse the header of an age file without decrypting anything.

    ``armor``: ``True`` for an armored file, ``False`` for binary, ``None`` to detect it.
    """
    return parse_header(_source(reader, armor))


class Decryptor:
    """An age file read in steps, so that a caller can vet the header before any key is used.

    :meth:`parse` reads the header only (step 1). :attr:`header` is then *unauthenticated*: a
    caller may compare its digest with a signed one before going on. :meth:`unlock` does steps 2
    to 5 (see the module docstring), after which the header is authenticated by the file key, and
    :meth:`decrypt_to` streams the plaintext out. :meth:`open` is :meth:`parse` plus
    :meth:`unlock`.
    """

    __slots__ = ("_key", "_src", "_state", "header")

    def __init__(self, src: Source, header: Header) -> None:
        self._src = src
        self._key = b""
        self._state = "parsed"
        self.header = header

    @classmethod
    def parse(cls, reader: Reader, *, armor: bool | None = None) -> Decryptor:
        src = _source(reader, armor)
        return cls(src, parse_header(src))

    @classmethod
    def open(
        cls, reader: Reader, identities: Iterable[Identity], *, armor: bool | None = None
    ) -> Decryptor:
        decryptor = cls.parse(reader, armor=armor)
        decryptor.unlock(identities)
        return decryptor

    @property
    def unlocked(self) -> bool:
        return self._state != "parsed"

    def unlock(self, identities: Iterable[Identity], *, first: Sequence[int] = ()) -> None:
        """Unwrap the file key with the first identity that can, and authenticate the header.

        ``first``: indexes of the stanzas most likely to be ours, offered to the identities
        before the others (age stanzas are anonymous, so a reader that knows its place among
        the recipients saves trying the others'). Only the order of the attempts changes: every
        stanza is still offered, and the header MAC still decides.
        """
        if self._state != "parsed":
            raise RuntimeError("unlock was already called")
        identity_list = list(identities)
        if not identity_list:
            raise ValueError("decrypting needs at least one identity")
        self._state = "failed"
        header = self.header
        if any(s.type == SCRYPT_TYPE for s in header.stanzas) and len(header.stanzas) != 1:
            raise HeaderError("an scrypt stanza must be the only stanza in the header")
        stanzas: Sequence[Stanza] = header.stanzas
        if first:
            lead = [i for i in dict.fromkeys(first) if 0 <= i < len(stanzas)]
            chosen = set(lead)
            stanzas = [stanzas[i] for i in lead] + [
                s for i, s in enumerate(stanzas) if i not in chosen
            ]
        file_key = None
        for identity in identity_list:
            file_key = identity.unwrap(stanzas)
            if file_key is not None:
                break
        if file_key is None:
            raise NoIdentityMatchError("no identity matched any of the file's recipients")
        if len(file_key) != FILE_KEY_SIZE:
            raise HeaderError("the unwrapped file key is not 16 bytes")
        if not hmac.compare_digest(header_mac(file_key, header.mac_input), header.mac):
            raise HeaderMacError("the age header MAC does not verify")
        nonce = self._src.read(NONCE_SIZE)
        if len(nonce) != NONCE_SIZE:
            raise HeaderError("the file ends before the payload nonce")
        self._key = hkdf_sha256(file_key, nonce, b"payload")
        self._state = "unlocked"

    def decrypt_to(self, writer: Writer, *, hasher: Hasher | None = None) -> int:
        """Stream the plaintext to ``writer``; returns its length. Callable once, after unlock."""
        if self._state != "unlocked":
            raise RuntimeError("decrypt_to needs a successful unlock, and runs once")
        self._state = "done"
        return decrypt_payload(self._src, writer, self._key, hasher)


def decrypt(
    reader: Reader,
    writer: Writer,
    identities: Iterable[Identity],
    *,
    armor: bool | None = None,
    hasher: Hasher | None = None,
) -> Header:
    """Decrypt an age file (binary, or armored when detected) from ``reader`` to ``writer``.

    Returns the authenticated header. Raises a :class:`~crypto.errors.DecryptionError`.
    """
    decryptor = Decryptor.open(reader, identities, armor=armor)
    decryptor.decrypt_to(writer, hasher=hasher)
    return decryptor.header


def encrypt_with_passphrase(
    data: bytes,
    passphrase: str,
    *,
    work_factor: int = DEFAULT_WORK_FACTOR,
    rng: Rng = os.urandom,
) -> bytes:
    """Encrypt small ``data`` (a key file) to a passphrase: a binary age file, scrypt recipient."""
    out = io.BytesIO()
    encrypt(io.BytesIO(data), out, [ScryptRecipient(passphrase, work_factor=work_factor)], rng=rng)
    return out.getvalue()


def decrypt_with_passphrase(
    data: bytes, passphrase: str, *, max_work_factor: int = DEFAULT_MAX_WORK_FACTOR
) -> bytes:
    """Decrypt a passphrase-encrypted age file (binary or armored).

    Raises :class:`~crypto.errors.KeyLoadError` when the passphrase does not open it, and a
    :class:`~crypto.errors.DecryptionError` when the file is malformed or tampered with.
    """
    out = io.BytesIO()
    identity = ScryptIdentity(passphrase, max_work_factor=max_work_factor)
    try:
        decrypt(io.BytesIO(data), out, [identity])
    except NoIdentityMatchError:
        raise KeyLoadError("wrong passphrase, or the file is not passphrase-encrypted") from None
    return out.getvalue()


@functools.lru_cache(maxsize=1024)
def parse_recipient(text: str) -> X25519Recipient | HybridRecipient:
    """Parse an ``age1...`` (X25519) or ``age1pq1...`` (hybrid) recipient string."""
    text = text.strip()
    if text.startswith("age1pq1"):
        return HybridRecipient.from_string(text)
    if text.startswith("age1"):
        return X25519Recipient.from_string(text)
    raise MalformedError("not an age recipient (expected age1... or age1pq1...)")


def parse_identity(text: str) -> X25519Identity | HybridIdentity:
    """Parse an ``AGE-SECRET-KEY-1...`` or ``AGE-SECRET-KEY-PQ-1...`` identity string."""
    text = text.strip()
    if text.startswith("AGE-SECRET-KEY-PQ-1"):
        return HybridIdentity.from_string(text)
    if text.startswith("AGE-SECRET-KEY-1"):
        return X25519Identity.from_string(text)
    raise MalformedError("not an age identity (expected AGE-SECRET-KEY-1...)")
