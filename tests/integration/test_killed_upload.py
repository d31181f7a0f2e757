"""An upload cut off mid-stream (the client dies) leaves no blob, no temporary file and no row."""

from __future__ import annotations

import json
import socket
import sqlite3
import time
from pathlib import Path

import httpx
import pytest

from tests.nodes import Federation, start_federation

pytestmark = pytest.mark.integration


@pytest.fixture
def fed(tmp_path: Path) -> Federation:
    federation = start_federation(tmp_path, ("uk-aisi", "us-aisi"))
    yield federation  # type: ignore[misc]
    federation.stop()


def test_client_dying_mid_upload_leaves_nothing(fed: Federation) -> None:
    uk = fed.nodes["uk-aisi"]
    meta = json.dumps(
        {"title": "cut off", "tlp": "TLP:GREEN", "topics": ["evaluation"],
         "purposes": ["evaluation"], "partners": ["us-aisi"]}
    )  # fmt: skip
    b = "cutoff"
    head = (
        f'--{b}\r\nContent-Disposition: form-data; name="metadata"\r\n\r\n{meta}\r\n'
        f'--{b}\r\nContent-Disposition: form-data; name="file"; filename="f"\r\n\r\n'
    ).encode()
    declared = len(head) + (8 << 20) + 64
    request = (
        f"POST /v1/artifacts HTTP/1.1\r\nHost: 127.0.0.1:{uk.port}\r\n"
        f"Authorization: Bearer {fed.tokens['uk-aisi']['publisher']}\r\n"
        f"Content-Type: multipart/form-data; boundary={b}\r\nContent-Length: {declared}\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", uk.port)) as sock:
        sock.sendall(request + head + b"x" * (2 << 20))  # a quarter of the file, then gone
        time.sleep(0.5)
    blobs = uk.home / "blobs"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and list((blobs / "tmp").glob("*")):
        time.sleep(0.2)
    assert list((blobs / "tmp").glob("*")) == []  # the temporary ciphertext is gone
    assert [p for p in blobs.rglob("*") if p.is_file()] == []
    with sqlite3.connect(uk.home / "entente.db") as conn:
        assert conn.execute("SELECT count(*) FROM artifacts").fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM outbox").fetchone()[0] == 0
    # The node is unharmed: the next upload goes through.
    ok = httpx.post(
        f"{uk.url}/v1/artifacts",
        content=head + b"complete" + f"\r\n--{b}--\r\n".encode(),
        headers={
            "Content-Type": f"multipart/form-data; boundary={b}",
            **fed.auth("uk-aisi", "publisher"),
        },
    )
    assert ok.status_code == 201, ok.text
