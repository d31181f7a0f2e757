"""The ``/ui`` console in process: sign-in, cookies, CSRF, refusals, pages, escaping, headers.

The browser-side verification runs in Chromium (tests/browser); here the data it is given is
checked with the project's own verifier, so both ends of the contract are covered.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from crypto import merkle
from crypto.note import NoteVerifier, open_checkpoint
from service.audit.entries import encode_leaf
from service.audit.log import record
from service.audit.sequencer import run_sequencer
from service.console._charts import bar_chart
from service.console._queries import activity
from service.console._session import ConsoleKeys, hkdf_sha256
from service.models import AuditEntry
from service.tokens import Role, revoke_token
from tests.service.nodekit import Kit, make_node, pin

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'; "
    "object-src 'none'"
)
EVIL = '<script>alert("x")</script>'


def _kit(root: Path, db_url: str | None) -> Kit:
    uk = make_node(root, "uk-aisi", db_url=db_url)
    for other in ("us-aisi", "ca-aisi"):
        pin(uk, make_node(root, other))
    run_sequencer(uk.node)
    return uk


@pytest.fixture
def kit(tmp_path: Path) -> Kit:
    """The UK node (SQLite), pinning the US and Canada."""
    return _kit(tmp_path, None)


@pytest.fixture
def db_kit(tmp_path: Path, db_url: str) -> Kit:
    """The same, on each database backend (for the pages that query the log)."""
    return _kit(tmp_path, db_url)


def _csrf(page: httpx.Response) -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert match, "the page has a CSRF field"
    return match.group(1)


async def sign_in(client: httpx.AsyncClient, token: str) -> httpx.Response:
    form = await client.get("/ui/login")
    assert form.status_code == 200
    return await client.post("/ui/login", data={"token": token, "csrf": _csrf(form)})


class InlineCode(HTMLParser):
    """Inline scripts, styles and event handlers in a page (which the CSP would block)."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []

    @classmethod
    def find(cls, page: str) -> list[str]:
        parser = cls()
        parser.feed(page)
        return parser.found

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        names = dict(attrs)
        if tag == "style" or "style" in names:
            self.found.append(f"inline style on <{tag}>")
        if tag == "script" and "src" not in names and names.get("type") != "application/json":
            self.found.append("inline <script>")
        self.found.extend(f"{name} on <{tag}>" for name in names if name.startswith("on"))
        if any((v or "").strip().lower().startswith("javascript:") for v in names.values()):
            self.found.append(f"javascript: URL on <{tag}>")


def audit_rows(kit: Kit, kind: str) -> list[AuditEntry]:
    # Anonymous refusals after a source's first in a window are summarised when the window
    # ends (M2): end it now.
    kit.app.state.refusals.flush(force=True)
    with kit.node.db.session() as session:
        query = sa.select(AuditEntry).where(AuditEntry.kind == kind).order_by(AuditEntry.id)  # type: ignore[arg-type]
        return list(session.scalars(query))


def details(rows: list[AuditEntry]) -> list[dict[str, object]]:
    return [json.loads(r.detail) for r in rows]


# --- sessions and keys ----------------------------------------------------------------------


def test_hkdf_matches_rfc5869_test_case_1() -> None:
    okm = hkdf_sha256(
        bytes.fromhex("0b" * 22),
        salt=bytes.fromhex("000102030405060708090a0b0c"),
        info=bytes.fromhex("f0f1f2f3f4f5f6f7f8f9"),
        length=42,
    )
    assert okm.hex() == (
        "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865"
    )


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda v: v[:-2] + ("A" if v[-2] != "A" else "B") + v[-1], "bad-signature"),
        (lambda v: "v2" + v[2:], "malformed"),
        (lambda v: v.replace(".", "", 1), "malformed"),
        (lambda v: v + "x" * 600, "malformed"),
    ],
)
def test_session_cookie_refuses_changes(change: object, reason: str) -> None:
    keys = ConsoleKeys(seed=bytes(32), node_id="uk-aisi")
    value = keys.issue(token_id="tok_12345678", now=1_000_000)
    assert keys.open(value, now=1_000_001).token_id == "tok_12345678"
    with pytest.raises(ValueError, match=reason):
        keys.open(change(value), now=1_000_001)  # type: ignore[operator]


