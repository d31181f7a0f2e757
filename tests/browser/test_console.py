"""The console in a real headless Chromium against real node processes.

Three ``entente serve`` processes (tests/nodes.py) share a finding, refuse another under the MOU,
and cosign each other's audit checkpoints. Chromium (Debian's, driven by Playwright) then signs in,
filters the audit log, opens an entry and waits for its own verification of the inclusion proof
and the checkpoint's signatures, sees an entry tampered with in the database reported as FAILED,
sees a reader's token refused, and signs out; it also opens the shared finding's own page (its
life in log order, the partner's receipt verified), downloads its export bundle and checks it.
Every request a page makes is recorded and must go to the node; any Content-Security-Policy
violation fails the test. Screenshots of each page are
written to ``test-output/browser/`` at the repository root.
"""

from __future__ import annotations

import base64
import importlib.util
import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from crypto.descriptor import verify_descriptor
from crypto.dsse import Envelope
from crypto.merkle import leaf_hash
from crypto.note import NoteVerifier
from service.audit.bundle import verify_bundle
from service.audit.entries import encode_leaf, log_origin
from service.audit.rotations import log_key
from tests.nodes import Federation, start_federation
from tests.support import ROOT, require, vectors_dir

pytestmark = [pytest.mark.browser, pytest.mark.integration, pytest.mark.slow]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SHOTS = ROOT / "test-output" / "browser"


