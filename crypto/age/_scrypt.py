"""The scrypt (passphrase) recipient type (c2sp.org/age "The scrypt recipient type").

A stanza is ``-> scrypt <salt> <log2 N>``; the wrap key is scrypt(N, r=8, p=1, dkLen=32,
S="age-encryption.org/v1/scrypt" || salt, P=passphrase). An scrypt stanza must be the only stanza in
its header (checked in ``_core``). Decryption refuses work factors above a caller-set maximum, so
that a hostile file cannot make the reader spend minutes and gigabytes.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence

from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from crypto.age._base import Identity, Recipient, Rng
from crypto.age._format import Stanza, b64decode, b64encode
from crypto.age._primitives import FILE_KEY_SIZE, TAG_SIZE, open_file_key, seal_file_key
from crypto.errors import HeaderError

__all__ = ["DEFAULT_MAX_WORK_FACTOR", "DEFAULT_WORK_FACTOR", "ScryptIdentity", "ScryptRecipient"]

STANZA_TYPE = "scrypt"
DEFAULT_WORK_FACTOR = 18  # log2(N); about a second and 256 MiB, as age uses
DEFAULT_MAX_WORK_FACTOR = 22  # log2(N); the most a reader agrees to compute (4 GiB at r=8)
_LIMIT_WORK_FACTOR = 30  # log2(N); nothing above this is ever accepted
_SALT_LABEL = b"age-encryption.org/v1/scrypt"
_SALT_SIZE = 16
_WORK_FACTOR_RE = re.compile(r"[1-9][0-9]*")


def _wrap_key(passphrase: bytes, salt: bytes, work_factor: int) -> bytes:
    kdf = Scrypt(salt=_SALT_LABEL + salt, length=32, n=1 << work_factor, r=8, p=1)
    return kdf.derive(passphrase)


def _check_work_factor(work_factor: int, limit: int = _LIMIT_WORK_FACTOR) -> int:
    if isinstance(work_factor, bool) or not isinstance(work_factor, int):
        raise TypeError("the scrypt work factor is an int (log2 N)")
    if not 1 <= work_factor <= limit:
        raise ValueError(f"the scrypt work factor (log2 N) must be between 1 and {limit}")
    return work_factor


class ScryptRecipient(Recipient):
    """Encrypt to a passphrase. Must be the only recipient of a file."""

    __slots__ = ("_passphrase", "_work_factor")
    mix_label = "passphrase"

    def __init__(self, passphrase: str, *, work_factor: int = DEFAULT_WORK_FACTOR) -> None:
        if not passphrase:
            raise ValueError("the passphrase is empty")
        self._passphrase = passphrase.encode("utf-8")
        self._work_factor = _check_work_factor(work_factor)

    def wrap(self, file_key: bytes, *, rng: Rng = os.urandom) -> list[Stanza]:
        salt = rng(_SALT_SIZE)
        body = seal_file_key(_wrap_key(self._passphrase, salt, self._work_factor), file_key)
        return [Stanza(STANZA_TYPE, (b64encode(salt), str(self._work_factor)), body)]

    def __repr__(self) -> str:
        return f"ScryptRecipient(work_factor={self._work_factor})"


class ScryptIdentity(Identity):
    """Decrypt with a passphrase, computing scrypt for work factors up to ``max_work_factor``."""

    __slots__ = ("_max_work_factor", "_passphrase")

    def __init__(self, passphrase: str, *, max_work_factor: int = DEFAULT_MAX_WORK_FACTOR) -> None:
        self._passphrase = passphrase.encode("utf-8")
        self._max_work_factor = _check_work_factor(max_work_factor)

    def unwrap(self, stanzas: Sequence[Stanza]) -> bytes | None:
        for stanza in stanzas:
            if stanza.type != STANZA_TYPE:
                continue
            if len(stanza.args) != 2:
                raise HeaderError("invalid scrypt stanza: wrong number of arguments")
            salt = b64decode(stanza.args[0])
            if len(salt) != _SALT_SIZE:
                raise HeaderError("invalid scrypt stanza: the salt is not 16 bytes")
            text = stanza.args[1]
            if not _WORK_FACTOR_RE.fullmatch(text) or len(text) > 2:
                raise HeaderError("invalid scrypt stanza: malformed work factor")
            work_factor = int(text)
            if work_factor > self._max_work_factor:
                raise HeaderError(
                    f"scrypt work factor {work_factor} is above the limit {self._max_work_factor}"
                )
            if len(stanza.body) != FILE_KEY_SIZE + TAG_SIZE:
                raise HeaderError("invalid scrypt stanza: the body is not 32 bytes")
            file_key = open_file_key(_wrap_key(self._passphrase, salt, work_factor), stanza.body)
            if file_key is not None:
                return file_key
        return None

    def __repr__(self) -> str:
        return f"ScryptIdentity(max_work_factor={self._max_work_factor})"