def test_session_cookie_expires_and_is_bound_to_its_node() -> None:
    keys = ConsoleKeys(seed=bytes(32), node_id="uk-aisi")
    value = keys.issue(token_id="tok_12345678", now=1_000_000)
    with pytest.raises(ValueError, match="expired"):
        keys.open(value, now=1_000_000 + 8 * 3600)
    other = ConsoleKeys(seed=bytes(32), node_id="us-aisi")
    with pytest.raises(ValueError, match=r"bad-signature|other-node"):
        other.open(value, now=1_000_001)
    rotated = ConsoleKeys(seed=bytes([1]) * 32, node_id="uk-aisi")
    with pytest.raises(ValueError, match="bad-signature"):
        rotated.open(value, now=1_000_001)
    assert keys.csrf_for_session(value) != keys.csrf_for_login(value)
    assert not keys.check_csrf(None, keys.csrf_for_session(value))


# --- signing in and out ---------------------------------------------------------------------


async def test_anonymous_visit_goes_to_sign_in_and_is_audited(kit: Kit) -> None:
    async with kit.client() as client:
        r = await client.get("/ui/audit")
    assert r.status_code == 303
    assert r.headers["location"] == "/ui/login"
    refused = details(audit_rows(kit, "auth.refused"))
    assert {"reason": "missing", "via": "console", "path": "/ui/audit", "method": "GET"} in refused


async def test_sign_in_sets_a_strict_httponly_cookie_without_the_token(kit: Kit) -> None:
    token = kit.tokens[Role.AUDITOR]
    async with kit.client() as client:
        form = await client.get("/ui/login")
        login_cookie = form.headers["set-cookie"]
        assert "HttpOnly" in login_cookie and "SameSite=strict" in login_cookie
        r = await client.post("/ui/login", data={"token": token, "csrf": _csrf(form)})
        assert r.status_code == 303 and r.headers["location"] == "/ui/"
        cookies = r.headers.get_list("set-cookie")
        session = next(c for c in cookies if c.startswith("entente_console="))
        for flag in ("HttpOnly", "SameSite=strict", "Path=/ui", "Max-Age=28800"):
            assert flag in session
        assert "Secure" not in session  # plain HTTP: a Secure cookie would never come back
        secret = token.split("_", 2)[2]  # ent_<handle>_<secret>, and the secret may hold "_"
        assert token not in session and secret not in session
        page = await client.get("/ui/")
        assert page.status_code == 200
        assert "Signed in as <strong>auditor-user</strong> (auditor)" in page.text


async def test_cookies_are_secure_over_https(kit: Kit) -> None:
    transport = httpx.ASGITransport(app=kit.app)
    async with httpx.AsyncClient(transport=transport, base_url="https://uk-aisi") as client:
        form = await client.get("/ui/login")
        assert "Secure" in form.headers["set-cookie"]
        r = await client.post(
            "/ui/login", data={"token": kit.tokens[Role.ADMIN], "csrf": _csrf(form)}
        )
        session = next(
            c for c in r.headers.get_list("set-cookie") if c.startswith("__Host-entente_console=")
        )
        assert "Secure" in session
        assert (await client.get("/ui/")).status_code == 200


async def test_sign_in_without_the_forms_csrf_token_is_refused(kit: Kit) -> None:
    async with kit.client() as client:
        await client.get("/ui/login")
        for csrf in ("", "forged", ConsoleKeys(seed=bytes(32), node_id="x").csrf_for_login("n")):
            r = await client.post("/ui/login", data={"token": kit.tokens[Role.ADMIN], "csrf": csrf})
            assert r.status_code == 403
            assert "load it again" in r.text
            assert "entente_console=" not in r.headers.get("set-cookie", "")
    refused = [d for d in details(audit_rows(kit, "request.refused")) if d["path"] == "/ui/login"]
    assert len(refused) == 3


@pytest.mark.parametrize(
    "headers",
    [{"Sec-Fetch-Site": "cross-site"}, {"Origin": "http://evil.example"}],
    ids=["sec-fetch-site", "origin"],
)
async def test_cross_site_posts_are_refused(kit: Kit, headers: dict[str, str]) -> None:
    async with kit.client() as client:
        form = await client.get("/ui/login")
        r = await client.post(
            "/ui/login",
            data={"token": kit.tokens[Role.ADMIN], "csrf": _csrf(form)},
            headers=headers,
        )
    assert r.status_code == 403
    assert "from another" in r.text


