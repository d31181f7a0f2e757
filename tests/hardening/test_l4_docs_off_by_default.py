"""L4: the interactive API documentation (Swagger UI, ReDoc) loads scripts from outside CDNs
without integrity; on the console's origin such a script could read the console. So the pages are
off by default (``ENTENTE_DOCS_ENABLED`` turns them on, for a development node), nothing the
node serves by default names an outside script, and the console's CSP allows scripts from the
node itself only."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.service.nodekit import Kit, make_node

CDN_HINTS = ("cdn.", "jsdelivr", "unpkg", "googleapis", "fastapi.tiangolo.com")


@pytest.fixture
def kit(tmp_path: Path) -> Kit:
    return make_node(tmp_path, "uk-aisi")


@pytest.mark.parametrize("path", ["/docs", "/redoc", "/docs/oauth2-redirect"])
async def test_documentation_pages_are_off_by_default(kit: Kit, path: str) -> None:
    async with kit.client() as client:
        r = await client.get(path)
    assert r.status_code == 404
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["type"] == "urn:entente:problem:not-found"
    assert not any(hint in r.text for hint in CDN_HINTS)
    # Like any unknown path, a scan: answered, and (by design) not an audit entry.


async def test_no_default_page_names_an_outside_script(kit: Kit) -> None:
    async with kit.client() as client:
        for path in ("/", "/ui/login", "/openapi.json", "/healthz"):
            r = await client.get(path)
            assert not any(hint in r.text for hint in CDN_HINTS), path


async def test_the_console_csp_allows_only_the_nodes_own_scripts(kit: Kit) -> None:
    async with kit.client() as client:
        r = await client.get("/ui/login")
    directives = {
        d.strip().split()[0]: d.strip().split()[1:]
        for d in r.headers["content-security-policy"].split(";")
        if d.strip()
    }
    assert directives["script-src"] == ["'self'"]
    assert directives["default-src"] == ["'self'"]
    assert directives["connect-src"] == ["'self'"]


async def test_a_setting_turns_the_documentation_on(tmp_path: Path) -> None:
    kit = make_node(tmp_path, "uk-aisi", docs_enabled=True)
    async with kit.client() as client:
        assert (await client.get("/docs")).status_code == 200
        assert (await client.get("/redoc")).status_code == 200
