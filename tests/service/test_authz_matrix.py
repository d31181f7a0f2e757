"""Every /v1 and /audit/v1 route x every role (and no, revoked, malformed tokens): exact status."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlmodel import select

from service.models import Token
from service.tokens import Role, revoke_token
from tests.service.nodekit import CREATED, UPLOAD_HEADERS, Kit, make_node, pin, upload_body

P, R, A, D = Role.PUBLISHER, Role.READER, Role.AUDITOR, Role.ADMIN
ALL = {P, R, A, D}

# (method, path template, roles allowed, status when allowed)
ROUTES = [
    ("GET", "/v1/artifacts", ALL, 200),
    ("POST", "/v1/artifacts", {P}, 201),
    ("GET", "/v1/artifacts/{id}", ALL, 200),
    ("GET", "/v1/artifacts/{id}/content", {R}, 200),
    ("POST", "/v1/artifacts/{id}/revoke", {P, D}, 200),
    ("GET", "/v1/partners", ALL, 200),
    ("GET", "/v1/sync", {P, A, D}, 200),
    ("GET", "/audit/v1/checkpoint", {A, D}, 200),
    ("GET", "/audit/v1/entries", {A, D}, 200),
    ("GET", "/audit/v1/export", {A, D}, 200),
    ("GET", "/audit/v1/bundle", {A, D}, 200),
    ("GET", "/v1/admin/partners", {A, D}, 200),
    ("GET", "/v1/admin/agreements", {A, D}, 200),
    ("GET", "/v1/admin/webhooks", {D}, 200),
]
PRINCIPALS = [*(r.value for r in Role), "none", "revoked", "malformed"]

META = json.dumps(
    {
        "title": "matrix",
        "tlp": "TLP:GREEN",
        "topics": ["evaluation"],
        "purposes": ["evaluation"],
        "partners": ["us-aisi"],
    }
)


@pytest.fixture(scope="module")
def kit(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kit]:
    root: Path = tmp_path_factory.mktemp("matrix")
    uk = make_node(root, "uk-aisi")
    pin(uk, make_node(root, "us-aisi"))
    # A revoked token, to check it is refused everywhere.
    with uk.node.db.session() as session:
        row = session.exec(select(Token).where(Token.role == "reader")).first()
        assert row is not None
        revoke_token(session, token_id=row.id, now=uk.node.now(), actor="test")
    uk.tokens_revoked = uk.tokens[R]  # type: ignore[attr-defined]
    from service.tokens import create_token

    with uk.node.db.session() as session:
        _row, uk.tokens[R] = create_token(
            session, role=R, name="reader-2", now=uk.node.now(), actor="test"
        )
    from service.audit.sequencer import run_sequencer

    run_sequencer(uk.node)  # so that a signed checkpoint exists
    yield uk
    while CREATED:
        CREATED.pop().db.dispose()


@pytest.fixture(autouse=True)
def _dispose_nodes() -> None:  # overrides the per-test disposal: this module's node lives on
    return None


def _headers(kit: Kit, who: str) -> dict[str, str]:
    if who == "none":
        return {}
    if who == "revoked":
        return {"Authorization": f"Bearer {kit.tokens_revoked}"}  # type: ignore[attr-defined]
    if who == "malformed":
        return {"Authorization": "Bearer not-a-token"}
    return kit.auth(Role(who))


async def _artifact(kit: Kit) -> str:
    async with kit.client() as c:
        r = await c.post(
            "/v1/artifacts",
            content=upload_body(META, b"matrix content"),
            headers={**UPLOAD_HEADERS, **kit.auth(P)},
        )
    assert r.status_code == 201, r.text
    ident: str = r.json()["id"]
    return ident


@pytest.mark.parametrize("who", PRINCIPALS)
@pytest.mark.parametrize(
    ("method", "path", "allowed", "ok"), ROUTES, ids=[f"{m} {p}" for m, p, *_ in ROUTES]
)
async def test_route_x_principal(
    kit: Kit, method: str, path: str, allowed: set[Role], ok: int, who: str
) -> None:
    url = path.format(id=await _artifact(kit)) if "{id}" in path else path
    headers = _headers(kit, who)
    content = None
    if method == "POST" and url == "/v1/artifacts":
        content = upload_body(META, b"x")
        headers = {**headers, **UPLOAD_HEADERS}
    async with kit.client() as c:
        r = await c.request(method, url, headers=headers, content=content)
    if who in ("none", "revoked", "malformed"):
        expected = 401
    else:
        expected = ok if Role(who) in allowed else 403
    assert r.status_code == expected, r.text
    if expected >= 400:
        assert r.headers["content-type"] == "application/problem+json"
        assert r.json()["status"] == expected
    if expected == 401:
        assert r.headers["www-authenticate"].startswith("Bearer")
