"""ASCII armor for age files: strict PEM (RFC 7468 section 3) with label "AGE ENCRYPTED FILE".

Reading is streaming and strict, as c2sp.org/age "ASCII armor" asks: canonical padded base64 in
lines of exactly 64 columns except the last, no PEM headers, no empty lines, LF or CRLF line ends,
and nothing but (bounded) whitespace before and after the block. Every failure is an
:class:`~crypto.errors.ArmorError`. Writing is :func:`armor`, for small files (keys).
"""

from __future__ import annotations

import binascii

from crypto.age._io import Reader, Source
from crypto.errors import ArmorError

__all__ = ["BEGIN", "END", "ArmoredReader", "armor", "looks_armored"]

BEGIN = b"-----BEGIN AGE ENCRYPTED FILE-----"
END = b"-----END AGE ENCRYPTED FILE-----"
COLUMNS = 64
BYTES_PER_LINE = COLUMNS // 4 * 3
MAX_WHITESPACE = 1024  # bytes of whitespace accepted before and after the block
_MAX_LINE = 4096  # bytes; any longer line is rejected before it is decoded


def armor(data: bytes) -> bytes:
    """The armored form of a (small) binary age file."""
    encoded = binascii.b2a_base64(data, newline=False)
    lines = [encoded[i : i + COLUMNS] for i in range(0, len(encoded), COLUMNS)]
    return b"\n".join([BEGIN, *lines, END]) + b"\n"


def looks_armored(src: Source) -> bool:
    """Whether ``src`` starts (after whitespace) with the armor's first line."""
    head = src.peek(MAX_WHITESPACE + len(BEGIN))
    return head.lstrip().startswith(b"-----BEGIN")


class ArmoredReader:
    """A reader of the binary age file inside an armored one."""

    __slots__ = ("_done", "_pending", "_src", "_started")

    def __init__(self, raw: Reader | Source) -> None:
        self._src = raw if isinstance(raw, Source) else Source(raw)
        self._started = False
        self._done = False
        self._pending = bytearray()

    def _line(self) -> bytes:
        line = self._src.readline(_MAX_LINE)
        if not line:
            raise ArmorError("invalid armor: unexpected end of file")
        if len(line) == _MAX_LINE and not line.endswith(b"\n"):
            raise ArmorError("invalid armor: line too long")
        return line.removesuffix(b"\n").removesuffix(b"\r")

    def _drain_trailing(self) -> None:
        rest = self._src.read(MAX_WHITESPACE)
        if rest.strip():
            raise ArmorError("invalid armor: data after the end line")
        if len(rest) == MAX_WHITESPACE:
            raise ArmorError("invalid armor: too much trailing whitespace")
        self._done = True

    def _start(self) -> None:
        skipped = 0
        while True:
            line = self._line()
            if line.strip():
                break
            skipped += len(line) + 1
            if skipped > MAX_WHITESPACE:
                raise ArmorError("invalid armor: too much leading whitespace")
        if line != BEGIN:
            raise ArmorError("invalid armor: the first line is not the age armor header")
        self._started = True

    def _next_line(self) -> None:
        """Decode one more line into ``_pending``, or finish."""
        if not self._started:
            self._start()
        line = self._line()
        if line == END:
            self._drain_trailing()
            return
        if not line:
            raise ArmorError("invalid armor: empty line")
        if len(line) > COLUMNS:
            raise ArmorError("invalid armor: line longer than 64 columns")
        try:
            data = binascii.a2b_base64(line, strict_mode=True)
        except binascii.Error:
            raise ArmorError("invalid armor: bad base64") from None
        if binascii.b2a_base64(data, newline=False) != line:
            raise ArmorError("invalid armor: non-canonical base64")
        self._pending += data
        if len(data) < BYTES_PER_LINE:
            if self._line() != END:
                raise ArmorError("invalid armor: a short line is not followed by the end line")
            self._drain_trailing()

    def read(self, size: int = -1, /) -> bytes:
        want = size if size >= 0 else 1 << 62
        while len(self._pending) < want and not self._done:
            self._next_line()
        data = bytes(self._pending[:want])
        del self._pending[:want]
        return data