async def test_same_origin_post_with_origin_null_is_accepted(kit: Kit) -> None:
    # Referrer-Policy: no-referrer makes browsers send "Origin: null" on same-origin forms.
    async with kit.client() as client:
        form = await client.get("/ui/login")
        r = await client.post(
            "/ui/login",
            data={"token": kit.tokens[Role.ADMIN], "csrf": _csrf(form)},
            headers={"Origin": "null", "Sec-Fetch-Site": "same-origin"},
        )
    assert r.status_code == 303


@pytest.mark.parametrize("role", [Role.READER, Role.PUBLISHER])
async def test_other_roles_are_refused_and_audited(kit: Kit, role: Role) -> None:
    async with kit.client() as client:
        r = await sign_in(client, kit.tokens[role])
        assert r.status_code == 403
        assert f"the <strong>{role.value}</strong> role may not use the console" in r.text
        assert "entente_console=" not in r.headers.get("set-cookie", "")
        assert (await client.get("/ui/")).status_code == 303
    rows = audit_rows(kit, "auth.refused")
    assert any(
        r.actor.startswith(f"{role.value}:") and "may not use the console" in r.detail for r in rows
    )


@pytest.mark.parametrize(
    ("token", "reason"),
    [("ent_00000000_" + "A" * 43, "unknown"), ("not a token", "malformed"), ("", "missing")],
)
async def test_bad_tokens_are_refused_and_audited(kit: Kit, token: str, reason: str) -> None:
    async with kit.client() as client:
        r = await sign_in(client, token)
    assert r.status_code == 401
    assert "Not signed in" in r.text
    assert 'aria-invalid="true"' in r.text
    assert {"reason": reason, "via": "console", "path": "/ui/login", "method": "POST"} in details(
        audit_rows(kit, "auth.refused")
    )


async def test_sign_out_needs_csrf_and_clears_the_cookie(kit: Kit) -> None:
    async with kit.client() as client:
        await sign_in(client, kit.tokens[Role.AUDITOR])
        page = await client.get("/ui/")
        r = await client.post("/ui/logout", data={"csrf": "forged"})
        assert r.status_code == 403
        assert (await client.get("/ui/")).status_code == 200, "still signed in"
        r = await client.post("/ui/logout", data={"csrf": _csrf(page)})
        assert r.status_code == 303
        assert r.headers["location"] == "/ui/login?signed_out=1"
        cleared = r.headers["set-cookie"]
        assert cleared.startswith("entente_console=") and "Max-Age=0" in cleared
        assert (await client.get("/ui/")).status_code == 303
        assert "You are signed out." in (await client.get("/ui/login?signed_out=1")).text


async def test_revoking_the_token_ends_the_session_at_once(kit: Kit) -> None:
    async with kit.client() as client:
        await sign_in(client, kit.tokens[Role.AUDITOR])
        assert (await client.get("/ui/")).status_code == 200
        token_id = "tok_" + kit.tokens[Role.AUDITOR].split("_")[1]
        with kit.node.db.session() as session:
            revoke_token(session, token_id=token_id, now=kit.node.now(), actor="test")
        r = await client.get("/ui/")
        assert r.status_code == 303
        assert "Max-Age=0" in r.headers["set-cookie"]
    assert any(d.get("reason") == "revoked" for d in details(audit_rows(kit, "auth.refused")))


async def test_a_tampered_session_cookie_is_refused(kit: Kit) -> None:
    async with kit.client() as client:
        await sign_in(client, kit.tokens[Role.AUDITOR])
        version, body, mac = client.cookies["entente_console"].split(".")
        client.cookies.clear()
        raw = base64.urlsafe_b64decode(body + "==")
        longer = raw.replace(b"|", b"|9", 3).replace(b"|9", b"|", 2)  # a later expiry
        forged = ".".join([version, base64.urlsafe_b64encode(longer).rstrip(b"=").decode(), mac])
        r = await client.get("/ui/", headers={"Cookie": f"entente_console={forged}"})
        assert r.status_code == 303
        assert "Max-Age=0" in r.headers["set-cookie"]
    reasons = [d.get("reason") for d in details(audit_rows(kit, "auth.refused"))]
    assert "session bad-signature" in reasons


