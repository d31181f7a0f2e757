"""M8: every refusal is accounted for in the audit log, wherever it is answered.

Found by review (scripts in the review's ``/tmp/review-refusals``):

1. The problem handler audited refusals on the API prefixes only: the first 429 of a rate-limit
   burst, when it landed on ``GET /metrics``, was dropped (and every later refusal of the burst
   is quiet, so the whole burst, ``/v1`` refusals included, left no entry); a 405 on
   ``/healthz`` or ``/.well-known/entente.json`` left none either. Now every refusal on a route
   that matched is audited; a scan of an unknown path still is not (``test_bad_input``).
2. Console pages that refuse a filter or an explain form (422) rendered their answer without
   raising, so nothing audited them, and ``/ui/audit`` recorded an ``audit.read`` with filters
   it had not applied. Now the refusal is on record and no such read is.
3. A refusal met by a busy database was dropped with a log line. Now it is kept (bounded) and
   written, with its own fields, once the database answers again.
   A 431 answered before routing, for a head over the limit, was neither counted nor audited;
   now it is both (an anonymous refusal: no token was looked at).
4. A stalled request body on a streaming route (a GET with ``Content-Length`` and no body) was
   refused by the idle rule after the answer had started: the stream was cut with a traceback.
   Now the body's bounds stop once the answer has started, and the stream ends normally.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import anyio
import pytest
import sqlalchemy as sa

from service import db as db_module
from service.audit import refusals
from service.audit.refusals import RefusalLedger
from service.tokens import Role
from tests.service.nodekit import Kit, make_node, pin
from tests.service.test_console import sign_in


def _last_id(kit: Kit) -> int:
    with kit.node.db.engine.connect() as conn:
        return int(conn.execute(sa.text("SELECT COALESCE(MAX(id), 0) FROM audit_entries")).one()[0])


def _entries(kit: Kit, after: int, *, flush: bool = True) -> list[dict[str, Any]]:
    """Audit entries recorded after entry ``after``, oldest first (anonymous refusals' windows
    closed first, as at shutdown)."""
    if flush:
        RefusalLedger.of(kit.app.state, kit.node).flush(force=True)
    with kit.node.db.engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT kind, actor, decision, rule, detail FROM audit_entries WHERE id > :a "
                "ORDER BY id"
            ),
            {"a": after},
        )
        out = [dict(r._mapping) for r in rows]
    for r in out:
        r["detail"] = json.loads(r["detail"])
    return out


def _refused(rows: list[dict[str, Any]]) -> list[tuple[str, str | None, str, int]]:
    """``(kind, rule, path, status)`` of each request refusal among ``rows``."""
    return [
        (r["kind"], r["rule"], r["detail"].get("path"), r["detail"].get("status"))
        for r in rows
        if r["kind"].endswith(".refused")
    ]


# --- 1. refusals on every route that matched ----------------------------------------------------


async def test_a_rate_limit_burst_that_starts_on_metrics_is_audited(tmp_path: Path) -> None:
    kit = make_node(tmp_path, "uk-aisi", rate_limit_per_minute=3)
    before = _last_id(kit)
    async with kit.client() as c:
        statuses = [
            (await c.get("/metrics", headers=kit.auth(Role.ADMIN))).status_code for _ in range(4)
        ]
        statuses += [
            (await c.get("/v1/admin/partners", headers=kit.auth(Role.ADMIN))).status_code
            for _ in range(2)
        ]
    assert statuses == [200, 200, 200, 429, 429, 429]
    rows = [r for r in _entries(kit, before) if r["kind"] == "request.refused"]
    assert _refused(rows) == [("request.refused", "rate-limited", "/metrics", 429)]
    assert rows[0]["actor"].startswith("admin:") and rows[0]["decision"] == "deny"
    assert kit.node.metrics.refusals.labels("rate-limited")._value.get() == 3  # every refusal


@pytest.mark.parametrize("path", ["/healthz", "/.well-known/entente.json", "/metrics"])
async def test_a_wrong_method_on_an_unprefixed_route_is_audited(tmp_path: Path, path: str) -> None:
    kit = make_node(tmp_path, "uk-aisi")
    before = _last_id(kit)
    async with kit.client() as c:
        r = await c.post(path)
        scan = await c.post("/no/such/path")
    assert r.status_code == 405 and scan.status_code == 404
    rows = _entries(kit, before)
    assert _refused(rows) == [("request.refused", "method-not-allowed", path, 405)]
    assert rows[0]["actor"] == "anonymous"


async def test_an_oversized_head_is_counted_and_audited(tmp_path: Path) -> None:
    """A 431 answered before routing (``RequestBounds``) was neither counted nor audited."""
    kit = make_node(tmp_path, "uk-aisi")
    limit = kit.node.settings.max_request_header_bytes
    before = _last_id(kit)
    async with kit.client() as c:
        r = await c.get("/healthz", headers={"x-padding": "a" * limit})
    assert r.status_code == 431 and r.json()["type"].endswith(":headers-too-large")
    rows = _entries(kit, before)
    assert _refused(rows) == [("request.refused", "headers-too-large", "/healthz", 431)]
    assert rows[0]["actor"] == "anonymous"
    assert kit.node.metrics.refusals.labels("headers-too-large")._value.get() == 1


# --- 2. console pages that refuse without raising -----------------------------------------------


@pytest.fixture
def console_kit(tmp_path: Path) -> Kit:
    kit = make_node(tmp_path, "uk-aisi")
    pin(kit, make_node(tmp_path, "us-aisi"))
    return kit


@pytest.mark.parametrize(
    ("path", "said"),
    [
        ("/ui/policies?partner=nobody", "choose a partner"),
        ("/ui/audit?kind=nope", "unknown event kind"),
        ("/ui/audit?before=xyz", "before"),
    ],
    ids=["explain-partner", "audit-kind", "audit-before"],
)
async def test_a_console_page_that_refuses_its_input_is_audited(
    console_kit: Kit, path: str, said: str
) -> None:
    kit = console_kit
    async with kit.client() as c:
        await sign_in(c, kit.tokens[Role.AUDITOR])
        before = _last_id(kit)
        r = await c.get(path)
    assert r.status_code == 422 and said in r.text
    rows = _entries(kit, before)
    assert [r["kind"] for r in rows] == ["request.refused"]  # no audit.read of unapplied filters
    [entry] = rows
    assert entry["actor"].startswith("auditor:") and entry["rule"] == "invalid-input"
    assert entry["detail"]["path"] == path.split("?")[0]
    assert entry["detail"]["status"] == 422 and entry["detail"]["via"] == "console"
    assert said in entry["detail"]["detail"]


# --- 3. refusals met by a busy database ---------------------------------------------------------


@pytest.fixture
def busy_kit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Kit:
    monkeypatch.setattr(db_module, "BUSY_TIMEOUT_MS", 200)  # every connection made from now
    kit = make_node(tmp_path, "uk-aisi")  # SQLite
    pin(kit, make_node(tmp_path, "us-aisi"))
    return kit


@pytest.fixture
def write_lock(busy_kit: Kit) -> Iterator[sqlite3.Connection]:
    """Another process's write transaction on the node's database, held until released."""
    path = busy_kit.node.db.engine.url.database
    assert path is not None
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    yield holder
    if holder.in_transaction:
        holder.execute("ROLLBACK")
    holder.close()


async def test_refusals_met_by_a_busy_database_are_written_once_it_answers(
    busy_kit: Kit, write_lock: sqlite3.Connection
) -> None:
    kit = busy_kit
    before = _last_id(kit)
    async with kit.client() as c:
        forbidden = await c.get("/audit/v1/entries", headers=kit.auth(Role.READER))
        anonymous = await c.get("/v1/artifacts", headers={"Authorization": "Bearer nope"})
        missing = await c.get("/v1/artifacts/nope", headers=kit.auth(Role.READER))
    assert (forbidden.status_code, anonymous.status_code, missing.status_code) == (403, 401, 404)
    ledger = RefusalLedger.of(kit.app.state, kit.node)
    assert ledger.flush() == 0  # the database still does not answer: the refusals are kept
    write_lock.execute("ROLLBACK")
    assert ledger.flush() == 3
    rows = _entries(kit, before, flush=False)
    assert [(r["kind"], r["decision"], r["detail"]["path"]) for r in rows] == [
        ("auth.refused", None, "/audit/v1/entries"),
        ("auth.refused", None, "/v1/artifacts"),
        ("request.refused", "deny", "/v1/artifacts/nope"),
    ]
    assert rows[0]["actor"].startswith("reader:") and rows[1]["actor"] == "anonymous"
    assert rows[1]["detail"]["reason"] == "malformed" and rows[2]["rule"] == "not-found"
    assert all("refused_at" in r["detail"] for r in rows)


async def test_an_anonymous_summary_met_by_a_busy_database_is_written_once_it_answers(
    busy_kit: Kit, write_lock: sqlite3.Connection
) -> None:
    kit = busy_kit
    frozen = kit.node.now()
    kit.node.clock = lambda: frozen
    before = _last_id(kit)
    async with kit.client() as c:
        for _ in range(3):
            assert (await c.get("/v1/artifacts")).status_code == 401
    window = kit.node.settings.refusal_audit_window_seconds
    kit.node.clock = lambda: frozen + timedelta(seconds=window)  # the window ends
    ledger = RefusalLedger.of(kit.app.state, kit.node)
    assert ledger.flush() == 0
    write_lock.execute("ROLLBACK")
    assert ledger.flush() == 2  # the window's first refusal, and the summary of the other two
    rows = _entries(kit, before, flush=False)
    assert [(r["kind"], r["rule"], r["detail"].get("count")) for r in rows] == [
        ("auth.refused", None, None),
        ("auth.refused", "summary", 2),
    ]


async def test_a_console_refusal_met_by_a_busy_database_is_written_once_it_answers(
    busy_kit: Kit, write_lock: sqlite3.Connection
) -> None:
    kit = busy_kit
    write_lock.execute("ROLLBACK")  # signing in is a write
    async with kit.client() as c:
        await sign_in(c, kit.tokens[Role.AUDITOR])
        before = _last_id(kit)
        write_lock.execute("BEGIN IMMEDIATE")
        r = await c.get("/v1/artifacts/nope", headers=kit.auth(Role.READER))
        page = await c.get("/ui/artifacts/nope")
    assert r.status_code == 404 and page.status_code == 404
    write_lock.execute("ROLLBACK")
    assert RefusalLedger.of(kit.app.state, kit.node).flush() == 2
    rows = _entries(kit, before, flush=False)
    assert [(r["kind"], r["rule"], r["detail"]["path"], r["detail"].get("via")) for r in rows] == [
        ("request.refused", "not-found", "/v1/artifacts/nope", None),
        ("request.refused", "not-found", "/ui/artifacts/nope", "console"),
    ]


async def test_refusals_kept_for_a_busy_database_stay_bounded(
    busy_kit: Kit, write_lock: sqlite3.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    kit = busy_kit
    monkeypatch.setattr(refusals, "DEFERRED_MAX", 2)
    before = _last_id(kit)
    async with kit.client() as c:
        for i in range(3):
            r = await c.get(f"/v1/artifacts/nope-{i}", headers=kit.auth(Role.READER))
            assert r.status_code == 404
    write_lock.execute("ROLLBACK")
    assert RefusalLedger.of(kit.app.state, kit.node).flush() == 3  # two kept, one summary
    rows = _entries(kit, before, flush=False)
    assert [r["detail"].get("path") for r in rows[:2]] == [
        "/v1/artifacts/nope-0",
        "/v1/artifacts/nope-1",
    ]
    assert (rows[2]["rule"], rows[2]["detail"]["count"]) == ("summary", 1)


# --- 4. a stalled body on a streaming route -----------------------------------------------------


async def test_a_stalled_body_does_not_cut_a_stream_once_it_has_started(tmp_path: Path) -> None:
    kit = make_node(
        tmp_path,
        "uk-aisi",
        request_body_idle_seconds=0.3,
        events_max_stream_seconds=1.0,
        events_poll_seconds=0.1,
    )
    token = kit.tokens[Role.READER].encode()
    scope = {
        "type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
        "method": "GET", "scheme": "http", "path": "/v1/events", "raw_path": b"/v1/events",
        "query_string": b"", "root_path": "", "client": ("203.0.113.5", 1),
        "server": ("uk-aisi", 80),
        "headers": [(b"host", b"uk-aisi"), (b"authorization", b"Bearer " + token),
                    (b"content-length", b"5")],
    }  # fmt: skip
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:  # the body's five bytes never come
        await anyio.sleep_forever()
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    before = _last_id(kit)
    with anyio.fail_after(30):
        await kit.app(scope, receive, send)
    assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 200
    body = b"".join(m.get("body", b"") for m in sent[1:])
    assert b"event: ready" in body and b"event: end" in body  # the stream ran its course
    assert sent[-1]["type"] == "http.response.body" and not sent[-1].get("more_body", False)
    assert _refused(_entries(kit, before)) == []  # answered 200: nothing was refused
