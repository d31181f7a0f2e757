"""``GET /audit/v1/bundle`` through the ASGI app, on SQLite and PostgreSQL: the bundle verifies
with the log key alone, the filter is applied and recorded, and bad input is a 422 problem that
is itself on record."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from service.app import create_app
from service.audit.bundle import verify_bundle
from service.audit.entries import log_signer
from service.audit.log import record
from service.node import Node
from service.tokens import Role
from tests.service.audit_fixtures import add_events, make_node, seq_all, token


@pytest.fixture
def node(tmp_path: Path, db_url: str) -> Iterator[Node]:
    n = make_node(tmp_path, "uk-aisi", db_url)
    add_events(n, 6, kind="read", partner="us-aisi")
    add_events(n, 3, kind="share.denied", partner="ca-aisi")
    seq_all(n)
    yield n
    n.db.dispose()


@pytest.fixture
async def client(node: Node) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(node, start_workers=False)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="https://uk-aisi.example"
    ) as c:
        yield c


def _auth(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def _entries(node: Node, kind: str) -> list[dict[str, Any]]:
    with node.db.engine.connect() as conn:
        rows = conn.execute(
            sa.text("SELECT detail FROM audit_entries WHERE kind = :k ORDER BY id"), {"k": kind}
        ).all()
    return [json.loads(r[0]) for r in rows]


async def test_the_bundle_verifies_and_the_export_is_on_record(
    node: Node, client: httpx.AsyncClient
) -> None:
    auth = _auth(token(node, Role.AUDITOR, "dave"))
    response = await client.get("/audit/v1/bundle", headers=auth)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/jsonl")
    assert response.headers["x-tree-size"] == "9"
    assert 'filename="uk-aisi-audit-0-8.jsonl"' in response.headers["content-disposition"]
    verdict = verify_bundle(response.content.splitlines(), log=log_signer(node).verifier)
    assert (verdict.count, verdict.complete, verdict.size) == (9, True, 9)
    assert _entries(node, "audit.exported") == [
        {
            "bundle": True,
            "filter": {"artifact": None, "from": 0, "kind": [], "to": 8},
            "size": 9,
            "via": "api",
        }
    ]


async def test_the_filter_is_applied(node: Node, client: httpx.AsyncClient) -> None:
    auth = _auth(token(node, Role.ADMIN))
    key = log_signer(node).verifier
    response = await client.get(
        "/audit/v1/bundle?kind=share.denied&kind=read&from=2&to=7", headers=auth
    )
    verdict = verify_bundle(response.content.splitlines(), log=key)
    assert verdict.filter.to_json() == {
        "from": 2, "to": 7, "kind": ["read", "share.denied"], "artifact": None,
    }  # fmt: skip
    assert (verdict.count, verdict.complete) == (6, False)
    one = await client.get("/audit/v1/bundle?artifact=art-0001", headers=auth)
    assert verify_bundle(one.content.splitlines(), log=key).count == 2
    assert _entries(node, "audit.exported")[-1]["filter"]["artifact"] == "art-0001"


@pytest.mark.parametrize(
    ("query", "detail"),
    [
        ("start=3", "unknown query parameter 'start'"),
        ("from=1&size=2", "unknown query parameter 'size'"),
        ("to=9", "to is 9, but the latest checkpoint covers entries 0 to 8"),
        ("from=5&to=4", "from (5) is after to (4)"),
        ("kind=no.such", "unknown event kind"),
        ("from=-1", ""),
        ("from=abc", ""),
        (f"to={1 << 64}", ""),
        ("artifact=" + "x" * 65, ""),
    ],
)
async def test_bad_input_is_a_problem_on_record(
    node: Node, client: httpx.AsyncClient, query: str, detail: str
) -> None:
    response = await client.get(
        f"/audit/v1/bundle?{query}", headers=_auth(token(node, Role.AUDITOR))
    )
    assert response.status_code == 422, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert detail in response.json()["detail"]
    refused = _entries(node, "request.refused")
    assert refused and refused[-1]["path"] == "/audit/v1/bundle"
    assert _entries(node, "audit.exported") == []


async def test_roles_and_an_empty_log(node: Node, client: httpx.AsyncClient) -> None:
    assert (await client.get("/audit/v1/bundle")).status_code == 401
    reader = await client.get("/audit/v1/bundle", headers=_auth(token(node, Role.READER)))
    assert reader.status_code == 403
    # Entries recorded after the latest checkpoint are not in an export until it covers them.
    with node.db.session() as session:
        record(session, kind="read", actor="reader:late", now=node.now())
    seq_all(node)
    late = await client.get("/audit/v1/bundle?from=9", headers=_auth(token(node, Role.AUDITOR)))
    assert verify_bundle(late.content.splitlines(), log=log_signer(node).verifier).count >= 1


async def test_an_unsigned_log_is_a_404(tmp_path: Path) -> None:
    fresh = make_node(tmp_path, "ca-aisi", f"sqlite:///{tmp_path / 'ca.db'}")
    app = create_app(fresh, start_workers=False)
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="https://ca-aisi.example"
        ) as c:
            response = await c.get("/audit/v1/bundle", headers=_auth(token(fresh, Role.AUDITOR)))
        assert response.status_code == 404
        assert "no signed checkpoint" in response.json()["detail"]
    finally:
        fresh.db.dispose()
