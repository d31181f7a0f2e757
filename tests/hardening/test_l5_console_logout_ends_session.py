"""L5: signing out of the console ends the session on the server. A copy of the cookie taken
before the sign-out (a shared machine, a stolen cookie jar) no longer works: not in the same
process, not after a restart, and not at another replica of the node (one database)."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import sqlalchemy as sa

from service.app import create_app
from service.console._session import SESSION_COOKIE
from service.console._session_store import MAX_LIVE_PER_TOKEN
from service.models import AuditEntry
from service.tokens import Role
from tests.service.nodekit import Kit, make_node
from tests.service.test_console import _csrf, sign_in


def _client(app: object) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://uk-aisi")  # type: ignore[arg-type]


def _refusals(kit: Kit) -> list[dict[str, object]]:
    with kit.node.db.session() as session:
        rows = session.scalars(
            sa.select(AuditEntry).where(AuditEntry.kind == "auth.refused")  # type: ignore[arg-type]
        )
        return [json.loads(r.detail) for r in rows]


async def _copied_cookie_after_logout(kit: Kit) -> str:
    async with _client(kit.app) as browser:
        await sign_in(browser, kit.tokens[Role.AUDITOR])
        page = await browser.get("/ui/")
        assert page.status_code == 200
        copied = browser.cookies[SESSION_COOKIE]
        async with _client(kit.app) as copy:  # the copy works while the session lasts
            r = await copy.get("/ui/", headers={"Cookie": f"{SESSION_COOKIE}={copied}"})
            assert r.status_code == 200
        r = await browser.post("/ui/logout", data={"csrf": _csrf(page)})
        assert r.status_code == 303
    return copied


async def test_a_cookie_copied_before_logout_is_refused_after_it(
    tmp_path: Path, db_url: str
) -> None:
    kit = make_node(tmp_path, "uk-aisi", db_url=db_url)
    copied = await _copied_cookie_after_logout(kit)
    async with _client(kit.app) as thief:
        r = await thief.get("/ui/audit", headers={"Cookie": f"{SESSION_COOKIE}={copied}"})
        assert r.status_code == 303
        assert r.headers["location"] == "/ui/login"
        assert "Max-Age=0" in r.headers["set-cookie"]
    assert any(
        d.get("path") == "/ui/audit" and "ended" in str(d.get("reason")) for d in _refusals(kit)
    )


async def test_the_logout_holds_across_a_restart_and_at_another_replica(
    tmp_path: Path, db_url: str
) -> None:
    kit = make_node(tmp_path, "uk-aisi", db_url=db_url)
    copied = await _copied_cookie_after_logout(kit)
    replica = create_app(kit.node, start_workers=False)  # a new process on the same database
    async with _client(replica) as thief:
        r = await thief.get("/ui/", headers={"Cookie": f"{SESSION_COOKIE}={copied}"})
        assert r.status_code == 303
        assert "Max-Age=0" in r.headers["set-cookie"]


async def test_logout_ends_only_its_own_session(tmp_path: Path) -> None:
    kit = make_node(tmp_path, "uk-aisi")
    async with _client(kit.app) as other:
        await sign_in(other, kit.tokens[Role.AUDITOR])
        await _copied_cookie_after_logout(kit)  # the same token, another browser, signs out
        assert (await other.get("/ui/")).status_code == 200


async def test_live_sessions_per_token_are_bounded(tmp_path: Path) -> None:
    kit = make_node(tmp_path, "uk-aisi")
    cookies = []
    for _ in range(MAX_LIVE_PER_TOKEN + 1):
        async with _client(kit.app) as browser:
            await sign_in(browser, kit.tokens[Role.ADMIN])
            cookies.append(browser.cookies[SESSION_COOKIE])
    async with _client(kit.app) as client:
        oldest = await client.get("/ui/", headers={"Cookie": f"{SESSION_COOKIE}={cookies[0]}"})
        newest = await client.get("/ui/", headers={"Cookie": f"{SESSION_COOKIE}={cookies[-1]}"})
    assert oldest.status_code == 303, "the oldest session was ended to stay within the bound"
    assert newest.status_code == 200
    with kit.node.db.engine.connect() as conn:
        live = conn.execute(
            sa.text("SELECT count(*) FROM console_sessions WHERE ended_at IS NULL")
        ).scalar_one()
    assert live == MAX_LIVE_PER_TOKEN
