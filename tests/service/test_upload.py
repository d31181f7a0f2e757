"""The streaming multipart reader used by POST /v1/artifacts."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from service.api.upload import MultipartReader, boundary_of
from service.errors import InvalidInputError, TooLargeError

B = b"XyZ123"


def _body(*parts: tuple[str, str | None, bytes]) -> bytes:
    out = b""
    for name, filename, data in parts:
        disp = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out += (
            b"--" + B + b"\r\nContent-Disposition: " + disp.encode() + b"\r\n\r\n" + data + b"\r\n"
        )
    return out + b"--" + B + b"--\r\n"


def _puller(body: bytes, chunk: int) -> Iterator[bytes]:
    for i in range(0, len(body), chunk):
        yield body[i : i + chunk]
    while True:
        yield b""


@pytest.mark.parametrize("chunk", [1, 7, 64, 65536])
def test_reads_parts_in_order_whatever_the_chunking(chunk: int) -> None:
    payload = bytes(range(256)) * 300 + b"\r\n--XyZ12 almost a boundary"
    body = _body(("metadata", None, b'{"title": "x"}'), ("file", "a.bin", payload))
    pull = _puller(body, chunk)
    reader = MultipartReader(lambda: next(pull), B, max_body=10**7)
    meta = reader.next_part()
    assert meta is not None and meta.name == "metadata"
    assert meta.read_all(1000) == b'{"title": "x"}'
    file = reader.next_part()
    assert file is not None and file.name == "file" and file.filename == "a.bin"
    got = bytearray()
    buf = bytearray(1000)
    while n := file.readinto(buf):
        got += buf[:n]
    assert bytes(got) == payload
    assert reader.next_part() is None


def test_limits_and_truncation() -> None:
    body = _body(("metadata", None, b"x" * 5000))
    pull = _puller(body, 100)
    reader = MultipartReader(lambda: next(pull), B, max_body=10**6)
    part = reader.next_part()
    assert part is not None
    with pytest.raises(TooLargeError):
        part.read_all(1000)
    pull = _puller(body, 100)
    small = MultipartReader(lambda: next(pull), B, max_body=1000)
    part = small.next_part()
    assert part is not None
    with pytest.raises(TooLargeError, match="limit of 1000 bytes"):
        part.read_all(10**6)
    truncated = _body(("file", "f", b"y" * 500))[:300]
    pull = _puller(truncated, 64)
    reader = MultipartReader(lambda: next(pull), B, max_body=10**6)
    part = reader.next_part()
    assert part is not None
    with pytest.raises(InvalidInputError, match="ended"):
        part.read_all(10**6)


@pytest.mark.parametrize(
    ("content_type", "message"),
    [
        (None, "multipart/form-data"),
        ("application/json", "multipart/form-data"),
        ("multipart/form-data", "boundary"),
    ],
)
def test_content_type_checks(content_type: str | None, message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        boundary_of(content_type)
    assert boundary_of("multipart/form-data; boundary=abc") == b"abc"
