"""``/audit/v1`` through the ASGI app (httpx.ASGITransport), on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from crypto import merkle
from crypto.note import open_checkpoint
from service.app import create_app
from service.audit.entries import log_signer
from service.audit.errors import AuditSourceError
from service.audit.sources import HttpSource
from service.audit.verify import verify_log
from service.node import Node
from service.tokens import Role
from tests.service.audit_fixtures import T0, add_events, make_node, seq_all, token


@pytest.fixture
def node(tmp_path: Path, db_url: str) -> Iterator[Node]:
    n = make_node(tmp_path, "uk-aisi", db_url)
    add_events(n, 12, kind="read", partner="us-aisi")
    add_events(n, 5, kind="share.denied", partner="ca-aisi")
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


def _count(node: Node, kind: str) -> int:
    with node.db.engine.connect() as conn:
        value = conn.execute(
            sa.text("SELECT count(*) FROM audit_entries WHERE kind = :k"), {"k": kind}
        ).scalar_one()
    return int(value)


async def test_roles(node: Node, client: httpx.AsyncClient) -> None:
    missing = await client.get("/audit/v1/entries")
    assert missing.status_code == 401
    assert missing.headers["content-type"] == "application/problem+json"
    reader = await client.get("/audit/v1/entries", headers=_auth(token(node, Role.READER)))
    assert reader.status_code == 403
    assert reader.json()["type"] == "urn:entente:problem:forbidden"
    for role in (Role.AUDITOR, Role.ADMIN):
        ok = await client.get("/audit/v1/checkpoint", headers=_auth(token(node, role)))
        assert ok.status_code == 200


async def test_checkpoint_is_a_signed_note(node: Node, client: httpx.AsyncClient) -> None:
    response = await client.get("/audit/v1/checkpoint", headers=_auth(token(node, Role.AUDITOR)))
    assert response.headers["content-type"].startswith("text/plain")
    opened = open_checkpoint(response.content, log=log_signer(node).verifier)
    assert opened.checkpoint.size == int(response.headers["x-tree-size"]) == 17
    # No checkpoint has a cosignature yet.
    none = await client.get(
        "/audit/v1/checkpoint?min_cosignatures=1", headers=_auth(token(node, Role.AUDITOR))
    )
    assert none.status_code == 404


async def test_entries_filters_pagination_and_audited_reads(
    node: Node, client: httpx.AsyncClient
) -> None:
    auth = _auth(token(node, Role.AUDITOR, "carol"))
    seen: list[dict[str, object]] = []
    cursor = None
    while True:
        params: dict[str, str | int] = {"limit": 5, "partner": "us-aisi"}
        if cursor is not None:
            params["after"] = cursor
        page = (await client.get("/audit/v1/entries", params=params, headers=auth)).json()
        seen += page["entries"]
        cursor = page["next"]
        if cursor is None:
            break
    assert [e["seq"] for e in seen] == list(range(12))
    assert {e["partner"] for e in seen} == {"us-aisi"}
    # Each served entry's leaf hash is the hash of its canonical encoding.
    for e in seen:
        leaf = base64.b64decode(str(e.pop("leaf_hash")))
        line = json.dumps(e, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        assert merkle.leaf_hash(line.encode()) == leaf
    assert _count(node, "audit.read") == 3  # 5 + 5 + 2 entries: three reads, each audited

    denied = await client.get(
        "/audit/v1/entries", params={"kind": "share.denied", "actor": "reader:alice1"}, headers=auth
    )
    assert {(e["kind"], e["actor"]) for e in denied.json()["entries"]} == {
        ("share.denied", "reader:alice1")
    }
    both = await client.get(
        "/audit/v1/entries",
        params=[("kind", "share.denied"), ("kind", "read"), ("artifact_id", "art-0003")],
        headers=auth,
    )
    assert sorted(e["kind"] for e in both.json()["entries"]) == ["read", "share.denied"]
    window = await client.get(
        "/audit/v1/entries",
        params={"since": T0.isoformat(), "until": "2026-11-27T09:00:00.000001Z"},
        headers=auth,
    )
    assert len(window.json()["entries"]) == 17

    seq_all(node)
    with node.db.engine.connect() as conn:
        read = conn.execute(
            sa.text("SELECT actor, detail FROM audit_entries WHERE kind = 'audit.read' LIMIT 1")
        ).one()
    assert read[0].startswith("auditor:carol")
    assert json.loads(read[1])["filters"]["partner"] == "us-aisi"


@pytest.mark.parametrize(
    "params",
    [
        {"limit": 100_000},
        {"limit": 0},
        {"kind": "no.such.kind"},
        {"since": "2026-11-27T09:00:00"},
        {"after": -1},
    ],
)
async def test_bad_queries_are_422(
    node: Node, client: httpx.AsyncClient, params: dict[str, object]
) -> None:
    response = await client.get(
        "/audit/v1/entries", params=params, headers=_auth(token(node, Role.AUDITOR))
    )
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"


async def test_proofs_verify_against_the_checkpoint(node: Node, client: httpx.AsyncClient) -> None:
    auth = _auth(token(node, Role.AUDITOR))
    note = (await client.get("/audit/v1/checkpoint", headers=auth)).content
    cp = open_checkpoint(note, log=log_signer(node).verifier).checkpoint
    for seq in (0, 7, cp.size - 1):
        data = (await client.get(f"/audit/v1/proof/inclusion?seq={seq}", headers=auth)).json()
        assert data["size"] == cp.size
        merkle.verify_inclusion(
            leaf_hash=base64.b64decode(data["leaf_hash"]),
            index=seq,
            size=cp.size,
            proof=[base64.b64decode(h) for h in data["proof"]],
            root=cp.root_hash,
        )
    old = (await client.get("/audit/v1/proof/inclusion?seq=0&size=5", headers=auth)).json()
    data = (await client.get("/audit/v1/proof/consistency?old=5", headers=auth)).json()
    merkle.verify_consistency(
        size1=5,
        size2=cp.size,
        root1=base64.b64decode(old["root"]),
        root2=cp.root_hash,
        proof=[base64.b64decode(h) for h in data["proof"]],
    )
    for bad in (
        "proof/inclusion?seq=17",
        "proof/inclusion?seq=0&size=99",
        "proof/consistency?old=99",
    ):
        response = await client.get(f"/audit/v1/{bad}", headers=auth)
        assert response.status_code == 422, bad


async def test_export_is_json_lines_of_canonical_entries(
    node: Node, client: httpx.AsyncClient
) -> None:
    auth = _auth(token(node, Role.AUDITOR, "dave"))
    response = await client.get("/audit/v1/export", headers=auth)
    assert response.headers["content-type"].startswith("application/jsonl")
    lines = response.content.splitlines()
    assert len(lines) == 17
    note = (await client.get("/audit/v1/checkpoint", headers=auth)).content
    root = open_checkpoint(note, log=log_signer(node).verifier).checkpoint.root_hash
    assert merkle.root_from_leaf_hashes(merkle.leaf_hash(line) for line in lines) == root
    assert _count(node, "audit.exported") == 1
    tail = await client.get("/audit/v1/export?start=15", headers=auth)
    assert [json.loads(x)["seq"] for x in tail.content.splitlines()] == [15, 16]


class _SyncASGI(httpx.BaseTransport):
    """Runs each (GET) request through the ASGI app on a fresh event loop."""

    def __init__(self, app: object) -> None:
        self._transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        async def run() -> httpx.Response:
            response = await self._transport.handle_async_request(request)
            body = b"".join([chunk async for chunk in response.stream])  # type: ignore[union-attr]
            return httpx.Response(response.status_code, headers=response.headers, content=body)

        return asyncio.run(run())


def test_the_online_verifier_reads_the_api(node: Node) -> None:
    app = create_app(node, start_workers=False)
    auth = _auth(token(node, Role.AUDITOR))
    with httpx.Client(
        transport=_SyncASGI(app), base_url="https://uk-aisi.example", headers=auth
    ) as http:
        verdict = verify_log(
            HttpSource(http), log=log_signer(node).verifier, now=int(T0.timestamp())
        )
        witnesses = http.get("/audit/v1/witnesses").json()
    assert verdict.ok, verdict.problem
    assert (verdict.size, verdict.checkpoints) == (17, 1)
    assert witnesses["log"] == {
        "origin": "entente.dev/audit/uk-aisi",
        "vkey": log_signer(node).verifier.vkey,
    }
    assert witnesses["witness"]["name"] == "entente.dev/witness/uk-aisi"
    assert _count(node, "audit.exported") == 1  # the verifier's download is on record


def test_http_source_reports_problems_in_one_line() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            403, json={"type": "urn:entente:problem:forbidden", "detail": "the reader role may not"}
        )

    http = httpx.Client(transport=httpx.MockTransport(handler), base_url="http://node")
    with pytest.raises(AuditSourceError, match="answered 403: the reader role may not"):
        list(HttpSource(http).checkpoints(None))