async def test_form_bodies_are_bounded(kit: Kit) -> None:
    async with kit.client() as client:
        r = await client.post("/ui/login", data={"token": "x" * 9000, "csrf": "y"})
        assert r.status_code == 413
        r = await client.post("/ui/login", json={"token": "x"})
        assert r.status_code == 422
        assert "text/html" in r.headers["content-type"]


# --- pages ----------------------------------------------------------------------------------


@pytest.fixture
async def client(kit: Kit) -> AsyncIterator[httpx.AsyncClient]:
    """A client signed in as an auditor."""
    async with kit.client() as c:
        await sign_in(c, kit.tokens[Role.AUDITOR])
        yield c


@pytest.fixture
async def db_client(db_kit: Kit) -> AsyncIterator[httpx.AsyncClient]:
    async with db_kit.client() as c:
        await sign_in(c, db_kit.tokens[Role.AUDITOR])
        yield c


def add_hostile_entry(kit: Kit) -> int:
    with kit.node.db.session() as session:
        record(
            session,
            kind="share.denied",
            actor=EVIL,
            partner="ca-aisi",
            artifact_id="art-<x>",
            decision="deny",
            rule="declaration-only-clear-green",
            clause='Para 8 "><img src=x onerror=alert(1)>',
            detail={"title": "</script><script>alert(2)</script>"},
            now=kit.node.now(),
        )
    run_sequencer(kit.node)
    with kit.node.db.session() as session:
        seq = session.scalar(sa.select(sa.func.max(AuditEntry.seq)).where(AuditEntry.actor == EVIL))  # type: ignore[arg-type]
    assert seq is not None
    return int(seq)


async def test_every_page_sends_the_security_headers(kit: Kit, client: httpx.AsyncClient) -> None:
    seq = add_hostile_entry(kit)
    paths = ["/ui/", "/ui/audit", f"/ui/audit/{seq}", "/ui/policies", "/ui/no-such-page"]
    for path in [*paths, "/ui/static/console.css", "/ui/static/verify.js", "/ui/login"]:
        r = await client.get(path)
        assert r.headers["content-security-policy"] == CSP, path
        assert r.headers["x-content-type-options"] == "nosniff", path
        assert r.headers["referrer-policy"] == "no-referrer", path
        assert r.headers["x-frame-options"] == "DENY", path
    for path in paths:
        r = await client.get(path)
        assert r.headers["cache-control"] == "no-store", path
        # CSP forbids inline script and style: the pages must not rely on them.
        assert InlineCode.find(r.text) == [], path


async def test_pages_escape_what_the_log_holds(db_kit: Kit, db_client: httpx.AsyncClient) -> None:
    seq = add_hostile_entry(db_kit)
    table = await db_client.get("/ui/audit", params={"kind": "share.denied"})
    entry = await db_client.get(f"/ui/audit/{seq}")
    for page in (table, entry):
        assert page.status_code == 200
        assert EVIL not in page.text and "<img src=x" not in page.text
        assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in page.text
    assert "</script><script>alert(2)" not in entry.text
    assert "\\u003c/script\\u003e" in entry.text  # the embedded JSON is HTML-safe


async def test_audit_table_filters_and_pages_and_is_an_audited_read(
    db_kit: Kit, db_client: httpx.AsyncClient
) -> None:
    with db_kit.node.db.session() as session:
        for i in range(120):
            record(
                session,
                kind="read" if i % 2 else "share.allowed",
                actor=f"reader:r{i % 3}",
                partner="us-aisi",
                artifact_id=f"art-{i:03d}",
                decision="allow",
                rule="permit-read",
                clause="MOU 4.2",
                now=db_kit.node.now(),
            )
    run_sequencer(db_kit.node)
    first = await db_client.get("/ui/audit", params={"kind": "read", "actor": "reader:r1"})
    assert first.status_code == 200
    seqs = [int(s) for s in re.findall(r'href="/ui/audit/(\d+)"', first.text)]
    assert len(seqs) == 20 and seqs == sorted(seqs, reverse=True)
    assert "Older entries" not in first.text
    everything = await db_client.get("/ui/audit", params={"partner": "us-aisi"})
    page1 = [int(s) for s in re.findall(r'href="/ui/audit/(\d+)"', everything.text)]
    assert len(page1) == 50
    older = re.search(r'href="(/ui/audit\?[^"]*before=\d+)"', everything.text)
    assert older, "a link to older entries"
    page2 = await db_client.get(older.group(1).replace("&amp;", "&"))
    seqs2 = [int(s) for s in re.findall(r'href="/ui/audit/(\d+)"', page2.text)]
    assert len(seqs2) == 50 and max(seqs2) < min(page1)
    newer = re.search(r'href="(/ui/audit\?[^"]*after=\d+)"', page2.text)
    assert newer
    back = await db_client.get(newer.group(1).replace("&amp;", "&"))
    assert [int(s) for s in re.findall(r'href="/ui/audit/(\d+)"', back.text)] == page1
    bad = await db_client.get("/ui/audit", params={"kind": "no.such.kind", "since": "x"})
    assert bad.status_code == 422
    assert "Filter not applied: unknown event kind" in bad.text
    reads = details(audit_rows(db_kit, "audit.read"))
    assert {"kind": "read", "actor": "reader:r1"} in [d.get("filters") for d in reads]
    assert all(d["via"] == "console" for d in reads)


