"""Bad input, route family by route family: each case gets its expected 4xx problem document,
is audited (with the kind that names what was refused), and leaves the database and the blob
store exactly as they were (every table but the audit log and the replay cache compared row by
row; blobs and temporary files compared by name). On SQLite and PostgreSQL.

Cases marked "regression" were 500s found by the fuzzer (tests/hardening/test_fuzz.py) or by
this table, fixed at their root.
"""

from __future__ import annotations

import base64
import hashlib
import json
import zlib
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlmodel import select

from crypto.dsse import sign_envelope
from crypto.sealed import MANIFEST_PAYLOAD_TYPE, Manifest, sign_manifest
from crypto.sealed import verify_manifest as _verify
from service.partners import partner_verify_keys
from service.tokens import Role
from tests.hardening.kit import (
    DELIVERY_TYPE,
    Trio,
    audit_since,
    delivery,
    meta,
    postgres_database,
    share_sync,
    signed,
    snapshot,
    trio,
)
from tests.service.nodekit import CREATED, UPLOAD_HEADERS, Kit, make_node, upload_body
from tests.support import vector_params, vectors_dir

LIMITS = {
    "max_artifact_bytes": 64 << 10,
    "max_metadata_bytes": 2048,
    "rate_limit_per_minute": 1_000_000,
}
B = "entente-test"
END = f"--{B}--\r\n".encode()
INBOX_LIMIT = 2 * LIMITS["max_artifact_bytes"] + (1 << 20)  # bytes: a delivery, manifest included


@dataclass
class Env:
    nodes: Trio
    stranger: Kit  # a node uk-aisi has not pinned
    sent: str  # an artifact uk-aisi shared with us-aisi
    received: str  # an artifact us-aisi shared with uk-aisi (delivered)
    manifest: bytes  # its manifest line
    ciphertext: bytes
    fresh: str  # us-aisi shared it with uk-aisi, not delivered yet
    fresh_manifest: bytes
    fresh_ciphertext: bytes
    ca_only: str  # us-aisi shared it with ca-aisi only

    @property
    def uk(self) -> Kit:
        return self.nodes.uk


