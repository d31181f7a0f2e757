"""service.client against scripted answers (httpx.MockTransport): refusals become one
ProblemError, a share is retried with its one Idempotency-Key only where a retry can help, a
download is kept only when its SHA-256 matches, the event stream resumes from its last id.
The same cases run the blocking and the async client where both have them."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from email.parser import BytesParser
from email.policy import HTTP
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from service.client import (
    AsyncClient,
    Client,
    NodeUnreachableError,
    ProblemError,
    Retry,
    UnexpectedAnswerError,
    tlp_label,
)
from service.client._protocol import RETRY_MAX_SECONDS
from service.errors import RemoteError, UsageError
from service.files import disposition_filename, is_base_name
from tests.support import ROOT

URL = "http://node.test"
DENIAL = {
    "type": "urn:entente:problem:policy-denied",
    "title": "Denied by MOU policy",
    "status": 403,
    "detail": "TLP:RED is above what the MOU allows",
    "partner": "us-aisi",
    "rule": "above-amber",
    "clause": "US-UK MOU 2024, 4.2",
}
ARTIFACT: dict[str, Any] = {
    "id": "art_1", "direction": "sent", "origin": "uk-aisi", "sender": "user:alice",
    "title": "finding.md", "tlp": "TLP:GREEN", "sealing": "post-quantum",
    "topics": ["evaluation"], "purposes": ["evaluation"], "recipients": ["us-aisi"],
    "created_at": "2026-12-01T10:00:00Z", "recorded_at": "2026-12-01T10:00:01",
    "embargo_until": None, "expires_at": None, "size": 5, "sha256": "ab" * 32,
    "revoked_at": None, "obligations": [], "policy": {}, "filename": "finding.md",
    "evaluation": None, "manifest": None, "deliveries": None,
}  # fmt: skip


def problem(status: int, kind: str, **extra: Any) -> httpx.Response:
    body = {"type": f"urn:entente:problem:{kind}", "title": "t", "status": status,
            "detail": "d", **extra}  # fmt: skip
    return httpx.Response(
        status, content=json.dumps(body), headers={"content-type": "application/problem+json"}
    )


class Script:
    """Answers (or raises) in turn, the last one again; keeps each request and its body."""

    def __init__(self, *outcomes: httpx.Response | Exception) -> None:
        self.outcomes = list(outcomes)
        self.requests: list[tuple[httpx.Request, bytes]] = []

    def _next(self, request: httpx.Request, body: bytes) -> httpx.Response:
        self.requests.append((request, body))
        outcome = self.outcomes[min(len(self.requests) - 1, len(self.outcomes) - 1)]
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    def sync(self) -> httpx.MockTransport:
        return httpx.MockTransport(lambda r: self._next(r, r.read()))

    def asynchronous(self) -> httpx.MockTransport:
        async def handle(request: httpx.Request) -> httpx.Response:
            return self._next(request, await request.aread())

        return httpx.MockTransport(handle)

    def keys(self) -> list[str]:
        return [r.headers["idempotency-key"] for r, _ in self.requests]


def lost() -> httpx.RemoteProtocolError:
    return httpx.RemoteProtocolError("Server disconnected")


def finding(tmp_path: Path) -> Path:
    path = tmp_path / "finding.md"
    path.write_bytes(b"# Finding\n" * 1000)
    return path


def test_a_policy_denial_is_one_problem_error_with_rule_and_clause(tmp_path: Path) -> None:
    refusal = httpx.Response(403, json=DENIAL, headers={"content-type": "application/problem+json"})
    script = Script(refusal)
    with (
        Client(URL, "t", transport=script.sync()) as client,
        pytest.raises(ProblemError) as caught,
    ):
        client.share(finding(tmp_path), to=["us-aisi"], tlp="red")
    error = caught.value
    assert isinstance(error, RemoteError)
    assert str(error) == (
        "403: TLP:RED is above what the MOU allows [rule above-amber, US-UK MOU 2024, 4.2]"
    )
    assert (error.status, error.type, error.rule, error.clause, error.partner) == (
        403, DENIAL["type"], "above-amber", "US-UK MOU 2024, 4.2", "us-aisi",
    )  # fmt: skip
    assert error.title == "Denied by MOU policy" and error.problem == DENIAL
    assert len(script.requests) == 1  # a refusal is never retried


def test_an_answer_without_a_problem_document_is_still_a_problem_error() -> None:
    script = Script(httpx.Response(404, text="<html>not here</html>"))
    with Client(URL, "t", transport=script.sync()) as client, pytest.raises(ProblemError) as e:
        client.artifact("art_1")
    assert str(e.value) == "404: Not Found" and e.value.problem == {}
    assert e.value.type == "about:blank" and e.value.rule is None


def test_an_unreachable_node_is_node_unreachable() -> None:
    script = Script(httpx.ConnectError("connection refused"))
    with (
        Client(URL, "t", transport=script.sync()) as client,
        pytest.raises(NodeUnreachableError, match="cannot reach the node: connection refused"),
    ):
        client.list()


def test_an_answer_that_is_not_json_is_unexpected() -> None:
    script = Script(httpx.Response(200, text="<html>a captive portal</html>"))
    with (
        Client(URL, "t", transport=script.sync()) as client,
        pytest.raises(UnexpectedAnswerError, match="not JSON"),
    ):
        client.artifact("art_1")


def test_a_url_must_be_http() -> None:
    with pytest.raises(UsageError, match="http:// or https://"):
        Client("node.test", "t")


def test_a_share_is_retried_with_one_key_and_the_same_body(tmp_path: Path) -> None:
    script = Script(
        lost(),
        problem(409, "idempotency-key-in-flight"),
        problem(503, "busy"),
        httpx.Response(201, json=ARTIFACT, headers={"idempotent-replayed": "true"}),
    )
    pauses: list[float] = []
    retries: list[Retry] = []
    progress: list[tuple[int, int | None]] = []
    with Client(URL, "t", transport=script.sync(), sleep=pauses.append) as client:
        shared = client.share(
            finding(tmp_path), to=["us-aisi"], tlp="green", topics=["evaluation"],
            on_retry=retries.append, on_progress=lambda d, t: progress.append((d, t)),
        )  # fmt: skip
    assert shared.status == "shared" and shared.replayed and shared.id == "art_1"
    assert shared.artifact is not None and shared.artifact.sealing == "post-quantum"
    assert len(script.requests) == 4 and len(set(script.keys())) == 1
    assert len({body for _, body in script.requests}) == 1  # every attempt the whole file
    assert pauses == [r.pause for r in retries] and pauses[0] < pauses[1] < pauses[2]
    assert [(r.attempt, r.attempts) for r in retries] == [(2, 5), (3, 5), (4, 5)]
    assert "connection was lost (RemoteProtocolError" in retries[0].reason
    assert "still carrying out an earlier attempt" in retries[1].reason
    assert retries[2].reason == "the node answered 503"
    assert progress.count((0, 10_000)) == 4 and progress[-1] == (10_000, 10_000)


def test_the_multipart_body_is_what_the_node_reads(tmp_path: Path) -> None:
    script = Script(httpx.Response(201, json=ARTIFACT))
    with Client(URL, "t", transport=script.sync()) as client:
        client.share(
            finding(tmp_path), to=["us-aisi"], tlp="TLP:amber+strict", title="A finding",
            embargo_until="2027-01-01T00:00:00Z", idempotency_key="mine-1",
        )  # fmt: skip
    [(request, body)] = script.requests
    assert request.headers["idempotency-key"] == '"mine-1"'
    assert int(request.headers["content-length"]) == len(body)
    head = f"Content-Type: {request.headers['content-type']}\r\n\r\n".encode()
    message = BytesParser(policy=HTTP).parsebytes(head + body)
    parts = {p.get_param("name", header="content-disposition"): p for p in message.iter_parts()}
    meta = json.loads(parts["metadata"].get_content())
    assert meta["tlp"] == "TLP:AMBER+STRICT" and meta["title"] == "A finding"
    assert meta["embargo_until"] == "2027-01-01T00:00:00+00:00"
    assert meta["filename"] == "finding.md" and meta["partners"] == ["us-aisi"]
    assert parts["file"].get_content() == b"# Finding\n" * 1000


def test_retries_are_bounded(tmp_path: Path) -> None:
    script = Script(httpx.ConnectError("refused"))
    pauses: list[float] = []
    with (
        Client(URL, "t", transport=script.sync(), retries=2, sleep=pauses.append) as client,
        pytest.raises(NodeUnreachableError, match="3 attempts"),
    ):
        client.share(finding(tmp_path), to=["us-aisi"], tlp="green")
    assert len(script.requests) == 3
    assert len(pauses) == 2 and all(p <= RETRY_MAX_SECONDS * 1.25 for p in pauses)


@pytest.mark.parametrize(
    "answer",
    [
        pytest.param(problem(403, "policy-denied"), id="refused"),
        pytest.param(problem(422, "idempotency-key-reused"), id="key-reused"),
        pytest.param(problem(409, "conflict"), id="another-conflict"),
    ],
)
def test_a_refusal_is_not_retried(answer: httpx.Response, tmp_path: Path) -> None:
    script = Script(answer)
    with (
        Client(URL, "t", transport=script.sync(), sleep=lambda s: None) as client,
        pytest.raises(ProblemError) as e,
    ):
        client.share(finding(tmp_path), to=["us-aisi"], tlp="green")
    assert len(script.requests) == 1 and e.value.status == answer.status_code


def test_the_last_retryable_answer_is_the_error(tmp_path: Path) -> None:
    script = Script(problem(503, "busy"))
    with (
        Client(URL, "t", transport=script.sync(), retries=1, sleep=lambda s: None) as client,
        pytest.raises(ProblemError, match=r"^503: d$"),
    ):
        client.share(finding(tmp_path), to=["us-aisi"], tlp="green")
    assert len(script.requests) == 2


def test_a_stream_is_rewound_for_a_retry_and_one_that_cannot_seek_is_sent_once() -> None:
    script = Script(lost(), httpx.Response(201, json=ARTIFACT))
    stream = io.BytesIO(b"header|the content")
    stream.seek(7)  # shares from where the stream stands
    with Client(URL, "t", transport=script.sync(), sleep=lambda s: None) as client:
        client.share(stream, to=["us-aisi"], tlp="green", title="piped")
    assert all(b"|the content" not in body and b"the content" in body
               for _, body in script.requests)  # fmt: skip
    assert len(script.requests) == 2

    class Pipe(io.RawIOBase):
        def __init__(self) -> None:
            self.data = io.BytesIO(b"once")

        def readable(self) -> bool:
            return True

        def readinto(self, buffer: Any) -> int:
            return self.data.readinto(buffer)

    once = Script(lost())
    with Client(URL, "t", transport=once.sync(), sleep=lambda s: None) as client:
        with pytest.raises(NodeUnreachableError, match="1 attempts"):
            client.share(io.BufferedReader(Pipe()), to=["us-aisi"], tlp="green", title="piped")
        with pytest.raises(UsageError, match="needs a title"):
            client.share(io.BytesIO(b"x"), to=["us-aisi"], tlp="green")
    assert len(once.requests) == 1


def test_a_pending_share_waits_for_a_second_approver(tmp_path: Path) -> None:
    approval = {"id": "apr_1", "action": "share", "state": "pending", "artifact_id": "art_9",
                "summary": {"tlp": "TLP:AMBER"}, "expires_at": "2026-12-02T00:00:00Z"}  # fmt: skip
    script = Script(httpx.Response(202, json=approval))
    with Client(URL, "t", transport=script.sync()) as client:
        shared = client.share(finding(tmp_path), to=["us-aisi"], tlp="amber")
    assert shared.status == "pending" and shared.artifact is None and shared.id == "apr_1"
    assert shared.approval is not None and shared.approval.artifact_id == "art_9"


def test_listing_walks_every_page() -> None:
    pages = {
        None: {"items": [ARTIFACT], "next_cursor": "c2"},
        "c2": {"items": [{**ARTIFACT, "id": "art_2"}], "next_cursor": None},
    }
    seen: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=pages[request.url.params.get("cursor")])

    with Client(URL, "t", transport=httpx.MockTransport(handle)) as client:
        ids = [a.id for a in client.artifacts("sent", task="t1", page_size=1)]
        page = client.list(partner="us-aisi")
    assert ids == ["art_1", "art_2"]
    assert seen[0].url.params["direction"] == "sent" and seen[0].url.params["task"] == "t1"
    assert dict(seen[-1].url.params) == {"direction": "received", "partner": "us-aisi",
                                         "limit": "50"}  # fmt: skip
    assert page.next_cursor == "c2" and page.items[0].recorded_at is not None
    assert page.items[0].recorded_at.tzinfo is not None  # a naive time is read as UTC
    with Client(URL, "t", transport=httpx.MockTransport(handle)) as client:
        client.list(title="cyber", purpose="research", since=datetime(2027, 1, 1, tzinfo=UTC))
        assert dict(seen[-1].url.params) == {
            "direction": "received", "title": "cyber", "purpose": "research",
            "since": "2027-01-01T00:00:00+00:00", "limit": "50",
        }  # fmt: skip
        with pytest.raises(UsageError, match="since needs a time zone"):
            client.list(since=datetime(2027, 1, 1))


def content(data: bytes, *, digest: str | None = None) -> httpx.Response:
    return httpx.Response(200, content=data, headers={
        "content-length": str(len(data)),
        "digest-sha256": digest or hashlib.sha256(data).hexdigest(),
        "content-disposition": 'attachment; filename="run.eval"',
    })  # fmt: skip


def test_a_download_is_kept_only_whole_and_checked(tmp_path: Path) -> None:
    data = b"evaluation log" * 1000
    with Client(URL, "t", transport=Script(content(data)).sync()) as client:
        got = client.download("art_1", tmp_path)
        assert got.path == tmp_path / "run.eval" and got.path.read_bytes() == data
        assert got.sha256 == hashlib.sha256(data).hexdigest() and got.filename == "run.eval"
        with pytest.raises(FileExistsError):
            client.download("art_1", tmp_path)
        sink = io.BytesIO()
        assert client.download("art_1", sink).path is None and sink.getvalue() == data
    bad = Script(content(data, digest="00" * 32))
    with Client(URL, "t", transport=bad.sync()) as client:
        with pytest.raises(UnexpectedAnswerError, match="SHA-256"):
            client.download("art_1", tmp_path / "bad.eval")
        with client.open("art_1") as stream, pytest.raises(UnexpectedAnswerError):
            b"".join(stream)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.eval"]  # no partial file


def sse(*events: tuple[str, str, dict[str, Any]], end: bool = True) -> bytes:
    text = ": connected\n\n" + "".join(
        f"id: {ident}\nevent: {name}\ndata: {json.dumps(art)}\n\n" for ident, name, art in events
    )
    return (text + ("event: end\ndata: {}\n\n" if end else "")).encode()


def events_script() -> Callable[[httpx.Request], httpx.Response]:
    answers = [
        httpx.Response(
            200,
            content=sse(("3", "arrived", ARTIFACT)),
            headers={"content-type": "text/event-stream"},
        ),
        problem(503, "busy"),
        httpx.Response(200, content=sse(("4", "revoked", {**ARTIFACT, "id": "art_2"}))),
    ]
    return lambda request: answers.pop(0)


def test_events_resume_from_the_last_id() -> None:
    answers = events_script()
    seen: list[str | None] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("last-event-id"))
        return answers(request)

    notices: list[str] = []
    with Client(URL, "t", transport=httpx.MockTransport(handle), sleep=lambda s: None) as c:
        events = c.events(after="0", on_reconnect=notices.append)
        got = [next(events), next(events)]
        events.close()
    assert [(e.name, e.id, e.artifact.id) for e in got] == [
        ("arrived", "3", "art_1"), ("revoked", "4", "art_2"),
    ]  # fmt: skip
    assert seen == ["0", "3", "3"]
    assert notices == ["connection lost (the node answered 503); reconnecting from event 3 in 1 s"]


def test_events_end_on_a_refusal() -> None:
    script = Script(problem(401, "unauthorized"))
    with (
        Client(URL, "t", transport=script.sync()) as client,
        pytest.raises(ProblemError, match=r"^401"),
    ):
        next(client.events())


async def test_the_async_client_shares_retries_and_maps_refusals(tmp_path: Path) -> None:
    script = Script(lost(), httpx.Response(201, json=ARTIFACT))
    pauses: list[float] = []

    async def sleep(seconds: float) -> None:
        pauses.append(seconds)

    async with AsyncClient(URL, "t", transport=script.asynchronous(), sleep=sleep) as client:
        shared = await client.share(finding(tmp_path), to=["us-aisi"], tlp="green")
        assert shared.id == "art_1" and len(pauses) == 1
        assert len(set(script.keys())) == 1 and len({b for _, b in script.requests}) == 1
    denied = Script(httpx.Response(403, json=DENIAL))
    async with AsyncClient(URL, "t", transport=denied.asynchronous()) as client:
        with pytest.raises(ProblemError) as e:
            await client.share(io.BytesIO(b"x"), to=["us-aisi"], tlp="red", title="t")
    assert e.value.clause == "US-UK MOU 2024, 4.2" and e.value.rule == "above-amber"


async def test_the_async_client_downloads_lists_and_follows(tmp_path: Path) -> None:
    data = b"evaluation log" * 1000
    async with AsyncClient(URL, "t", transport=Script(content(data)).asynchronous()) as c:
        got = await c.download("art_1", tmp_path / "copy.eval")
        assert got.path is not None and got.path.read_bytes() == data
        async with c.open("art_1") as stream:
            assert b"".join([chunk async for chunk in stream]) == data
    answers = events_script()

    async def handle(request: httpx.Request) -> httpx.Response:
        return answers(request)

    async def sleep(seconds: float) -> None:
        return None

    async with AsyncClient(URL, "t", transport=httpx.MockTransport(handle), sleep=sleep) as c:
        ids = []
        async for event in c.events():
            ids.append(event.id)
            if len(ids) == 2:
                break
    assert ids == ["3", "4"]


def test_tlp_labels_are_accepted_as_people_write_them() -> None:
    assert tlp_label("amber") == "TLP:AMBER"
    assert tlp_label(" Amber+Strict ") == "TLP:AMBER+STRICT"
    assert tlp_label("tlp:green") == "TLP:GREEN"
    assert tlp_label("TLP:RED") == "TLP:RED"
    assert tlp_label("purple") == "TLP:PURPLE"  # passed on: the node refuses it by name


def test_importing_the_client_loads_neither_the_node_nor_the_command_line() -> None:
    probe = "import json, sys, service.client; print(json.dumps(sorted(m for m in sys.modules)))"
    loaded = json.loads(
        subprocess.run(
            [sys.executable, "-c", probe],
            cwd=ROOT,
            capture_output=True,
            check=True,
            env={"PYTHONPATH": str(ROOT)},
        ).stdout
    )
    heavy = ("fastapi", "starlette", "sqlalchemy", "sqlmodel", "alembic", "policies", "typer",
             "cryptography", "service.cli", "service.db", "service.node")  # fmt: skip
    assert [m for m in loaded if any(m == h or m.startswith(f"{h}.") for h in heavy)] == []
    assert "service.client" in loaded and "httpx" in loaded


def test_a_kept_key_sends_the_same_request_again(tmp_path: Path) -> None:
    script = Script(httpx.Response(201, json=ARTIFACT))
    with Client(URL, "t", transport=script.sync()) as client:
        for _ in range(2):
            client.share(finding(tmp_path), to=["us-aisi"], tlp="green", idempotency_key="k-1")
        client.share(finding(tmp_path), to=["us-aisi"], tlp="green")
        with pytest.raises(UsageError, match="idempotency key"):
            client.share(finding(tmp_path), to=["us-aisi"], tlp="green", idempotency_key='a"b')
    bodies = [body for _, body in script.requests]
    assert bodies[0] == bodies[1] and bodies[2] != bodies[0]  # the boundary follows the key


def upload_state(status: int, offset: int, **headers: str) -> httpx.Response:
    return httpx.Response(status, headers={"Upload-Offset": str(offset), **headers})


def test_a_resumable_share_speaks_the_drafts_interop_version_and_its_mismatch_problem(
    tmp_path: Path,
) -> None:
    """Every request of a resumable share says which draft it follows (interop version 8); a
    409 with the draft's registered problem type moves the append to the node's offset."""
    path = finding(tmp_path)
    where = {"Location": "/v1/uploads/upl_1"}
    mismatch = httpx.Response(
        409,
        json={
            "type": "https://iana.org/assignments/http-problem-types#mismatching-upload-offset",
            "title": "t", "status": 409, "expected-offset": 7, "provided-offset": 0,
        },
        headers={"content-type": "application/problem+json", "Upload-Offset": "7"},
    )  # fmt: skip
    script = Script(
        upload_state(201, 0, **where),
        mismatch,
        lost(),
        upload_state(204, 7),
        httpx.Response(201, json=ARTIFACT),
    )
    with Client(URL, "t", transport=script.sync(), sleep=lambda s: None) as client:
        shared = client.share(path, to=["us-aisi"], tlp="green", resumable=True)
    assert shared.id == "art_1"
    calls = [(r.method, r.headers.get("upload-offset")) for r, _ in script.requests]
    assert calls == [("POST", None), ("PATCH", "0"), ("PATCH", "7"), ("HEAD", None), ("PATCH", "7")]
    assert {r.headers.get("upload-draft-interop-version") for r, _ in script.requests} == {"8"}
    whole = len(script.requests[1][1])
    assert len(script.requests[-1][1]) == whole - 7  # only the rest, from the node's offset


@pytest.mark.parametrize("name", ["invoice\u202egpj.exe", "a\u2067b.txt", "x\u200e.md", "a\x9bb"])
def test_a_served_name_that_displays_as_another_is_not_used(name: str) -> None:
    """A partner's manifest names the file; a name with bidi controls or C1 controls would be
    saved under a name that shows as something else ("invoice<RLO>gpj.exe" as
    "invoiceexe.jpg"), so the download falls back to the artifact's own name."""
    assert not is_base_name(name)
    header = f"attachment; filename*=UTF-8''{quote(name)}"
    assert disposition_filename(header) is None
