"""L6: behind the documented TLS ingress the node sees plain HTTP, yet its users reach it over
https. When the node's public URL (``entente init --url``) is https, console cookies are
``Secure`` and every response carries Strict-Transport-Security; on a plain-HTTP node neither
(a Secure cookie would never come back, and HSTS over HTTP is ignored anyway)."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import httpx

from service.app import create_app
from service.tokens import Role
from tests.service.nodekit import Kit, make_node


def _https_kit(root: Path) -> Kit:
    kit = make_node(root, "uk-aisi")
    kit.node.home = dataclasses.replace(kit.node.home, url="https://uk.example")
    return Kit(kit.node, create_app(kit.node, start_workers=False), kit.tokens)


def _behind_ingress(kit: Kit) -> httpx.AsyncClient:
    """What the node sees behind a TLS-terminating ingress: plain HTTP."""
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=kit.app), base_url="http://uk")


def _csrf(text: str) -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', text)
    assert match
    return match.group(1)


async def test_console_cookies_are_secure_when_the_public_url_is_https(tmp_path: Path) -> None:
    kit = _https_kit(tmp_path)
    async with _behind_ingress(kit) as client:
        form = await client.get("/ui/login")
        assert "Secure" in form.headers["set-cookie"]
        login = form.headers["set-cookie"].split(";", 1)[0]
        r = await client.post(
            "/ui/login",
            data={"token": kit.tokens[Role.AUDITOR], "csrf": _csrf(form.text)},
            headers={"Cookie": login},
        )
        assert r.status_code == 303
        cookies = r.headers.get_list("set-cookie")
        session = next(c for c in cookies if c.startswith("__Host-entente_console="))
        assert "Secure" in session
        assert all("Secure" in c for c in cookies)


async def test_secure_console_cookies_are_host_prefixed(tmp_path: Path) -> None:
    """A sibling subdomain can set a cookie for the parent domain and any path, and so plant a
    session of its own (its holder's token) in the browser; it cannot set a ``__Host-`` one
    (Secure, path ``/``, no domain), and an https node reads no other."""
    kit = _https_kit(tmp_path)
    async with _behind_ingress(kit) as client:
        form = await client.get("/ui/login")
        [login_cookie] = form.headers.get_list("set-cookie")
        assert login_cookie.startswith("__Host-entente_console_login=")
        r = await client.post(
            "/ui/login",
            data={"token": kit.tokens[Role.AUDITOR], "csrf": _csrf(form.text)},
            headers={"Cookie": login_cookie.split(";", 1)[0]},
        )
        assert r.status_code == 303
        cookies = r.headers.get_list("set-cookie")
        for cookie in cookies:
            attributes = [a.strip().lower() for a in cookie.split(";")[1:]]
            assert cookie.startswith("__Host-"), cookie
            assert "path=/" in attributes and "secure" in attributes, cookie
            assert not any(a.startswith("domain=") for a in attributes), cookie
        session = next(c for c in cookies if c.startswith("__Host-entente_console="))
        value = session.split(";", 1)[0].split("=", 1)[1]
        client.cookies.clear()
        signed_in = await client.get("/ui/", headers={"Cookie": f"__Host-entente_console={value}"})
        assert signed_in.status_code == 200
        planted = await client.get("/ui/", headers={"Cookie": f"entente_console={value}"})
        assert planted.status_code == 303 and planted.headers["location"] == "/ui/login"


async def test_every_response_carries_hsts_when_the_public_url_is_https(tmp_path: Path) -> None:
    kit = _https_kit(tmp_path)
    async with _behind_ingress(kit) as client:
        for method, path in [
            ("GET", "/healthz"),
            ("GET", "/.well-known/entente.json"),
            ("GET", "/ui/login"),
            ("GET", "/ui/audit"),  # a redirect
            ("GET", "/v1/artifacts"),  # a refusal (no token)
            ("GET", "/no/such/route"),
        ]:
            r = await client.request(method, path)
            hsts = r.headers.get("strict-transport-security", "")
            assert re.fullmatch(r"max-age=(\d+); includeSubDomains", hsts), (path, hsts)
            assert int(hsts.split("=")[1].split(";")[0]) >= 31536000


async def test_a_plain_http_node_sends_neither(tmp_path: Path) -> None:
    kit = make_node(tmp_path, "uk-aisi")
    async with kit.client() as client:
        r = await client.get("/ui/login")
        assert "Secure" not in r.headers["set-cookie"]
        assert "strict-transport-security" not in r.headers
        assert "strict-transport-security" not in (await client.get("/healthz")).headers


async def test_every_answer_says_nosniff(tmp_path: Path) -> None:
    """No browser may guess another type than an answer declares, on any route or none: the
    console said so, the API, the metrics and the problem documents did not."""
    kit = make_node(tmp_path, "uk-aisi")
    async with kit.client() as client:
        for method, path, headers in [
            ("GET", "/healthz", {}),
            ("GET", "/.well-known/entente.json", {}),
            ("GET", "/metrics", kit.auth(Role.METRICS)),
            ("GET", "/v1/artifacts", kit.auth(Role.READER)),
            ("GET", "/v1/artifacts", {}),  # a refusal (no token)
            ("POST", "/healthz", {}),  # a 405
            ("GET", "/no/such/route", {}),
            ("GET", "/ui/login", {}),
        ]:
            r = await client.request(method, path, headers=headers)
            assert r.headers.get_list("x-content-type-options") == ["nosniff"], (path, r.headers)