@contextmanager
def build_env(root: Path, url: str | None) -> Iterator[Env]:
    nodes = trio(root, db_url=url, **LIMITS)
    stranger = make_node(root, "xx-aisi", policies=False)
    sent = share_sync(nodes.uk, b"uk finding")["id"]
    green = {"partners": ["uk-aisi"], "tlp": "TLP:GREEN"}
    received = share_sync(nodes.us, b"us finding " * 500, **green)["id"]
    manifest, ciphertext = delivery(nodes.us, received)
    fresh = share_sync(nodes.us, b"us fresh " * 500, **green)["id"]
    fresh_manifest, fresh_ciphertext = delivery(nodes.us, fresh)
    ca_only = share_sync(nodes.us, b"for ca", partners=["ca-aisi"], tlp="TLP:GREEN")["id"]
    e = Env(nodes, stranger, sent, received, manifest, ciphertext, fresh, fresh_manifest,
            fresh_ciphertext, ca_only)  # fmt: skip
    import anyio

    r = anyio.run(inbox, e, manifest + b"\n" + ciphertext)
    assert r.status_code == 201, r.text
    try:
        yield e
    finally:
        while CREATED:
            CREATED.pop().db.dispose()


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def env(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    root: Path = tmp_path_factory.mktemp("bad-input")
    backend = postgres_database() if request.param == "postgres" else nullcontext(None)
    with backend as url, build_env(root, url) as e:
        yield e


@pytest.fixture(scope="module")
def sqlite_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    """For payload parsing, which never reaches the database: SQLite is enough."""
    with build_env(tmp_path_factory.mktemp("bad-payloads"), None) as e:
        yield e


@pytest.fixture(autouse=True)
def _dispose_nodes() -> None:  # the module's nodes live as long as the module fixture
    return None


# --- request builders ----------------------------------------------------------------------------

Send = Callable[[Env], Awaitable[httpx.Response]]


async def request(e: Env, method: str, raw_path: bytes, **kwargs: Any) -> httpx.Response:
    """A request whose path goes out exactly as given (no client-side dot-segment removal)."""
    url = httpx.URL("http://uk-aisi", raw_path=raw_path)
    async with e.uk.client() as c:
        return await c.request(method, url, **kwargs)


def upload(
    metadata: str | bytes,
    content: bytes = b"content",
    *,
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
    role: Role = Role.PUBLISHER,
) -> Send:
    async def send(e: Env) -> httpx.Response:
        data = body if body is not None else upload_body(metadata, content)
        hdrs = UPLOAD_HEADERS if headers is None else headers
        return await request(
            e, "POST", b"/v1/artifacts", content=data, headers={**hdrs, **e.uk.auth(role)}
        )

    return send


def upload_meta(**changes: object) -> Send:
    return upload(meta(**changes))


def part(name: str, value: bytes, extra: str = "") -> bytes:
    return (
        f'--{B}\r\nContent-Disposition: form-data; name="{name}"{extra}\r\n\r\n'.encode()
        + value
        + b"\r\n"
    )


def get(raw_path: str | bytes, role: Role = Role.READER, method: str = "GET") -> Send:
    path = raw_path.encode() if isinstance(raw_path, str) else raw_path

    async def send(e: Env) -> httpx.Response:
        return await request(e, method, path, headers=e.uk.auth(role))

    return send


def with_auth(value: bytes | None) -> Send:
    async def send(e: Env) -> httpx.Response:
        headers = {} if value is None else {"Authorization": value}
        return await request(e, "GET", b"/v1/partners", headers=headers)  # type: ignore[arg-type]

    return send


def huge_header() -> Send:
    async def send(e: Env) -> httpx.Response:
        headers = {**e.uk.auth(Role.READER), "X-Padding": "a" * (20 << 10)}  # > 16 KiB default
        return await request(e, "GET", b"/v1/partners", headers=headers)

    return send


def cursor(stamp: object, ident: object = "art_x") -> str:
    raw = json.dumps([stamp, ident]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


async def fed(
    e: Env,
    method: str,
    path: str,
    body: bytes = b"",
    *,
    ctype: str | None = None,
    sender: Kit | None = None,
    signed_body: bytes | None = None,
) -> httpx.Response:
    """A federation request correctly signed by ``sender`` (us-aisi by default)."""
    who = sender or e.nodes.us
    extra = {"Content-Type": ctype} if ctype else {}
    headers = signed(
        who.node, e.uk.node, method, path, body if signed_body is None else signed_body, **extra
    )
    return await request(e, method, path.encode(), content=body, headers=headers)


async def inbox(e: Env, body: bytes, sender: Kit | None = None) -> httpx.Response:
    return await fed(e, "POST", "/federation/v1/inbox", body, ctype=DELIVERY_TYPE, sender=sender)


def deliver(make: Callable[[Env], bytes], sender: Callable[[Env], Kit] | None = None) -> Send:
    async def send(e: Env) -> httpx.Response:
        return await inbox(e, make(e), sender(e) if sender else None)

    return send


def fed_call(method: str, path: str, body: bytes = b"", **kw: Any) -> Send:
    async def send(e: Env) -> httpx.Response:
        return await fed(e, method, path, body, **kw)

    return send


def flip(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1 :]


def fresh_manifest(e: Env) -> Manifest:
    with e.uk.node.db.session() as session:
        trusted = partner_verify_keys(session, "us-aisi")
    from crypto.dsse import Envelope

    head = json.loads(e.fresh_manifest)
    envelope = Envelope.from_json(head.get("manifest", head))
    return _verify(envelope, trusted=trusted, origin="us-aisi")


def _with_disclosure(e: Env, line: bytes) -> bytes:
    """``line`` (a manifest) as a delivery's first line, with the decision the fresh delivery
    discloses to uk-aisi (the commitment to it is unchanged by the edits here)."""
    head = json.loads(e.fresh_manifest)
    if "disclosure" not in head:
        return line
    wrapped = {"manifest": json.loads(line), "disclosure": head["disclosure"]}
    return json.dumps(wrapped, separators=(",", ":")).encode()


def resigned(e: Env, **changes: Any) -> bytes:
    """The fresh delivery's manifest changed and signed again by us-aisi (a pinned partner)."""
    manifest = replace(fresh_manifest(e), **changes)
    line = sign_manifest(manifest, e.nodes.us.node.keys.signer).to_bytes()
    return _with_disclosure(e, json.dumps(json.loads(line), separators=(",", ":")).encode())


def statement_signed(e: Env, edit: Callable[[dict[str, Any]], None]) -> bytes:
    """A statement no Manifest would construct, signed by us-aisi."""
    statement = fresh_manifest(e).to_statement()
    edit(statement)
    payload = json.dumps(statement, sort_keys=True, separators=(",", ":")).encode()
    envelope = sign_envelope(MANIFEST_PAYLOAD_TYPE, payload, e.nodes.us.node.keys.signer.signers)
    line = json.dumps(json.loads(envelope.to_bytes()), separators=(",", ":")).encode()
    return _with_disclosure(e, line)


def _set_tlp(s: dict[str, Any]) -> None:
    s["predicate"]["tlp"] = "TLP:PURPLE"


def _set_created(s: dict[str, Any]) -> None:
    s["predicate"]["created"] = "0001-01-01T00:00:00+14:00"


def _replay() -> Send:
    async def send(e: Env) -> httpx.Response:
        path = "/federation/v1/feed"
        headers = signed(e.nodes.us.node, e.uk.node, "GET", path)
        first = await request(e, "GET", path.encode(), headers=headers)
        assert first.status_code == 200, first.text
        return await request(e, "GET", path.encode(), headers=headers)

    return send


def _stale_signature() -> Send:
    async def send(e: Env) -> httpx.Response:
        us = e.nodes.us.node
        real = us.clock
        us.clock = lambda: real() - timedelta(hours=2)
        try:
            return await fed(e, "GET", "/federation/v1/feed")
        finally:
            us.clock = real

    return send


def _stranger() -> Send:
    async def send(e: Env) -> httpx.Response:
        return await fed(e, "GET", "/federation/v1/feed", sender=e.stranger)

    return send


def _unsigned() -> Send:
    async def send(e: Env) -> httpx.Response:
        return await request(e, "GET", b"/federation/v1/feed")

    return send


# --- the table -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Bad:
    send: Send
    status: int
    kind: str  # the problem type is urn:entente:problem:<kind>
    audit: str | None  # the audit event kind it must leave (None: unrouted, logged only)
    reason: str | None = None  # the problem's ``reason``, where it has one


NO_UTC = "0001-01-01T00:00:00+14:00"  # a valid RFC 3339 time with no UTC equivalent
R = "request.refused"  # audited by the problem handler

CASES: dict[str, Bad] = {
    # POST /v1/artifacts: malformed JSON and multipart, wrong content types, limits
    "upload/metadata-not-json": Bad(upload('{"title": '), 422, "invalid-input", R),
    "upload/metadata-not-object": Bad(upload("[1, 2]"), 422, "invalid-input", R),
    "upload/metadata-invalid-utf8": Bad(
        upload(b'{"title": "\xff\xfe", "tlp": "TLP:GREEN", "partners": ["us-aisi"]}'),
        422, "invalid-input", R,
    ),
    "upload/unknown-field": Bad(upload_meta(extra=1), 422, "invalid-input", R),
    "upload/file-before-metadata": Bad(
        upload("", body=part("file", b"x") + part("metadata", meta().encode()) + END),
        422, "invalid-input", R,
    ),
    "upload/no-file-part": Bad(
        upload("", body=part("metadata", meta().encode()) + END),
        422, "invalid-input", R,
    ),
    "upload/truncated": Bad(
        upload("", body=upload_body(meta(), b"content")[:-12]), 422, "invalid-input", R
    ),
    "upload/garbage-body": Bad(
        upload("", body=b"\x00\xff" * 300), 422, "invalid-input", R
    ),
    "upload/part-name-invalid-utf8": Bad(
        upload("", body=f"--{B}\r\n".encode()
               + b'Content-Disposition: form-data; name="\xff"\r\n\r\nx\r\n' + END),
        422, "invalid-input", R,
    ),
    "upload/part-without-disposition": Bad(
        upload("", body=f"--{B}\r\nContent-Type: text/plain\r\n\r\nx\r\n--{B}--\r\n".encode()),
        422, "invalid-input", R,
    ),
    "upload/json-content-type": Bad(
        upload(meta(), headers={"Content-Type": "application/json"}),
        422, "invalid-input", R, "unsupported-media-type",
    ),
    "upload/no-content-type": Bad(upload(meta(), headers={}), 422, "invalid-input", R),
    "upload/no-boundary": Bad(
        upload(meta(), headers={"Content-Type": "multipart/form-data"}),
        422, "invalid-input", R,
    ),
    "upload/metadata-over-limit": Bad(
        upload_meta(title="t" * 3000), 413, "too-large", R
    ),
    "upload/file-over-limit": Bad(
        upload(meta(), b"x" * (100 << 10)), 413, "too-large", R
    ),
    # ... path traversal and invalid text in file names and fields
    "upload/filename-traversal": Bad(
        upload_meta(filename="../../etc/passwd"), 422, "invalid-input", R
    ),
    "upload/part-filename-traversal": Bad(
        upload("", body=part("metadata", meta().encode())
               + part("file", b"x", '; filename="../../etc/passwd"') + END),
        422, "invalid-input", R, "filename",
    ),
    "upload/nul-in-title (regression, 500 on PostgreSQL)": Bad(
        upload_meta(title="a\x00b"), 422, "invalid-input", R
    ),
    # ... TLP labels, dates, partners
    "upload/tlp-unknown": Bad(upload_meta(tlp="TLP:PURPLE"), 422, "invalid-input", R),
    "upload/tlp-lowercase": Bad(upload_meta(tlp="tlp:green"), 422, "invalid-input", R),
    "upload/tlp-v1-white": Bad(upload_meta(tlp="TLP:WHITE"), 422, "invalid-input", R),
    "upload/tlp-denied-by-mou": Bad(
        upload_meta(tlp="TLP:RED"), 403, "policy-denied", "share.denied"
    ),
    "upload/expired-long-ago": Bad(
        upload_meta(expires_at="0001-01-01T00:00:00Z"), 403, "policy-denied", "share.denied"
    ),
    "upload/date-without-zone": Bad(
        upload_meta(embargo_until="2030-01-01T00:00:00"), 422, "invalid-input", R
    ),
    "upload/date-no-utc (regression, 500)": Bad(
        upload_meta(expires_at=NO_UTC), 422, "invalid-input", R
    ),
    "upload/date-year-10000": Bad(
        upload_meta(expires_at="10000-01-01T00:00:00Z"), 422, "invalid-input", R
    ),
    "upload/unknown-partner": Bad(
        upload_meta(partners=["xx-aisi"]), 422, "invalid-input", "share.denied", "unknown-partner"
    ),
    "upload/duplicate-partners": Bad(
        upload_meta(partners=["us-aisi", "us-aisi"]), 422, "invalid-input", R
    ),
    "upload/partner-traversal": Bad(
        upload_meta(partners=["../us-aisi"]), 422, "invalid-input", R
    ),
    "upload/as-reader": Bad(upload(meta(), role=Role.READER), 403, "forbidden", "auth.refused"),
    # Request heads (a real uvicorn process: tests/hardening/test_serve_limits.py); refused
    # before routing, audited as an anonymous refusal (no token was looked at)
    "head/huge-header": Bad(huge_header(), 431, "headers-too-large", R),
    # Authentication
    "auth/missing": Bad(with_auth(None), 401, "unauthorized", "auth.refused", "missing"),
    "auth/malformed": Bad(
        with_auth(b"Bearer nope"), 401, "unauthorized", "auth.refused", "malformed"
    ),
    "auth/basic": Bad(with_auth(b"Basic dXNlcjpwdw=="), 401, "unauthorized", "auth.refused"),
    "auth/invalid-utf8": Bad(with_auth(b"Bearer \xff\xfe"), 401, "unauthorized", "auth.refused"),
    "auth/unknown-token": Bad(
        with_auth(b"Bearer ent_00000000_" + b"A" * 43), 401, "unauthorized", "auth.refused",
        "unknown",
    ),
    # /v1 ids, cursors and filters
    # %2F decodes to "/": these match no route (scans of unknown paths are logged, not audited)
    "ids/traversal": Bad(get("/v1/artifacts/..%2F..%2Fetc%2Fpasswd"), 404, "not-found", None),
    "ids/traversal-content": Bad(
        get("/v1/artifacts/..%2F..%2Fblobs/content"), 404, "not-found", None
    ),
    "ids/dot-dot": Bad(get("/v1/artifacts/../artifacts/x"), 404, "not-found", R),
    "ids/too-long": Bad(get("/v1/artifacts/" + "a" * 300), 404, "not-found", R),
    "ids/nul (regression, 500 on PostgreSQL)": Bad(
        get("/v1/artifacts/a%00b"), 422, "invalid-input", R
    ),
    "ids/invalid-utf8": Bad(get("/v1/artifacts/%ff%fe"), 404, "not-found", R),
    "ids/revoke-unknown": Bad(
        get("/v1/artifacts/art_nope/revoke", Role.PUBLISHER, "POST"), 404, "not-found", R,
    ),
    "cursor/garbage": Bad(get("/v1/artifacts?cursor=%%%"), 422, "invalid-input", R),
    "cursor/no-zone (regression, 500)": Bad(
        get(f"/v1/artifacts?cursor={cursor('2026-01-01T00:00:00')}"), 422, "invalid-input", R,
    ),
    "cursor/no-utc (regression, 500)": Bad(
        get(f"/v1/artifacts?cursor={cursor(NO_UTC)}"), 422, "invalid-input", R
    ),
    "filter/partner-nul (regression, 500 on PostgreSQL)": Bad(
        get("/v1/artifacts?partner=us%00"), 422, "invalid-input", R
    ),
    "filter/direction": Bad(get("/v1/artifacts?direction=up"), 422, "invalid-input", R),
    "filter/limit-zero": Bad(get("/v1/artifacts?limit=0"), 422, "invalid-input", R),
    # /audit/v1
    "audit/since-no-zone": Bad(
        get("/audit/v1/entries?since=2026-01-01T00:00:00", Role.AUDITOR), 422, "invalid-input",
        R,
    ),
    "audit/since-no-utc (regression, 500)": Bad(
        get(f"/audit/v1/entries?since={NO_UTC.replace('+', '%2B')}", Role.AUDITOR),
        422, "invalid-input", R,
    ),
    "audit/kind-unknown": Bad(
        get("/audit/v1/entries?kind=nope", Role.AUDITOR), 422, "invalid-input", R
    ),
    "audit/after-beyond-bigint (regression, 500)": Bad(
        get(f"/audit/v1/entries?after={1 << 63}", Role.AUDITOR), 422, "invalid-input", R
    ),
    "audit/export-beyond-bigint (regression, 500)": Bad(
        get(f"/audit/v1/export?size={1 << 64}", Role.AUDITOR), 422, "invalid-input", R
    ),
    "audit/consistency-backwards": Bad(
        get("/audit/v1/proof/consistency?old=5&new=2", Role.AUDITOR), 422, "invalid-input",
        R,
    ),
    "audit/as-reader": Bad(get("/audit/v1/entries"), 403, "forbidden", "auth.refused"),
    # /federation/v1: who is calling
    "federation/unsigned": Bad(_unsigned(), 401, "unauthorized", "federation.refused"),
    "federation/unknown-partner-key": Bad(_stranger(), 401, "unauthorized", "federation.refused"),
    "federation/replayed-signature": Bad(_replay(), 401, "unauthorized", "federation.refused"),
    "federation/stale-signature": Bad(
        _stale_signature(), 401, "unauthorized", "federation.refused"
    ),
    "federation/body-not-what-was-signed": Bad(
        fed_call("POST", "/federation/v1/notices", b'{"a": 1}', signed_body=b'{"a": 2}'),
        422, "invalid-input", R, "digest",
    ),
    # ... deliveries: content types, sizes, manifests, payloads
    "inbox/wrong-content-type": Bad(
        fed_call("POST", "/federation/v1/inbox", b"x", ctype="application/json"),
        422, "invalid-input", "receive.rejected",
    ),
    "inbox/empty": Bad(deliver(lambda e: b""), 422, "invalid-input", "receive.rejected"),
    "inbox/manifest-not-json": Bad(
        deliver(lambda e: b"{not json\n" + e.fresh_ciphertext), 422, "invalid-input",
        "receive.rejected",
    ),
    "inbox/manifest-truncated": Bad(
        deliver(lambda e: e.fresh_manifest[:200] + b"\n" + e.fresh_ciphertext),
        422, "invalid-input", "receive.rejected",
    ),
    "inbox/manifest-signature-corrupted": Bad(
        deliver(lambda e: e.fresh_manifest.replace(b'"sig":"', b'"sig":"AAAA', 1) + b"\n"
                + e.fresh_ciphertext),
        422, "invalid-input", "receive.rejected",
    ),
    "inbox/manifest-of-another-origin": Bad(
        deliver(lambda e: e.fresh_manifest + b"\n" + e.fresh_ciphertext, lambda e: e.nodes.ca),
        422, "invalid-input", "receive.rejected",
    ),
    "inbox/not-a-recipient": Bad(
        deliver(lambda e: b"\n".join(delivery(e.nodes.us, e.ca_only))),
        422, "invalid-input", "receive.rejected", "not-a-recipient",
    ),
    "inbox/tlp-unknown-signed": Bad(
        deliver(lambda e: statement_signed(e, _set_tlp) + b"\n" + e.fresh_ciphertext),
        422, "invalid-input", "receive.rejected",
    ),
    "inbox/created-no-utc-signed": Bad(
        deliver(lambda e: statement_signed(e, _set_created) + b"\n" + e.fresh_ciphertext),
        422, "invalid-input", "receive.rejected",
    ),
    "inbox/expired-long-ago-signed": Bad(
        deliver(lambda e: resigned(e, expires_at=datetime(1970, 1, 1, tzinfo=UTC)) + b"\n"
                + e.fresh_ciphertext),
        403, "policy-denied", "receive.rejected",
    ),
    "inbox/nul-in-title-signed (regression, orphaned blob)": Bad(
        deliver(lambda e: resigned(e, title="a\x00b") + b"\n" + e.fresh_ciphertext),
        422, "invalid-input", R,
    ),
    "inbox/duplicate-id-other-content": Bad(
        deliver(lambda e: resigned(e, artifact_id=e.received) + b"\n" + e.fresh_ciphertext),
        409, "conflict", "receive.rejected",
    ),
    "inbox/ciphertext-truncated": Bad(
        deliver(lambda e: e.fresh_manifest + b"\n" + e.fresh_ciphertext[:-100]),
        422, "invalid-input", "receive.rejected", "payload",
    ),
    "inbox/ciphertext-corrupted": Bad(
        deliver(lambda e: e.fresh_manifest + b"\n" + flip(e.fresh_ciphertext, 3000)),
        422, "invalid-input", "receive.rejected", "payload",
    ),
    "inbox/ciphertext-header-corrupted": Bad(
        deliver(lambda e: e.fresh_manifest + b"\n" + flip(e.fresh_ciphertext, 40)),
        422, "invalid-input", "receive.rejected", "payload",
    ),
    "inbox/trailing-bytes": Bad(
        deliver(lambda e: e.fresh_manifest + b"\n" + e.fresh_ciphertext + b"more"),
        422, "invalid-input", "receive.rejected", "payload",
    ),
    "inbox/too-large": Bad(
        deliver(lambda e: e.fresh_manifest + b"\n" + b"\x00" * (1300 << 10)),
        413, "too-large", "receive.rejected",
    ),
    # ... the other federation routes
    "notices/not-json": Bad(
        fed_call("POST", "/federation/v1/notices", b"{nope"), 422, "invalid-input", R
    ),
    "notices/not-object": Bad(
        fed_call("POST", "/federation/v1/notices", b"[1]"), 422, "invalid-input", R
    ),
    "notices/id-beyond-bigint (regression, 500)": Bad(
        fed_call("POST", "/federation/v1/notices", json.dumps(
            {"type": "revocation", "notice_id": 1 << 64, "artifact_id": "art_x", "sha256": "0" * 64}
        ).encode()),
        422, "invalid-input", R,
    ),
    "feed/after-beyond-bigint (regression, 500)": Bad(
        fed_call("GET", f"/federation/v1/feed?after={1 << 63}"), 422, "invalid-input", R
    ),
    "payload/traversal": Bad(
        fed_call("GET", "/federation/v1/artifacts/..%2F..%2Fentente.db/payload"),
        404, "not-found", None,
    ),
    "descriptor/garbage": Bad(
        fed_call("POST", "/federation/v1/descriptor", b"\x00garbage"), 422, "invalid-input",
        R,
    ),
}  # fmt: skip


async def check_refusal(e: Env, send: Send, expected: Bad) -> None:
    before = snapshot(e.uk.node)
    r = await send(e)
    assert r.status_code == expected.status, r.text
    assert r.headers["content-type"] == "application/problem+json", r.headers
    doc = r.json()
    assert doc["type"] == f"urn:entente:problem:{expected.kind}", doc
    assert doc["status"] == expected.status and doc["title"] and doc["detail"], doc
    if expected.reason is not None:
        assert doc.get("reason") == expected.reason, doc
    after = snapshot(e.uk.node)
    assert after.rows == before.rows, "the refusal changed the database"
    assert after.blobs == before.blobs, "the refusal changed the blob store"
    assert after.temporary == before.temporary, "the refusal left a temporary file"
    # Anonymous refusals after a source's first in a window are summarised when the window
    # ends (M2): end it now, so this refusal is on record one way or the other.
    e.uk.app.state.refusals.flush(force=True)
    kinds = [event["kind"] for event in audit_since(e.uk.node, before)]
    if expected.audit is None:
        assert kinds == [], kinds
    else:
        assert expected.audit in kinds, kinds


@pytest.mark.parametrize("case", list(CASES))
async def test_bad_input(env: Env, case: str) -> None:
    expected = CASES[case]
    await check_refusal(env, expected.send, expected)


# --- age failure vectors as delivered payloads ---------------------------------------------------


def vector_delivery(e: Env, path: Path) -> bytes:
    """A pinned partner delivers a C2SP age vector as the ciphertext, with a manifest it signed
    that binds the vector's own header, so the node gets past the header digest into parsing
    and decrypting it."""
    head, _, body = path.read_bytes().partition(b"\n\n")
    if b"compressed: zlib" in head:
        body = zlib.decompress(body)
    end = body.find(b"\n", body.find(b"\n---") + 1)
    header = body[: end + 1] if end > 0 else body
    line = resigned(
        e,
        artifact_id=f"vec_{hashlib.sha256(path.name.encode()).hexdigest()[:16]}",
        age_header_sha256=hashlib.sha256(header).hexdigest(),
    )
    return line + b"\n" + body


@pytest.mark.vectors
@pytest.mark.parametrize("path", vector_params("age"))
async def test_age_vector_as_payload(sqlite_env: Env, path: Path | None) -> None:
    vectors_dir("age")  # skip (or, in CI, fail) when the vectors are missing
    assert path is not None
    env = sqlite_env
    send = deliver(lambda e: vector_delivery(e, path))
    if len(vector_delivery(env, path)) > INBOX_LIMIT:  # the long STREAM vectors
        expected = Bad(send, 413, "too-large", "receive.rejected")
    else:
        expected = Bad(send, 422, "invalid-input", "receive.rejected", "payload")
    await check_refusal(env, send, expected)


# --- not refusals, but the same promise ----------------------------------------------------------


async def test_duplicate_delivery_is_idempotent(env: Env) -> None:
    """The same delivery again is answered with the receipt already issued; nothing changes."""
    before = snapshot(env.uk.node)
    r = await inbox(env, env.manifest + b"\n" + env.ciphertext)
    assert r.status_code == 200, r.text
    assert r.json()["created"] is False
    with env.uk.node.db.session() as session:
        from service.models import Artifact

        row = session.exec(select(Artifact).where(Artifact.id == env.received)).first()
        assert row is not None and json.loads(row.receipt or "{}") == r.json()["receipt"]
    after = snapshot(env.uk.node)
    assert (after.rows, after.blobs, after.temporary) == (
        before.rows,
        before.blobs,
        before.temporary,
    )


def test_every_route_family_has_cases() -> None:
    families = {case.split("/")[0] for case in CASES}
    assert {"upload", "head", "auth", "ids", "cursor", "filter", "audit", "federation", "inbox",
            "notices", "feed", "payload", "descriptor"} <= families  # fmt: skip


async def test_dates_before_year_1000_round_trip(env: Env) -> None:
    """Regression: strftime wrote year 500 as "500-01-01", so the node sealed a manifest it could
    not verify again: reading the artifact failed mid-stream (500) and partners refused it."""
    uk = env.uk
    async with uk.client() as c:
        r = await c.post(
            "/v1/artifacts",
            content=upload_body(
                meta(embargo_until="0500-01-01T00:00:00Z", tlp="TLP:GREEN"), b"old"
            ),
            headers={**UPLOAD_HEADERS, **uk.auth(Role.PUBLISHER)},
        )
        assert r.status_code == 201, r.text
        ident = r.json()["id"]
        read = await c.get(f"/v1/artifacts/{ident}/content", headers=uk.auth(Role.READER))
        detail = await c.get(f"/v1/artifacts/{ident}", headers=uk.auth(Role.READER))
    assert read.status_code == 200 and read.content == b"old"
    predicate = json.loads(base64.b64decode(detail.json()["manifest"]["payload"]))["predicate"]
    assert predicate["embargo_until"] == "0500-01-01T00:00:00Z"
