"""Streaming ``multipart/form-data`` for artifact uploads, without spooling to disk.

Starlette's form parser spools file parts to temporary files, which would put plaintext on disk.
:class:`MultipartReader` instead turns the request body (pulled chunk by chunk, see
``service.api.bodies.StreamedBody``) into parts read in order; a file part is a file-like
object whose ``readinto`` feeds the sealing pipeline directly, so memory stays flat whatever
the upload size.

It enforces the part layout of ``POST /v1/artifacts``: a ``metadata`` part (JSON) first, then a
``file`` part, nothing else. Limits: metadata size, file size, header count and size.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from service.errors import InvalidInputError, TooLargeError
from service.schemas import is_base_name

__all__ = ["MultipartReader", "Part", "boundary_of"]

Pull = Callable[[], bytes]  # next chunk of the body, b"" at the end


def boundary_of(content_type: str | None) -> bytes:
    if not content_type:
        raise InvalidInputError("the upload needs Content-Type: multipart/form-data")
    ctype, params = parse_options_header(content_type)
    if ctype != b"multipart/form-data":
        raise InvalidInputError(
            "the upload must be multipart/form-data with parts 'metadata' and 'file'",
            reason="unsupported-media-type",
        )
    boundary = params.get(b"boundary")
    if not boundary or len(boundary) > 200:
        raise InvalidInputError("the multipart Content-Type has no valid boundary")
    return boundary


@dataclass
class Part:
    name: str
    filename: str | None
    content_type: str | None
    _reader: MultipartReader = field(repr=False)
    _done: bool = False

    def read_all(self, limit: int) -> bytes:
        out = bytearray()
        while True:
            chunk = self._reader._part_data(self)
            if not chunk:
                return bytes(out)
            out += chunk
            if len(out) > limit:
                raise TooLargeError(f"the {self.name!r} part is larger than {limit} bytes")

    def read(self, n: int = -1) -> bytes:
        """File-like read; returns b"" at the end of the part."""
        if self._done:
            return b""
        if n == 0:
            return b""
        out = self._reader._part_data(self, n if n > 0 else None)
        if not out:
            self._done = True
        return out

    def readinto(self, buffer: bytearray | memoryview) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


class MultipartReader:
    """Pull-style reading of a multipart body: ``next_part()`` then the part's ``read``."""

    def __init__(self, pull: Pull, boundary: bytes, *, max_body: int) -> None:
        self._pull = pull
        self._events: deque[tuple[str, object]] = deque()
        self._headers: dict[bytes, bytes] = {}
        self._field = b""
        self._value = b""
        self._ended = False
        self._eof = False
        self._body = 0
        self._max_body = max_body
        self._pending = b""  # leftover part data not yet returned
        self._current: Part | None = None
        self._parser = MultipartParser(
            boundary,
            callbacks={
                "on_part_begin": self._on_part_begin,
                "on_part_data": self._on_part_data,
                "on_part_end": self._on_part_end,
                "on_header_field": self._on_header_field,
                "on_header_value": self._on_header_value,
                "on_header_end": self._on_header_end,
                "on_headers_finished": self._on_headers_finished,
                "on_end": self._on_end,
            },
            max_header_count=8,
            max_header_size=4096,
        )

    # parser callbacks ------------------------------------------------------------------------
    def _on_part_begin(self) -> None:
        self._headers = {}

    def _on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]

    def _on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def _on_header_end(self) -> None:
        self._headers[self._field.lower()] = self._value
        self._field = b""
        self._value = b""

    def _on_headers_finished(self) -> None:
        self._events.append(("part", dict(self._headers)))

    def _on_part_data(self, data: bytes, start: int, end: int) -> None:
        self._events.append(("data", bytes(data[start:end])))

    def _on_part_end(self) -> None:
        self._events.append(("end", None))

    def _on_end(self) -> None:
        self._ended = True

    # pulling -----------------------------------------------------------------------------------
    def _feed(self) -> bool:
        """Feed one more body chunk to the parser; False at the end of the body."""
        if self._eof:
            return False
        chunk = self._pull()
        if not chunk:
            self._eof = True
            if not self._ended:
                raise InvalidInputError("the multipart body ended before its closing boundary")
            return False
        self._body += len(chunk)
        if self._body > self._max_body:
            raise TooLargeError(f"the upload is larger than the limit of {self._max_body} bytes")
        try:
            self._parser.write(chunk)
        except MultipartParseError as exc:
            raise InvalidInputError(f"malformed multipart body: {exc}") from None
        return True

    def _next_event(self) -> tuple[str, object] | None:
        while not self._events:
            if not self._feed():
                return None
        return self._events.popleft()

    def next_part(self) -> Part | None:
        """Skip to the next part's headers; None at the end of the body."""
        if self._current is not None:
            while self._part_data(self._current):
                pass
        while True:
            event = self._next_event()
            if event is None:
                return None
            kind, value = event
            if kind == "part":
                headers = value if isinstance(value, dict) else {}
                part = self._make_part(headers)
                self._current = part
                return part

    def _make_part(self, headers: dict[bytes, bytes]) -> Part:
        disposition = headers.get(b"content-disposition")
        if disposition is None:
            raise InvalidInputError("a multipart part has no Content-Disposition")
        kind, params = parse_options_header(disposition)
        if kind != b"form-data" or b"name" not in params:
            raise InvalidInputError("a multipart part is not form-data with a name")
        try:
            name = params[b"name"].decode("utf-8")
            filename = params[b"filename"].decode("utf-8") if b"filename" in params else None
        except UnicodeDecodeError:
            raise InvalidInputError("a multipart part name is not valid UTF-8") from None
        if filename is not None and not is_base_name(filename):
            raise InvalidInputError(
                "a part's file name is a base name: no path, no control characters",
                reason="filename",
            )
        ctype = headers.get(b"content-type")
        return Part(
            name=name,
            filename=filename,
            content_type=ctype.decode("latin-1") if ctype else None,
            _reader=self,
        )

    def _part_data(self, part: Part, n: int | None = None) -> bytes:
        if part is not self._current:
            return b""
        data = self._pending
        while not data:
            event = self._next_event()
            if event is None:
                raise InvalidInputError("the multipart body ended in the middle of a part")
            kind, value = event
            if kind == "end":
                self._current = None
                return b""
            if kind != "data" or not isinstance(value, bytes):
                raise InvalidInputError("malformed multipart body")
            data = value
        if n is not None and len(data) > n:
            self._pending = data[n:]
            return data[:n]
        self._pending = b""
        return data
