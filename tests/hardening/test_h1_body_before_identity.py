"""H1: nothing is buffered or parsed for a request before its identity is checked.

Found: ``POST /v1/artifacts/{id}/share`` declared a FastAPI body model, and FastAPI reads and
parses a declared body before it resolves any dependency, so before the token was checked:
one anonymous 300 MiB body took a node from 155 MB to a 1.07 GB peak. Now no route declares a
body parameter (a structural test walks every route so the class cannot come back), bodies are
read by ``service.api.bodies`` after authentication, with a per-route limit that refuses a larger
``Content-Length`` before a byte is read. The memory of a real node is measured in
``test_h1_large_body_memory.py``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute, RouteContext, iter_route_contexts

from service.tokens import Role
from tests.service.nodekit import CREATED, Kit, make_node

# Routes that read a body before any identity, by nature: signing in (the form *is* the
# credential) and signing out, both bounded (service.console._auth.MAX_FORM_BYTES); and the C2SP
# witness for logs that are no partner's, whose body's checkpoint signature is the credential, as
# the spec has it (bounded by ADD_CHECKPOINT_MAX_BYTES, checked below).
PRE_IDENTITY_FORMS = {
    ("POST", "/ui/login"),
    ("POST", "/ui/logout"),
    ("POST", "/witness/v1/add-checkpoint"),
}
CHUNK = 64 << 10  # bytes per ASGI body message
CHUNKS = 64  # 4 MiB offered per request


@pytest.fixture(scope="module")
def kit(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kit]:
    yield make_node(tmp_path_factory.mktemp("h1"), "uk-aisi")
    while CREATED:
        CREATED.pop().db.dispose()


@pytest.fixture(autouse=True)
def _dispose_nodes() -> None:  # the module's node lives as long as the module fixture
    return None


def _routes(kit: Kit) -> list[RouteContext]:
    """Every API route as the app serves it (included routers flattened, prefixes applied)."""
    routes = [
        c for c in iter_route_contexts(kit.app.routes) if isinstance(c.original_route, APIRoute)
    ]
    assert len(routes) > 30, "the app's routes were not found"
    return routes


def _body_params(dependant: Dependant) -> list[str]:
    """Body parameters of a dependant and of every dependency under it."""
    names = [p.name for p in dependant.body_params]
    for sub in dependant.dependencies:
        names += _body_params(sub)
    return names


def test_no_route_declares_a_body_parameter(kit: Kit) -> None:
    declared = []
    for route in _routes(kit):
        if getattr(route, "body_field", None) is not None or _body_params(route.dependant):
            declared.append(f"{sorted(route.methods)} {route.path}")
    assert declared == [], f"routes that FastAPI would read a body for before auth: {declared}"


def test_bodies_stay_described_in_openapi(kit: Kit) -> None:
    """schemathesis generates bodies from these (tests/hardening/test_fuzz.py)."""
    paths = kit.app.openapi()["paths"]
    onward = paths["/v1/artifacts/{artifact_id}/share"]["post"]["requestBody"]
    schema = onward["content"]["application/json"]["schema"]
    assert schema["required"] == ["partners"] and schema["additionalProperties"] is False
    assert "multipart/form-data" in paths["/v1/artifacts"]["post"]["requestBody"]["content"]


async def _call(
    kit: Kit, method: str, path: str, headers: dict[str, str], *, length: bool = True
) -> tuple[int, int]:
    """Offer ``CHUNKS`` body chunks to the ASGI app; (status, bytes the app pulled)."""
    raw = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    if length:
        raw.append((b"content-length", str(CHUNK * CHUNKS).encode()))
    scope: dict[str, Any] = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
        "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
        "root_path": "", "headers": raw, "client": ("127.0.0.1", 5000),
        "server": ("127.0.0.1", 80),
    }  # fmt: skip
    pulled = 0
    offered = 0
    status = 0

    async def receive() -> dict[str, Any]:
        nonlocal pulled, offered
        if offered >= CHUNKS:
            return {"type": "http.disconnect"}
        offered += 1
        pulled += CHUNK
        return {"type": "http.request", "body": b"[" * CHUNK, "more_body": offered < CHUNKS}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await kit.app(scope, receive, send)
    return status, pulled


def _concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "x", path)


async def test_anonymous_bodies_are_never_read(kit: Kit) -> None:
    """Every route that takes a body: an anonymous request is refused before any is read."""
    tried = []
    for route in _routes(kit):
        for method in sorted((route.methods or set()) & {"POST", "PUT", "PATCH", "DELETE"}):
            path = str(route.path)
            if (method, path) in PRE_IDENTITY_FORMS:
                continue
            status, pulled = await _call(kit, method, _concrete(path), {})
            assert status in (401, 403), (method, path, status)
            assert pulled <= CHUNK, f"{method} {path} read {pulled} bytes before auth"
            tried.append(path)
    assert "/v1/artifacts/{artifact_id}/share" in tried and "/v1/artifacts" in tried
    assert "/federation/v1/inbox" in tried and "/federation/v1/notices" in tried


async def test_the_public_witness_reads_a_bounded_body(kit: Kit) -> None:
    """A declared body above the add-checkpoint bound is refused unread; one without a length
    is refused once it passes the bound (140 KiB), not at its end (4 MiB offered)."""
    from service.audit.witness import ADD_CHECKPOINT_MAX_BYTES

    path = "/witness/v1/add-checkpoint"
    assert await _call(kit, "POST", path, {}) == (413, 0)
    status, pulled = await _call(kit, "POST", path, {}, length=False)
    assert status == 413 and pulled <= ADD_CHECKPOINT_MAX_BYTES + CHUNK, pulled


async def test_onward_share_refuses_a_large_declared_body_unread(kit: Kit) -> None:
    path = "/v1/artifacts/art_x/share"
    auth = {**kit.auth(Role.PUBLISHER), "Content-Type": "application/json"}
    status, pulled = await _call(kit, "POST", path, auth)
    assert (status, pulled) == (413, 0)
    # Without a Content-Length: refused once the body passes the limit (64 KiB), not at its end.
    status, pulled = await _call(kit, "POST", path, auth, length=False)
    assert status == 413 and pulled <= 2 * CHUNK, pulled


async def test_onward_share_body_is_strict_json(kit: Kit) -> None:
    async with kit.client() as c:
        for body, why in [
            (b'{"partners":["us-aisi"],"partners":["ca-aisi"]}', "duplicate"),
            (b"[" * 10_000 + b"]" * 10_000, "nested"),
            (b'{"partners": ["us-aisi"], "extra": 1}', "extra"),
        ]:
            r = await c.post(
                "/v1/artifacts/art_x/share",
                content=body,
                headers={**kit.auth(Role.PUBLISHER), "Content-Type": "application/json"},
            )
            assert r.status_code == 422, r.text
            assert r.headers["content-type"] == "application/problem+json"
            assert why in r.json()["detail"].lower(), r.json()