async def test_entry_page_embeds_what_an_independent_verifier_needs(
    db_kit: Kit, db_client: httpx.AsyncClient
) -> None:
    seq = add_hostile_entry(db_kit)
    page = await db_client.get(f"/ui/audit/{seq}")
    missing = await db_client.get("/ui/audit/999999")
    junk = await db_client.get("/ui/audit/12abc")
    assert missing.status_code == 404 and junk.status_code == 404
    match = re.search(r'<script type="application/json" id="verify-data">(.*?)</script>', page.text)
    assert match
    data = json.loads(match.group(1))
    entry = {**data["entry"], "seq": int(data["entry"]["seq"]), "id": int(data["entry"]["id"])}
    assert entry["actor"] == EVIL
    leaf = merkle.leaf_hash(encode_leaf(entry))
    log_key = NoteVerifier.parse(data["log_key"])
    witnesses = [NoteVerifier.parse(w["vkey"]) for w in data["witness_keys"]]
    assert sorted(w["partner"] for w in data["witness_keys"]) == ["ca-aisi", "us-aisi"]
    opened = open_checkpoint(data["checkpoint"].encode(), log=log_key, witnesses=witnesses)
    merkle.verify_inclusion(
        leaf_hash=leaf,
        index=entry["seq"],
        size=opened.checkpoint.size,
        proof=[base64.b64decode(h) for h in data["proof"]],
        root=opened.checkpoint.root_hash,
    )
    assert 'src="/ui/static/verify.js"' in page.text
    assert "Verification needs JavaScript" in page.text  # shown until the script runs
    assert hashlib.sha256(b"\x00" + encode_leaf(entry)).digest() == leaf


async def test_overview_shows_partners_policies_delivery_and_charts(
    db_kit: Kit, db_client: httpx.AsyncClient
) -> None:
    with db_kit.node.db.session() as session:
        for kind in ("share.allowed", "share.allowed", "read", "share.denied"):
            record(
                session, kind=kind, actor="publisher:p", partner="us-aisi", now=db_kit.node.now()
            )
    page = await db_client.get("/ui/")
    assert page.status_code == 200
    assert "uk-aisi.us-aisi" in page.text and "in force" in page.text
    fp = db_kit.node.home.fingerprint
    assert " ".join(fp[i : i + 4] for i in range(0, 64, 4)) in page.text
    assert page.text.count('<svg class="chart-svg') == 3
    assert re.search(r"<strong>Shares</strong>: 2<", page.text)
    assert re.search(r"<strong>Denials</strong>: 1<", page.text)
    assert "The numbers behind the charts" in page.text
    # The quorum: the partners chosen to witness this log and how many must cosign.
    assert "Witness quorum" in page.text
    assert re.search(r"\d+ of \d+ chosen witnesses", page.text), page.text
    assert "Deliveries waiting" in page.text and "Their feed" in page.text
    assert any(d.get("view") == "overview" for d in details(audit_rows(db_kit, "audit.read")))


async def test_policies_page_and_explain_form(kit: Kit, client: httpx.AsyncClient) -> None:
    page = await client.get("/ui/policies")
    denied = await client.get(
        "/ui/policies",
        params={
            "partner": "ca-aisi",
            "action": "share",
            "tlp": "TLP:AMBER",
            "topics": "evaluation",
        },
    )
    allowed = await client.get(
        "/ui/policies",
        params={
            "partner": "us-aisi",
            "action": "share",
            "tlp": "TLP:AMBER",
            "topics": "evaluation/red-teaming",
            "purposes": "evaluation",
        },
    )
    bad = await client.get("/ui/policies", params={"partner": "nobody"})
    assert page.status_code == 200
    assert "declaration-only-clear-green" in page.text and "Bletchley Declaration" in page.text
    assert "obligations" in page.text.lower() and "attribute the originator" in page.text
    assert denied.status_code == 200
    assert "DENY" in denied.text and "Bletchley Declaration, para 8 [example]" in denied.text
    assert "ALLOW" in allowed.text
    assert bad.status_code == 422 and "Not evaluated" in bad.text