def wait_for(check: Callable[[], Any], *, timeout: float = 30.0, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def upload(meta: dict[str, Any], content: bytes) -> tuple[bytes, dict[str, str]]:
    b = "entente-browser"
    body = (
        f'--{b}\r\nContent-Disposition: form-data; name="metadata"\r\n\r\n'.encode()
        + json.dumps(meta).encode()
        + f'\r\n--{b}\r\nContent-Disposition: form-data; name="file"; filename="f"\r\n\r\n'.encode()
        + content
        + f"\r\n--{b}--\r\n".encode()
    )
    return body, {"Content-Type": f"multipart/form-data; boundary={b}"}


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    require(os.path.exists(CHROMIUM), "Chromium", "apt-get install chromium")
    require(
        importlib.util.find_spec("playwright") is not None,
        "the Python playwright package",
        "pip install -e '.[dev]' (never `playwright install`: the test uses /usr/bin/chromium)",
    )
    federation = start_federation(
        tmp_path_factory.mktemp("console"),
        ENTENTE_SYNC_INTERVAL_SECONDS="0.2",
        ENTENTE_RETRY_BASE_SECONDS="0.2",
        ENTENTE_RETRY_MAX_SECONDS="1",
        ENTENTE_CHECKPOINT_INTERVAL_SECONDS="0.5",
    )
    try:
        uk, us = federation.nodes["uk-aisi"], federation.nodes["us-aisi"]
        meta = {
            "title": "Joint evaluation of model X <b>not bold</b>",
            "tlp": "TLP:AMBER",
            "topics": ["evaluation/red-teaming"],
            "purposes": ["evaluation"],
            "partners": ["us-aisi"],
        }
        body, headers = upload(meta, b"finding\n" * 100)
        publisher = {**headers, **federation.auth("uk-aisi", "publisher")}
        shared = httpx.post(f"{uk.url}/v1/artifacts", content=body, headers=publisher)
        assert shared.status_code == 201, shared.text
        art = shared.json()["id"]
        # The same finding for Canada: denied under the summit declaration (a denial to chart).
        body, headers = upload({**meta, "partners": ["ca-aisi"]}, b"finding\n")
        denied = httpx.post(
            f"{uk.url}/v1/artifacts",
            content=body,
            headers={**headers, **federation.auth("uk-aisi", "publisher")},
        )
        assert denied.status_code == 403, denied.text

        def delivered() -> bool:
            r = httpx.get(
                f"{uk.url}/v1/artifacts/{art}", headers=federation.auth("uk-aisi", "admin")
            )
            return bool(r.json()["deliveries"][0]["state"] == "delivered")

        wait_for(delivered, what="delivery to us-aisi")
        read = httpx.get(
            f"{us.url}/v1/artifacts/{art}/content", headers=federation.auth("us-aisi", "reader")
        )
        assert read.status_code == 200

        def cosigned_by_both() -> bool:
            r = httpx.get(
                f"{uk.url}/audit/v1/checkpoint",
                params={"min_cosignatures": 2},
                headers=federation.auth("uk-aisi", "auditor"),
            )
            return r.status_code == 200

        wait_for(cosigned_by_both, timeout=60, what="a checkpoint cosigned by both partners")
        yield federation
    finally:
        federation.stop()


@pytest.fixture(scope="module")
def browser(fed: Federation) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    SHOTS.mkdir(parents=True, exist_ok=True)
    print(f"\nconsole screenshots: {SHOTS}")
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@dataclass
class Session:
    """A browser page on one node, recording every request and every CSP complaint."""

    page: Any
    base: str
    requests: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # console errors and warnings (CSP, JS)
    failures: list[str] = field(default_factory=list)  # responses of status 400 and above
    expected_failures: set[str] = field(default_factory=set)  # "403 /ui/login"

    def go(self, path: str) -> Any:
        return self.page.goto(self.base + path)

    def shot(self, name: str) -> Path:
        path = SHOTS / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        return path

    def nav(self, section: str) -> None:
        menu = self.page.get_by_role("navigation", name="Console sections")
        menu.get_by_role("link", name=section, exact=True).click()
        self.page.wait_for_load_state()

    def login(self, token: str) -> None:
        self.go("/ui/login")
        self.page.get_by_label("Bearer token").fill(token)
        self.page.get_by_role("button", name="Sign in").click()
        self.page.wait_for_load_state()

    def assert_only_the_node_was_asked(self) -> None:
        node = urlsplit(self.base).netloc
        assert self.requests, "the page made no requests at all"
        strangers = [u for u in self.requests if urlsplit(u).netloc != node]
        assert not strangers, f"requests to other hosts: {strangers}"
        assert not self.problems, f"console problems: {self.problems}"
        assert set(self.failures) <= self.expected_failures, self.failures

    def assert_labelled(self) -> None:
        """Every visible form control has a label (or is a button with text)."""
        unlabelled = self.page.evaluate(
            """() => [...document.querySelectorAll('input, select, textarea')]
                .filter(el => el.type !== 'hidden' && el.labels.length === 0)
                .map(el => el.outerHTML)"""
        )
        assert unlabelled == []


@pytest.fixture
def session(browser: Any, fed: Federation) -> Iterator[Session]:
    context = browser.new_context(viewport={"width": 1366, "height": 800})
    page = context.new_page()
    s = Session(page, fed.nodes["uk-aisi"].url)
    page.on("request", lambda request: s.requests.append(request.url))

    def on_console(msg: Any) -> None:
        # A 4xx page is also logged as "Failed to load resource"; those are checked as responses.
        if msg.type in ("error", "warning") and not msg.text.startswith("Failed to load resource"):
            s.problems.append(msg.text)

    def on_response(response: Any) -> None:
        if response.status >= 400:
            s.failures.append(f"{response.status} {urlsplit(response.url).path}")

    page.on("console", on_console)
    page.on("response", on_response)
    page.on("pageerror", lambda exc: s.problems.append(str(exc)))
    # Each test ends with s.assert_only_the_node_was_asked(): an assertion here, in teardown,
    # would turn a skipped test (no vectors, say) into an error.
    try:
        yield s
    finally:
        context.close()


def entry_seq(fed: Federation, kind: str) -> int:
    db = fed.nodes["uk-aisi"].home / "entente.db"
    with sqlite3.connect(db, timeout=10) as conn:
        row = conn.execute(
            "SELECT seq FROM audit_entries WHERE kind = ? AND seq IS NOT NULL ORDER BY seq LIMIT 1",
            (kind,),
        ).fetchone()
    assert row is not None, f"no sequenced {kind} entry"
    return int(row[0])


def test_sign_in_filter_verify_and_sign_out(session: Session, fed: Federation) -> None:
    page = session.page
    session.go("/ui/")
    assert page.url.endswith("/ui/login"), "an anonymous visit goes to the sign-in page"
    session.assert_labelled()
    session.shot("01-login")

    session.login(fed.tokens["uk-aisi"]["auditor"])
    assert page.url.endswith("/ui/")
    assert page.get_by_role("heading", name="Overview", level=1).is_visible()
    partners = page.get_by_role("region", name="Partners", exact=True)
    for partner in ("ca-aisi", "us-aisi"):
        assert partners.get_by_text(partner, exact=True).is_visible()
    delivery = page.get_by_role("region", name="Delivery to partners", exact=True)
    assert delivery.get_by_text("up to date").first.is_visible()
    assert page.locator("svg.series-shares rect.bar").count() > 0
    assert page.get_by_role("img", name="Shares: 1").is_visible()
    session.shot("02-overview")

    session.nav("Audit log")
    page.get_by_label("Event kind").select_option("share.allowed")
    page.get_by_role("button", name="Apply filters").click()
    page.wait_for_load_state()
    assert "kind=share.allowed" in page.url
    kinds = page.locator("table.entries tbody td:nth-child(3)").all_inner_texts()
    assert kinds and set(kinds) == {"share.allowed"}
    session.assert_labelled()
    session.shot("03-audit-filtered")

    page.locator("table.entries tbody th a").first.click()
    result = page.locator("#verify-result")
    result.and_(page.locator("[data-state=verified]")).wait_for(timeout=15_000)
    assert result.inner_text().startswith("Verified in your browser")
    assert "cosigned by" in result.inner_text()
    cells = page.locator("[data-cosigner]").all_inner_texts()
    assert cells and all(c.startswith("verified") for c in cells), cells
    steps = page.locator("#verify-steps li").all_inner_texts()
    assert any("Inclusion proof" in s for s in steps) and all(s.startswith("passed") for s in steps)
    session.shot("04-entry-verified")

    # A wrong log key: the checkpoint's signature cannot be checked, so it is not verified.
    other_key = "entente.dev/audit/uk-aisi+00000000+AQ" + "A" * 42 + "="
    page.get_by_label("Log key to trust (C2SP verifier key)").fill(other_key)
    page.get_by_role("button", name="Verify again with this key").click()
    result.and_(page.locator("[data-state=failed]")).wait_for(timeout=15_000)
    assert result.inner_text().startswith("FAILED")

    session.nav("Policies")
    page.get_by_label("Partner").select_option("ca-aisi")
    page.get_by_label("TLP label").select_option("TLP:AMBER")
    page.get_by_label("Topics").fill("evaluation")
    page.get_by_role("button", name="Explain").click()
    page.wait_for_load_state()
    answer = page.locator(".answer")
    assert "DENY" in answer.inner_text()
    assert "Bletchley Declaration" in answer.inner_text()
    session.assert_labelled()
    session.shot("05-policies-explain")

    copied = [c for c in page.context.cookies() if c["name"] == "entente_console"]
    assert copied, "signed in: the session cookie is set"
    page.get_by_role("button", name="Sign out").click()
    page.wait_for_load_state()
    assert page.url.endswith("/ui/login?signed_out=1")
    assert page.get_by_text("You are signed out.").is_visible()
    session.shot("06-signed-out")
    session.go("/ui/audit")
    assert page.url.endswith("/ui/login"), "after signing out the console needs a sign-in"
    # A copy of the cookie taken before signing out (L5) no longer opens the console either.
    page.context.add_cookies(copied)
    session.go("/ui/audit")
    assert page.url.endswith("/ui/login"), "signing out ended the session on the server"
    session.assert_only_the_node_was_asked()


def test_tampered_entry_is_reported_as_failing(session: Session, fed: Federation) -> None:
    seq = entry_seq(fed, "share.allowed")
    db = fed.nodes["uk-aisi"].home / "entente.db"
    with sqlite3.connect(db, timeout=10) as conn:
        (actor,) = conn.execute("SELECT actor FROM audit_entries WHERE seq = ?", (seq,)).fetchone()
    session.login(fed.tokens["uk-aisi"]["admin"])
    try:
        with sqlite3.connect(db, timeout=10) as conn:
            conn.execute(
                "UPDATE audit_entries SET actor = ? WHERE seq = ?", ("publisher:mallory", seq)
            )
        session.go(f"/ui/audit/{seq}")
        page = session.page
        assert page.get_by_text("publisher:mallory").first.is_visible()
        result = page.locator("#verify-result")
        result.and_(page.locator("[data-state=failed]")).wait_for(timeout=15_000)
        text = result.inner_text()
        assert text.startswith("FAILED"), text
        assert not page.get_by_text("Verification needs JavaScript").is_visible()
        assert "not what the log committed to" in text
        # The checkpoint itself is sound: its signature and cosignatures still verify.
        cosigners = page.locator("[data-cosigner]").all_inner_texts()
        assert cosigners and all(c.startswith("verified") for c in cosigners), cosigners
        failed = page.locator("#verify-steps li").last.inner_text()
        assert failed.startswith("FAILED Inclusion proof"), failed
        session.shot("07-entry-tampered")
    finally:
        with sqlite3.connect(db, timeout=10) as conn:
            conn.execute("UPDATE audit_entries SET actor = ? WHERE seq = ?", (actor, seq))
    session.go(f"/ui/audit/{seq}")
    session.page.locator("#verify-result[data-state=verified]").wait_for(timeout=15_000)
    session.assert_only_the_node_was_asked()


def test_reader_token_is_refused(session: Session, fed: Federation) -> None:
    session.expected_failures = {"403 /ui/login"}
    session.login(fed.tokens["uk-aisi"]["reader"])
    page = session.page
    assert page.get_by_role("heading", name="This token may not use the console").is_visible()
    assert "the reader role may not use the console" in page.get_by_role("alert").inner_text()
    session.shot("08-reader-refused")
    session.go("/ui/")
    assert page.url.endswith("/ui/login"), "a refused token gets no session"
    session.assert_only_the_node_was_asked()


def test_keyboard_and_no_javascript(browser: Any, fed: Federation, session: Session) -> None:
    page = session.page
    session.login(fed.tokens["uk-aisi"]["auditor"])
    page.keyboard.press("Tab")
    skip = page.get_by_role("link", name="Skip to main content")
    assert skip.evaluate("el => el === document.activeElement")
    assert skip.is_visible(), "the skip link shows when focused"
    page.keyboard.press("Enter")
    assert page.evaluate("document.activeElement.id") == "main"
    # Without JavaScript every page still works; the verification panel says it needs it.
    context = browser.new_context(java_script_enabled=False)
    try:
        cookies = page.context.cookies()
        context.add_cookies(cookies)
        nojs = context.new_page()
        nojs.on("request", lambda request: session.requests.append(request.url))
        nojs.goto(f"{session.base}/ui/audit/{entry_seq(fed, 'share.allowed')}")
        assert nojs.get_by_text("Verification needs JavaScript").is_visible()
        assert not nojs.locator("#verify-result").is_visible()
        assert nojs.get_by_role("heading", name="Inclusion proof").is_visible()
        nojs.screenshot(path=str(SHOTS / "09-entry-without-javascript.png"), full_page=True)
    finally:
        context.close()
    session.assert_only_the_node_was_asked()


# Strings the entry encoding must treat exactly as the node does: every control character,
# quotes and backslashes, HTML, non-BMP characters, U+2028/9, DEL, combining marks.
HOSTILE = [
    "".join(chr(c) for c in range(0x20)),
    "\"\\/'</script><!--",
    "\u2028\u2029\x7f\u00e9\u0301\U0001f600\ufeff",
    "",
    "x" * 500,
]


@pytest.mark.vectors
def test_verifier_module_matches_the_vectors_and_the_node(session: Session) -> None:
    """verify.js, as served, against the public RFC 6962 inclusion vectors, the C2SP signed-note
    example, and the node's own entry encoding (``encode_leaf``) for hostile strings."""
    inclusion = [
        json.loads(p.read_text())
        for p in sorted(vectors_dir("merkle", "inclusion").rglob("*.json"))
    ]
    note = json.loads((vectors_dir() / "signed-note-example.json").read_text())
    entries = []
    for i, text in enumerate(HOSTILE):
        entries.append(
            {
                "actor": text,
                "artifact_id": None if i % 2 else text,
                "clause": text,
                "created_at": "2026-11-27T09:00:00.000000Z",
                "decision": None,
                "detail": json.dumps({"t": text}, sort_keys=True, separators=(",", ":")),
                "digest": None,
                "id": 2**53 + i,  # beyond what a JavaScript number holds exactly
                "kind": "read",
                "partner": text or None,
                "rule": text,
                "seq": 2**62 + i,
                "v": 1,
            }
        )
    session.go("/ui/login")
    got = session.page.evaluate(
        """async ({inclusion, note, entries}) => {
            const m = await import("/ui/static/verify.js");
            const b = (s) => Uint8Array.from(atob(s ?? ""), (c) => c.charCodeAt(0));
            const proofs = [];
            for (const v of inclusion) {
                try {
                    proofs.push(await m.verifyInclusion(BigInt(v.leafIdx), BigInt(v.treeSize),
                        b(v.leafHash), (v.proof ?? []).map(b), b(v.root)));
                } catch (err) {
                    if (!(err instanceof m.VerifyError)) throw err;
                    proofs.push(false);
                }
            }
            const key = await m.parseVerifierKey(note.verifier_key, 0x01, "the example key");
            const parsed = m.parseNote(note.note);
            const sig = parsed.signatures[0].signature;
            const enc = new TextEncoder();
            const signed = await m.ed25519Verify(key.key, sig, enc.encode(parsed.text));
            const forged = await m.ed25519Verify(key.key, sig, enc.encode(parsed.text + "!"));
            const leaves = [];
            for (const e of entries) {
                leaves.push(m.base64OfBytes(await m.leafHash(m.encodeLeaf(e))));
            }
            return {proofs, text: parsed.text, signed, forged, leaves};
        }""",
        {
            "inclusion": inclusion,
            "note": note,
            "entries": [{**e, "id": str(e["id"]), "seq": str(e["seq"])} for e in entries],
        },
    )
    assert len(got["proofs"]) == len(inclusion) > 50
    mismatched = [
        v.get("desc") for v, ok in zip(inclusion, got["proofs"], strict=True) if ok == v["wantErr"]
    ]
    assert mismatched == []
    assert got["text"] == note["text"]
    assert got["signed"] is True and got["forged"] is False
    expected = [base64.b64encode(leaf_hash(encode_leaf(e))).decode() for e in entries]
    assert got["leaves"] == expected
    session.assert_only_the_node_was_asked()


def test_artifact_page_shows_its_life_in_order(session: Session, fed: Federation) -> None:
    """From the audit table to the shared finding's page: share, delivery and the partner's
    receipt in log order, the receipt verified, each entry one click from its proof; then the
    witness evidence page, and the artifact's export bundle downloaded and checked offline."""
    page = session.page
    session.login(fed.tokens["uk-aisi"]["auditor"])
    session.go("/ui/audit?kind=share.allowed")
    page.get_by_role("link", name="Life of artifact").first.click()
    page.wait_for_load_state()
    assert "/ui/artifacts/" in page.url
    art = page.url.rsplit("/", 1)[1]
    assert page.get_by_role("heading", name=f"Artifact {art}", level=1).is_visible()
    life = page.get_by_role("region", name="Life of the artifact")
    kinds = life.locator("tbody tr").evaluate_all("rows => rows.map(r => r.dataset.kind)")
    assert kinds[:3] == ["share.allowed", "delivery.sent", "receipt.recorded"], kinds
    seqs = [int(s) for s in life.locator("tbody th a").all_inner_texts()]
    assert seqs == sorted(seqs) and len(seqs) == len(kinds)
    assert "Joint evaluation of model X <b>not bold</b>" in page.locator("h2").first.inner_text()
    signed = page.get_by_role("region", name="Signed receipts and statements")
    receipt = signed.locator("tbody tr").filter(has_text="delivery receipt").first
    assert "us-aisi" in receipt.inner_text() and "verified" in receipt.inner_text()
    assert "not verified" not in receipt.inner_text()
    session.assert_labelled()
    session.shot("10-artifact-life")

    with page.expect_download() as download:
        page.get_by_role("link", name="Download these entries as an export bundle").click()
    bundle = Path(download.value.path()).read_bytes().splitlines()
    descriptor = httpx.get(f"{session.base}/.well-known/entente.json").content
    desc = verify_descriptor(Envelope.from_bytes(descriptor), now=datetime.now(UTC))
    verdict = verify_bundle(bundle, log=NoteVerifier(log_origin(desc.node_id), log_key(desc)))
    assert verdict.filter.artifact == art and verdict.count == len(kinds)

    life.get_by_role("link", name=f"Entry {seqs[1]}: delivery.sent, with its proof").click()
    page.locator("#verify-result[data-state=verified]").wait_for(timeout=15_000)
    assert page.url.endswith(f"/ui/audit/{seqs[1]}")

    session.nav("Witness evidence")
    assert page.get_by_role("heading", name="Witness evidence", level=1).is_visible()
    logs = page.get_by_role("region", name="Partners' logs witnessed")
    assert logs.get_by_text("entente.dev/audit/us-aisi").is_visible()
    session.shot("11-witness-evidence")
    session.assert_only_the_node_was_asked()
