"""``entente share``'s retries as the command line shows them: the Python client retries
(tests/service/test_client.py), the command says each retry and a replayed answer on stderr."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from service.cli import app as cli_app
from service.cli import client as cli_client
from service.client import Client

ARTIFACT: dict[str, Any] = {
    "id": "art_1", "direction": "sent", "origin": "uk-aisi", "sender": "user:alice",
    "title": "f.txt", "tlp": "TLP:GREEN", "sealing": "classic", "topics": [], "purposes": [],
    "recipients": ["us-aisi"], "created_at": "2026-12-01T10:00:00Z",
    "recorded_at": "2026-12-01T10:00:00Z", "embargo_until": None, "expires_at": None,
    "size": 3, "sha256": "ab" * 32, "revoked_at": None, "obligations": [], "policy": {},
}  # fmt: skip


def _share(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, *answers: httpx.Response | Exception
) -> tuple[Any, int]:
    calls = 0

    def handle(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        request.read()
        outcome = answers[min(calls, len(answers) - 1)]
        calls += 1
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    def scripted(url: str, token: str, **options: Any) -> Client:
        return Client(url, token, transport=httpx.MockTransport(handle), sleep=lambda s: None,
                      **options)  # fmt: skip

    monkeypatch.setattr(cli_client, "_client", scripted)
    (tmp_path / "f.txt").write_bytes(b"abc")
    result = CliRunner().invoke(
        cli_app,
        ["share", str(tmp_path / "f.txt"), "--to", "us-aisi", "--tlp", "green", "--url",
         "http://node.test", "--token", "t", "--retries", "2"],
    )  # fmt: skip
    return result, calls


def test_each_retry_and_a_replayed_answer_are_said(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    replayed = httpx.Response(201, json=ARTIFACT, headers={"idempotent-replayed": "true"})
    in_flight = httpx.Response(
        409,
        content=json.dumps({"type": "urn:entente:problem:idempotency-key-in-flight",
                            "title": "t", "status": 409, "detail": "d"}),
        headers={"content-type": "application/problem+json"},
    )  # fmt: skip
    result, calls = _share(
        monkeypatch, tmp_path, httpx.RemoteProtocolError("Server disconnected"), in_flight,
        replayed,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert calls == 3
    out = result.output  # stderr mixed in by the runner
    assert "the connection was lost (RemoteProtocolError: Server disconnected); retrying in" in out
    assert "with the same idempotency key (attempt 2 of 3)" in out
    assert "still carrying out an earlier attempt" in out and "(attempt 3 of 3)" in out
    assert "nothing was shared twice" in out
    assert "shared art_1 (TLP:GREEN, 3 bytes) with us-aisi, sealed classic" in out


def test_a_node_that_stays_away_is_one_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    result, calls = _share(monkeypatch, tmp_path, httpx.ConnectError("refused"))
    assert calls == 3 and result.exit_code != 0
    assert "cannot reach the node (3 attempts): refused" in str(result.exception)


def test_a_resumable_share_resumes_from_the_nodes_offset(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    seen: list[tuple[str, dict[str, str], bytes]] = []
    created = httpx.Response(
        201, headers={"Location": "/v1/uploads/upl_" + "0" * 32, "Upload-Offset": "0"}
    )
    held = httpx.Response(204, headers={"Upload-Offset": "100", "Upload-Complete": "?0"})
    answers: list[httpx.Response | Exception] = [
        created, httpx.RemoteProtocolError("Server disconnected"), held,
        httpx.Response(201, json=ARTIFACT),
    ]  # fmt: skip

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append((request.method, dict(request.headers), request.read()))
        outcome = answers.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    def scripted(url: str, token: str, **options: Any) -> Client:
        return Client(url, token, transport=httpx.MockTransport(handle), sleep=lambda s: None,
                      **options)  # fmt: skip

    monkeypatch.setattr(cli_client, "_client", scripted)
    (tmp_path / "f.txt").write_bytes(b"abc" * 100)
    result = CliRunner().invoke(
        cli_app,
        ["share", str(tmp_path / "f.txt"), "--to", "us-aisi", "--tlp", "green", "--url",
         "http://node.test", "--token", "t", "--resumable"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "resuming in" in result.output and "from the bytes the node holds" in result.output
    assert [method for method, _, _ in seen] == ["POST", "PATCH", "HEAD", "PATCH"]
    post, first, _, second = seen
    assert post[1]["upload-complete"] == "?0" and post[2] == b""
    whole = int(post[1]["upload-length"])
    assert len(first[2]) == whole and first[1]["upload-offset"] == "0"
    assert second[1]["upload-offset"] == "100" and second[2] == first[2][100:]
    assert second[1]["content-type"] == "application/partial-upload"
    assert "shared art_1" in result.output