async def test_static_files_are_served_from_a_fixed_list(kit: Kit) -> None:
    async with kit.client() as client:
        css = await client.get("/ui/static/console.css")
        js = await client.get("/ui/static/verify.js")
        again = await client.get(
            "/ui/static/verify.js", headers={"If-None-Match": js.headers["etag"]}
        )
        for path in ("/ui/static/../router.py", "/ui/static/%2e%2e%2frouter.py", "/ui/static/x.js"):
            assert (await client.get(path)).status_code == 404
    assert css.headers["content-type"].startswith("text/css")
    assert js.headers["content-type"].startswith("text/javascript")
    assert "crypto.subtle.verify" in js.text
    assert again.status_code == 304


@pytest.mark.parametrize(
    ("age", "unit", "buckets"),
    [
        (timedelta(minutes=30), "5 minutes", 24),
        (timedelta(hours=20), "hour", 48),
        (timedelta(days=9), "day", 30),
    ],
)
def test_activity_buckets_fit_the_age_of_the_log(
    tmp_path: Path, age: timedelta, unit: str, buckets: int
) -> None:
    kit = make_node(tmp_path, "uk-aisi", policies=False)
    now = datetime(2026, 11, 27, 9, 7, tzinfo=UTC)
    with kit.node.db.session() as session:
        session.execute(sa.delete(AuditEntry))  # the setup's own events carry today's time
        for when, kind in [
            (now - age, "share.allowed"),
            (now, "share.allowed"),
            (now, "access_notice.received"),
            (now - timedelta(seconds=1), "read.denied"),
            (now, "token.created"),  # not charted
        ]:
            record(session, kind=kind, actor="t", now=when)
    with kit.node.db.session() as session:
        act = activity(session, now=now)
    assert act.unit == unit and len(act.starts) == buckets
    assert act.starts[-1] <= now < act.starts[-1] + act.step
    assert act.starts[0] <= now - age, "the window covers the whole log"
    assert sum(act.counts["shares"]) == 2 and act.counts["shares"][-1] >= 1
    assert act.counts["reads"][-1] == 1
    assert sum(act.counts["denials"]) == 1 and sum(act.counts["reads"]) == 1
    chart = bar_chart("shares", act.counts["shares"], act.starts, act.step)
    assert len(chart.bars) == buckets and chart.total == 2
    assert chart.peak in (1, 2)
    assert [t.anchor for t in chart.ticks] == ["start", "middle", "end"]
    tallest = max(chart.bars, key=lambda b: b.height)
    assert tallest.y + tallest.height == pytest.approx(chart.bottom)
    assert tallest.label.startswith(("1 share,", "2 shares,"))


@pytest.mark.parametrize(
    ("sealing", "shown"),
    [("post-quantum", "post-quantum"), ("classic", "classic"), (None, None)],
)
async def test_an_entry_shows_the_protection_of_its_artifact(
    kit: Kit, client: httpx.AsyncClient, sealing: str | None, shown: str | None
) -> None:
    detail: dict[str, object] = {"title": "a finding", "tlp": "TLP:RED"}
    if sealing is not None:
        detail["sealing"] = sealing
    with kit.node.db.session() as session:
        record(
            session, kind="share.allowed", actor="publisher:alice", partner="us-aisi",
            artifact_id="art_pq", decision="allow", detail=detail, now=kit.node.now(),
        )  # fmt: skip
    run_sequencer(kit.node)
    with kit.node.db.session() as session:
        seq = session.scalar(sa.select(sa.func.max(AuditEntry.seq)))
    page = await client.get(f"/ui/audit/{seq}")
    assert page.status_code == 200
    if shown is None:
        assert "Protection of the artifact" not in page.text
    else:
        assert re.search(
            rf'Protection of the artifact:\s*<span class="status-word \w+">{shown}<', page.text
        )
