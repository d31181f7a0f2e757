"""The age v1 header: canonical base64, recipient stanzas, parsing and serialisation.

Implements c2sp.org/age "Header" and its ABNF::

    header    = v1-line 1*stanza end
    v1-line   = "age-encryption.org/v1" LF
    stanza    = arg-line *full-line final-line      ; body wrapped at 64 columns
    end       = "--- " 43base64char LF

Parsing is strict: canonical unpadded base64, no CR, every stanza ends with a line shorter than
64 columns. Every failure is a :class:`~crypto.errors.HeaderError`. This module does not unwrap
file keys and does not check the MAC (see ``_core``); it does bound the header's size.
"""

from __future__ import annotations

import binascii
import hashlib
import hmac
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from crypto.age._primitives import hkdf_sha256
from crypto.errors import HeaderError

__all__ = [
    "MAX_HEADER_BYTES",
    "Header",
    "Stanza",
    "b64decode",
    "b64encode",
    "header_mac",
    "marshal_header",
    "parse_header",
]

INTRO = b"age-encryption.org/v1\n"
VERSION_PREFIX = b"age-encryption.org/"
STANZA_PREFIX = b"->"
FOOTER_PREFIX = b"---"
COLUMNS_PER_LINE = 64
BYTES_PER_LINE = COLUMNS_PER_LINE // 4 * 3  # 48
MAC_SIZE = 32
MAX_HEADER_BYTES = 1 << 20  # bytes; a header with a few hundred hybrid stanzas still fits

_B64_ALPHABET = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")


def b64encode(data: bytes) -> str:
    """Standard base64 without padding (RFC 4648 section 4, "raw")."""
    return binascii.b2a_base64(data, newline=False).rstrip(b"=").decode("ascii")


def b64decode(text: str | bytes) -> bytes:
    """Decode canonical unpadded base64, or raise :class:`HeaderError`."""
    raw = text.encode("ascii", "replace") if isinstance(text, str) else bytes(text)
    if len(raw) % 4 == 1 or not _B64_ALPHABET.issuperset(raw):
        raise HeaderError("invalid base64 in the age header")
    try:
        out = binascii.a2b_base64(raw + b"=" * (-len(raw) % 4), strict_mode=True)
    except binascii.Error:
        raise HeaderError("invalid base64 in the age header") from None
    # RFC 4648 3.5: the unused bits of the last character must be zero.
    if binascii.b2a_base64(out, newline=False).rstrip(b"=") != raw:
        raise HeaderError("non-canonical base64 in the age header")
    return out


@dataclass(frozen=True)
class Stanza:
    """One recipient stanza: its type (first argument), the other arguments, and the body."""

    type: str
    args: tuple[str, ...]
    body: bytes

    def marshal(self) -> bytes:
        for arg in (self.type, *self.args):
            if not _is_valid_argument(arg.encode("ascii", "replace")):
                raise ValueError("a stanza argument is a non-empty string of printable ASCII")
        out = bytearray(b"-> " + " ".join((self.type, *self.args)).encode("ascii") + b"\n")
        body = b64encode(self.body).encode("ascii")
        for i in range(0, len(body), COLUMNS_PER_LINE):
            out += body[i : i + COLUMNS_PER_LINE] + b"\n"
        if len(body) % COLUMNS_PER_LINE == 0:
            out += b"\n"  # the body always ends with a short (here: empty) line
        return bytes(out)


@dataclass(frozen=True)
class Header:
    """A parsed age v1 header.

    ``raw`` is the exact header bytes as read, from the version line up to and including the
    newline that ends the MAC line; its SHA-256 is what a sealed manifest binds (``sha256``).
    """

    stanzas: tuple[Stanza, ...]
    mac: bytes
    raw: bytes

    @property
    def mac_input(self) -> bytes:
        """The bytes the header MAC covers: everything up to and including ``---``."""
        return self.raw[: self.raw.rindex(b"\n---") + 4]

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.raw).hexdigest()


def header_mac(file_key: bytes, mac_input: bytes) -> bytes:
    """c2sp.org/age Header MAC: HMAC-SHA-256 keyed with HKDF(file key, "", "header")."""
    return hmac.digest(hkdf_sha256(file_key, b"", b"header"), mac_input, "sha256")


def marshal_header(stanzas: Sequence[Stanza], file_key: bytes) -> bytes:
    """Serialise a v1 header with its MAC."""
    out = bytearray(INTRO)
    for stanza in stanzas:
        out += stanza.marshal()
    out += FOOTER_PREFIX
    mac = header_mac(file_key, bytes(out))
    out += b" " + b64encode(mac).encode("ascii") + b"\n"
    return bytes(out)


class LineSource(Protocol):
    """What the parser needs from its input: whole lines, bounded in length."""

    def readline(self, limit: int) -> bytes: ...
    def peek(self, n: int) -> bytes: ...


_ARGUMENT = re.compile(rb"[\x21-\x7e]+")  # age: 1*VCHAR (a hybrid stanza's is ~1,500 bytes)


def _is_valid_argument(arg: bytes) -> bool:
    return _ARGUMENT.fullmatch(arg) is not None


def parse_header(src: LineSource) -> Header:
    """Read one header from ``src``; leave ``src`` at the first payload byte."""
    raw = bytearray()

    def line() -> bytes:
        text = src.readline(MAX_HEADER_BYTES - len(raw) + 1)
        raw.extend(text)
        if len(raw) > MAX_HEADER_BYTES:
            raise HeaderError("the age header is too large")
        if not text.endswith(b"\n"):
            raise HeaderError("the age header is truncated")
        return text[:-1]

    if not src.peek(1):
        raise HeaderError("the file is empty")
    first = line()
    if first + b"\n" != INTRO:
        if first.startswith(VERSION_PREFIX):
            raise HeaderError("unsupported age format version, or a malformed version line")
        raise HeaderError("not an age file (unexpected first line)")

    stanzas: list[Stanza] = []
    while True:
        if src.peek(len(FOOTER_PREFIX)) == FOOTER_PREFIX:
            prefix, *args = line().split(b" ")
            if prefix != FOOTER_PREFIX or len(args) != 1:
                raise HeaderError("malformed MAC line in the age header")
            mac = b64decode(args[0])
            if len(mac) != MAC_SIZE:
                raise HeaderError("malformed MAC line in the age header")
            break
        stanzas.append(_parse_stanza(line))
    if not stanzas:
        raise HeaderError("the age header has no recipient stanza")
    return Header(tuple(stanzas), mac, bytes(raw))


def _parse_stanza(line: _LineFn) -> Stanza:
    prefix, *args = line().split(b" ")
    if prefix != STANZA_PREFIX or not args or not all(_is_valid_argument(a) for a in args):
        raise HeaderError("malformed recipient stanza in the age header")
    body = bytearray()
    while True:
        text = line()
        if text.startswith((STANZA_PREFIX, FOOTER_PREFIX)):
            raise HeaderError("a recipient stanza ended without a short final line")
        chunk = b64decode(text)
        if len(chunk) > BYTES_PER_LINE:
            raise HeaderError("a recipient stanza body line is longer than 64 columns")
        body += chunk
        if len(chunk) < BYTES_PER_LINE:
            break
    decoded = [a.decode("ascii") for a in args]
    return Stanza(decoded[0], tuple(decoded[1:]), bytes(body))


class _LineFn(Protocol):
    def __call__(self) -> bytes: ...
