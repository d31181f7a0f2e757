"""Small stream helpers: the reader and writer shapes ``crypto.age`` accepts, and a buffered source.

Readers are binary file-like objects with ``read`` (``readinto`` is used when present); writers
have ``write``. A memoryview passed to ``write`` is valid only during the call (the ``io``
contract), because buffers are reused to keep memory constant.
"""

from __future__ import annotations

from typing import Protocol

__all__ = ["Buffer", "Hasher", "Reader", "Source", "Writer", "write_all"]

Buffer = bytes | bytearray | memoryview


class Reader(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


class Writer(Protocol):
    def write(self, data: Buffer, /) -> object: ...


class Hasher(Protocol):
    """A ``hashlib`` hash object, or anything else with ``update``."""

    def update(self, data: Buffer, /) -> None: ...


def write_all(writer: Writer, data: memoryview) -> None:
    """Write all of ``data``, looping over short writes (raw ``FileIO`` may write less)."""
    while data:
        n = writer.write(data)
        if not isinstance(n, int) or n >= len(data):
            return
        if n <= 0:
            raise OSError("the writer accepted no data")
        data = data[n:]


class Source:
    """A reader with a small look-ahead buffer: lines and peeks for the header, then bulk reads.

    Bulk reads (:meth:`readinto`) drain the buffer first and then read the underlying stream
    directly, so the payload is never copied through the buffer.
    """

    __slots__ = ("_buf", "_eof", "_raw", "_readinto")

    _CHUNK = 16 * 1024

    def __init__(self, raw: Reader) -> None:
        self._raw = raw
        self._readinto = getattr(raw, "readinto", None)
        self._buf = bytearray()
        self._eof = False

    def _fill(self, n: int) -> None:
        while len(self._buf) < n and not self._eof:
            data = self._raw.read(max(self._CHUNK, n - len(self._buf)))
            if not data:
                self._eof = True
            else:
                self._buf += data

    def peek(self, n: int) -> bytes:
        self._fill(n)
        return bytes(self._buf[:n])

    def readline(self, limit: int) -> bytes:
        """Up to and including the next LF, at most ``limit`` bytes, or what is left at EOF."""
        start = 0
        while True:
            end = self._buf.find(b"\n", start, limit)
            if end >= 0:
                line = bytes(self._buf[: end + 1])
                del self._buf[: end + 1]
                return line
            if len(self._buf) >= limit or self._eof:
                line = bytes(self._buf[:limit])
                del self._buf[:limit]
                return line
            start = len(self._buf)
            self._fill(len(self._buf) + 1)

    def read(self, n: int) -> bytes:
        """Exactly ``n`` bytes, or fewer at end of stream."""
        self._fill(n)
        data = bytes(self._buf[:n])
        del self._buf[:n]
        return data

    def readinto(self, view: memoryview) -> int:
        """Fill ``view`` completely unless the stream ends first; returns the count."""
        total = 0
        if self._buf:
            total = min(len(self._buf), len(view))
            view[:total] = self._buf[:total]
            del self._buf[:total]
        while total < len(view) and not self._eof:
            if self._readinto is not None:
                n = self._readinto(view[total:])
            else:
                data = self._raw.read(len(view) - total)
                n = len(data)
                view[total : total + n] = data
            if not n:
                self._eof = True
            else:
                total += n
        return total

    def at_eof(self) -> bool:
        self._fill(1)
        return not self._buf
