"""Limits only a real ``entente serve`` process can show: the size of a request head (uvicorn's
h11 parser, before the app) and a stalled request body, each refused with a problem document
while the node stays up."""

from __future__ import annotations

import contextlib
import json
import socket
from collections.abc import Iterator

import httpx
import pytest

from tests.nodes import Federation, NodeProcess, start_federation

pytestmark = pytest.mark.integration

HEAD_LIMIT = 4096  # bytes: ENTENTE_MAX_REQUEST_HEADER_BYTES for this node


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    federation = start_federation(
        tmp_path_factory.mktemp("serve-limits"),
        ("uk-aisi",),
        ENTENTE_MAX_REQUEST_HEADER_BYTES=str(HEAD_LIMIT),
        ENTENTE_REQUEST_BODY_IDLE_SECONDS="0.5",
        ENTENTE_WORKERS_ENABLED="false",
    )
    yield federation
    federation.stop()


def _raw(node: NodeProcess, data: bytes, *, then: bytes = b"", pause: float = 0.0) -> bytes:
    """Send ``data`` (and, after ``pause`` seconds, ``then``) on one connection; the answer."""
    with socket.create_connection(("127.0.0.1", node.port), timeout=10) as s:
        # Refused before all of it was sent: the answer is waiting all the same.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            s.sendall(data)
        if pause:
            s.settimeout(pause)
            try:
                early = s.recv(65536)
            except TimeoutError:
                early = b""
            if early:
                return early + _drain(s)
            s.settimeout(10)
            s.sendall(then)
        return _drain(s)


def _drain(s: socket.socket) -> bytes:
    out = b""
    while True:
        try:
            chunk = s.recv(65536)
        except (TimeoutError, ConnectionResetError):
            return out
        if not chunk:
            return out
        out += chunk


def _problem(raw: bytes, status: int) -> dict[str, object]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    assert lines[0].startswith(f"HTTP/1.1 {status} "), lines[0]
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    assert headers["content-type"] == "application/problem+json"
    doc: dict[str, object] = json.loads(body)
    assert doc["status"] == status and str(doc["type"]).startswith("urn:entente:problem:")
    return doc


def test_oversized_head_is_431_problem(fed: Federation) -> None:
    uk = fed.nodes["uk-aisi"]
    big = b"X-Padding: " + b"a" * (2 * HEAD_LIMIT) + b"\r\n"
    raw = _raw(uk, b"GET /v1/partners HTTP/1.1\r\nHost: x\r\n" + big + b"\r\n")
    doc = _problem(raw, 431)
    assert "ENTENTE_MAX_REQUEST_HEADER_BYTES" in str(doc["detail"])
    # Many headers, each small, add up the same way.
    many = b"".join(b"X-H%d: %s\r\n" % (i, b"b" * 100) for i in range(100))
    _problem(_raw(uk, b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + many + b"\r\n"), 431)
    # A head far larger than one read is refused by the HTTP parser itself, the same way.
    huge = b"X-Padding: " + b"a" * 400_000 + b"\r\n"
    doc = _problem(_raw(uk, b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + huge + b"\r\n"), 431)
    assert "ENTENTE_MAX_REQUEST_HEADER_BYTES" in str(doc["detail"])
    # A head under the limit is served.
    ok = httpx.get(f"{uk.url}/healthz", headers={"X-Padding": "a" * (HEAD_LIMIT // 2)})
    assert ok.status_code == 200


def test_malformed_head_is_400_problem(fed: Federation) -> None:
    uk = fed.nodes["uk-aisi"]
    _problem(_raw(uk, b"GET /healthz HTTP/1.1\r\nHost x\r\n\r\n"), 400)
    _problem(_raw(uk, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 64), 400)
    assert httpx.get(f"{uk.url}/healthz").status_code == 200


def test_stalled_body_is_408_problem(fed: Federation) -> None:
    uk = fed.nodes["uk-aisi"]
    token = fed.tokens["uk-aisi"]["publisher"]
    head = (
        "POST /v1/artifacts HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: Bearer {token}\r\n"
        "Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 5000\r\n\r\n"
    ).encode()
    start = b'--b\r\nContent-Disposition: form-data; name="metadata"\r\n\r\n{"title": '
    raw = _raw(uk, head + start, then=b"never read", pause=3.0)
    doc = _problem(raw, 408)
    assert "ENTENTE_REQUEST_BODY_IDLE_SECONDS" in str(doc["detail"])
    r = httpx.get(f"{uk.url}/v1/partners", headers=fed.auth("uk-aisi", "reader"))
    assert r.status_code == 200
