"""M2: refusals of requests that prove no identity are accounted for, but cannot flood the log.

A flood of anonymous refusals (no valid token, no valid federation signature) used to add one
tamper-evident audit entry each, forever. Now each source's first refusal of a window is
recorded as it happens and the rest of that window become ONE entry with a count; the number of
sources tracked is bounded (the others share an overflow bucket, still counted). Refusals of an
authenticated caller stay one entry each.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa

from service.tokens import Role
from tests.service.nodekit import Kit, make_node


def _client(kit: Kit, address: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=kit.app, client=(address, 40000)),
        base_url=f"http://{kit.node.node_id}",
    )


def _entries(kit: Kit, after: int) -> list[dict[str, Any]]:
    with kit.node.db.engine.connect() as conn:
        rows = conn.execute(
            sa.text("SELECT id, kind, actor, detail FROM audit_entries WHERE id > :a ORDER BY id"),
            {"a": after},
        )
        out = [dict(r._mapping) for r in rows]
    for r in out:
        r["detail"] = json.loads(r["detail"])
    return out


def _last_id(kit: Kit) -> int:
    with kit.node.db.engine.connect() as conn:
        return int(conn.execute(sa.text("SELECT COALESCE(MAX(id), 0) FROM audit_entries")).one()[0])


def _flush(kit: Kit) -> None:
    """Close the current window now (what the node does when a window ends, or at shutdown)."""
    ledger = getattr(kit.app.state, "refusals", None)
    if ledger is not None:
        ledger.flush(force=True)


def _counted(rows: list[dict[str, Any]]) -> int:
    """Refusals the entries account for: one each, or the count of a summary."""
    return sum(int(r["detail"].get("count", 1)) for r in rows)


async def test_anonymous_flood_is_summarised_per_source(tmp_path: Path) -> None:
    kit = make_node(tmp_path, "uk-aisi")
    # The node's clock stands still, so the flood cannot straddle the end of a window (on a busy
    # machine it once did: two windows, two first entries and two summaries per kind).
    frozen = kit.node.now()
    kit.node.clock = lambda: frozen
    before = _last_id(kit)
    async with _client(kit, "203.0.113.7") as c:
        for i in range(300):
            r = await c.get("/v1/artifacts", headers={"Authorization": f"Bearer ent_x{i}_nope"})
            assert r.status_code == 401, r.text
        for _ in range(100):
            r = await c.post("/federation/v1/notices", content=b"{}")  # unsigned
            assert r.status_code == 401, r.text
    _flush(kit)
    rows = _entries(kit, before)
    auth = [r for r in rows if r["kind"] == "auth.refused"]
    fed = [r for r in rows if r["kind"] == "federation.refused"]
    # 400 refusals, at most a first entry and one summary per kind of refusal
    assert len(rows) <= 4, [(r["kind"], r["detail"]) for r in rows]
    assert _counted(auth) == 300
    assert _counted(fed) == 100
    summary = next(r for r in auth if r["detail"].get("count", 1) > 1)
    assert summary["actor"] == "anonymous"
    assert summary["detail"]["source"] == "203.0.113.7"
    assert summary["detail"]["reasons"], summary


async def test_sources_are_bounded_with_an_overflow_bucket(tmp_path: Path) -> None:
    kit = make_node(tmp_path, "uk-aisi", refusal_audit_sources=4)
    before = _last_id(kit)
    for n in range(12):
        async with _client(kit, f"198.51.100.{n}") as c:
            for _ in range(5):
                r = await c.get("/v1/partners", headers={"Authorization": "Bearer nope"})
                assert r.status_code == 401
    _flush(kit)
    rows = _entries(kit, before)
    assert all(r["kind"] == "auth.refused" for r in rows)
    assert _counted(rows) == 60  # every refusal is accounted for
    # four sources tracked (a first entry and a summary each), one overflow bucket for the rest
    assert len(rows) <= 4 * 2 + 2, len(rows)
    assert any(r["detail"].get("source") == "overflow" for r in rows), rows


async def test_authenticated_refusals_stay_one_entry_each(tmp_path: Path) -> None:
    kit = make_node(tmp_path, "uk-aisi")
    before = _last_id(kit)
    async with _client(kit, "203.0.113.9") as c:
        for _ in range(25):
            r = await c.get("/audit/v1/entries", headers=kit.auth(Role.READER))
            assert r.status_code == 403
    _flush(kit)
    rows = [r for r in _entries(kit, before) if r["kind"] == "auth.refused"]
    assert len(rows) == 25
    assert all(r["actor"].startswith("reader:") for r in rows), rows[0]
