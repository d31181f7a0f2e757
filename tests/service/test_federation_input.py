"""Bad federation input: each case is a 4xx problem document and an audit event; nothing stored.

In-process nodes (``tests/service/nodekit.py``): ``uk-aisi`` sends to ``us-aisi`` through
``httpx.ASGITransport``, signing each request itself (RFC 9421) so that every field can be
forged. ``ca-aisi`` plays the third node whose key must not be accepted for the UK.
"""

from __future__ import annotations

import contextlib
import io
import json
import secrets
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlmodel import col, func, select

from crypto import httpsig
from crypto.keys import SigningKey
from crypto.keyset import SignerSet
from crypto.sealed import ManifestRecipient, seal
from service.models import Artifact, AuditEntry
from tests.service.nodekit import Kit, folder_store, make_node, pin

INBOX = "/federation/v1/inbox"
DELIVERY = "application/vnd.entente.delivery"
BATCH = "application/vnd.entente.delivery-batch"
LIMIT = 16 << 10  # bytes: us-aisi's ENTENTE_MAX_ARTIFACT_BYTES in these tests


@dataclass
class Trio:
    uk: Kit
    us: Kit
    ca: Kit


@pytest.fixture
def trio(tmp_path: Path) -> Trio:
    uk = make_node(tmp_path, "uk-aisi")
    us = make_node(
        tmp_path, "us-aisi", max_artifact_bytes=LIMIT, max_federation_manifest_bytes=LIMIT
    )
    ca = make_node(tmp_path, "ca-aisi")
    for a in (uk, us, ca):
        for b in (uk, us, ca):
            if a is not b:
                pin(a, b)
    return Trio(uk, us, ca)


def sealed_artifact(
    sender: Kit,
    recipients: list[Kit],
    content: bytes = b"finding\n" * 512,
    *,
    signer: SigningKey | SignerSet | None = None,
    origin: str | None = None,
    tlp: str = "TLP:GREEN",
    policy: dict[str, Any] | None = None,
    chain: tuple[dict[str, Any], ...] = (),
    artifact_id: str | None = None,
    topics: tuple[str, ...] = ("evaluation",),
    purposes: tuple[str, ...] = ("evaluation",),
    hybrid: bool = False,
    **extra: Any,
) -> tuple[str, bytes, bytes]:
    """(artifact id, manifest line, ciphertext) sealed by ``sender`` to itself and others."""
    out = io.BytesIO()
    art_id = artifact_id or f"art_test{secrets.token_hex(8)}"
    result = seal(
        io.BytesIO(content),
        out,
        artifact_id=art_id,
        title="A finding",
        origin=origin or sender.node.node_id,
        tlp=tlp,
        recipients=[
            ManifestRecipient(
                k.node.node_id,
                (k.node.home.pq_recipient or "") if hybrid else k.node.home.age_recipient,
            )
            for k in [sender, *recipients]
        ],
        signer=signer or sender.node.keys.signer,
        policy=policy or {"decisions": []},
        now=datetime.now(UTC),
        topics=list(topics),
        purposes=list(purposes),
        chain=chain,
        **extra,
    )
    line = json.dumps(result.envelope.to_json(), separators=(",", ":")).encode()
    return art_id, line, out.getvalue()


def sign(
    sender: Kit,
    receiver: Kit,
    method: str,
    path: str,
    body: bytes,
    *,
    key: SigningKey | None = None,
    keyid: str | None = None,
    created: int | None = None,
    digest_of: bytes | None = None,
    content_type: str = DELIVERY,
    extra: dict[str, str] | None = None,
) -> dict[str, str]:
    key = key or sender.node.keys.signing
    url = receiver.node.home.url + path
    headers = {
        "Content-Type": content_type,
        "Content-Digest": httpsig.content_digest(body if digest_of is None else digest_of),
        **(extra or {}),
    }
    now = int(datetime.now(UTC).timestamp()) if created is None else created
    headers.update(
        httpsig.sign_request(
            httpsig.Request(method, url, headers),
            key=key,
            keyid=keyid or key.fingerprint,
            created=now,
            expires=now + 300,
            nonce=secrets.token_urlsafe(16),
        )
    )
    return headers


async def cut_push(
    receiver: Kit, headers: dict[str, str], body: bytes, cut: int
) -> tuple[list[int], int]:
    """POST ``body`` to ``receiver``'s inbox as a sender whose connection drops after ``cut``
    bytes (straight into the ASGI app, which sees the disconnect); the statuses the app
    answered, and how many of the request's messages it left unread."""
    messages: list[dict[str, object]] = [
        {"type": "http.request", "body": body[:cut], "more_body": True},
        {"type": "http.disconnect"},
    ]
    sent: list[MutableMapping[str, Any]] = []

    async def receive() -> dict[str, object]:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    host = receiver.node.node_id
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": INBOX, "raw_path": INBOX.encode(), "query_string": b"",
        "root_path": "", "server": (host, 80), "client": ("127.0.0.1", 1),
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()]
        + [(b"host", host.encode()), (b"content-length", str(len(body)).encode())],
    }  # fmt: skip
    with contextlib.suppress(Exception):  # the app may give up on the request any way it likes
        await receiver.app(scope, receive, send)
    statuses = [int(str(m["status"])) for m in sent if m["type"] == "http.response.start"]
    return statuses, len(messages)


@dataclass
class Case:
    """One bad input. ``build(trio)`` returns (artifact id or None, headers, body)."""

    build: Callable[[Trio], tuple[str | None, dict[str, str], bytes]]
    status: int
    problem: str
    audit: str
    reason: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _delivery(t: Trio, **kw: Any) -> tuple[str, bytes]:
    art_id, line, ct = sealed_artifact(t.uk, [t.us], **kw)
    return art_id, line + b"\n" + ct


def unsigned(t: Trio) -> tuple[str | None, dict[str, str], bytes]:
    art_id, body = _delivery(t)
    return art_id, {"Content-Type": DELIVERY}, body


def wrong_key(t: Trio) -> tuple[str | None, dict[str, str], bytes]:
    art_id, body = _delivery(t)
    impostor = SigningKey.generate()
    keyid = t.uk.node.keys.signing.fingerprint  # claims to be the UK
    return art_id, sign(t.uk, t.us, "POST", INBOX, body, key=impostor, keyid=keyid), body


def unknown_partner(t: Trio) -> tuple[str | None, dict[str, str], bytes]:
    art_id, body = _delivery(t)
    return art_id, sign(t.uk, t.us, "POST", INBOX, body, key=SigningKey.generate()), body


def expired(t: Trio) -> tuple[str | None, dict[str, str], bytes]:
    art_id, body = _delivery(t)
    an_hour_ago = int((datetime.now(UTC) - timedelta(hours=1)).timestamp())
    return art_id, sign(t.uk, t.us, "POST", INBOX, body, created=an_hour_ago), body


def digest_mismatch(t: Trio) -> tuple[str | None, dict[str, str], bytes]:
    art_id, body = _delivery(t)
    # The last byte flipped: replacing it with 0x00 left the digest right whenever the random
    # ciphertext already ended in 0x00 (one run in 256 took the delivery).
    headers = sign(t.uk, t.us, "POST", INBOX, body, digest_of=body[:-1] + bytes([body[-1] ^ 1]))
    return art_id, headers, body


def oversized_body(t: Trio) -> tuple[str | None, dict[str, str], bytes]:
    art_id, body = _delivery(t, content=secrets.token_bytes(LIMIT * 4))
    return art_id, sign(t.uk, t.us, "POST", INBOX, body), body


def oversized_artifact(t: Trio) -> tuple[str | None, dict[str, str], bytes]:
    art_id, body = _delivery(t, content=secrets.token_bytes(LIMIT + 1))
    return art_id, sign(t.uk, t.us, "POST", INBOX, body), body


def signed_by_someone_else(t: Trio) -> tuple[str | None, dict[str, str], bytes]:
    # a manifest Canada signed (as its origin), delivered by the UK
    art_id, line, ct = sealed_artifact(t.ca, [t.us])
    body = line + b"\n" + ct
    return art_id, sign(t.uk, t.us, "POST", INBOX, body), body


def claims_uk_signed_by_ca(t: Trio) -> tuple[str | None, dict[str, str], bytes]:
    art_id, body = _delivery(t, signer=t.ca.node.keys.signer)
    return art_id, sign(t.uk, t.us, "POST", INBOX, body), body


def policy_forbidden(t: Trio) -> tuple[str | None, dict[str, str], bytes]:
    art_id, body = _delivery(t, tlp="TLP:RED")
    return art_id, sign(t.uk, t.us, "POST", INBOX, body), body


def not_a_recipient(t: Trio) -> tuple[str | None, dict[str, str], bytes]:
    art_id, line, ct = sealed_artifact(t.uk, [t.ca])
    body = line + b"\n" + ct
    return art_id, sign(t.uk, t.us, "POST", INBOX, body), body


def tampered_payload(t: Trio) -> tuple[str | None, dict[str, str], bytes]:
    art_id, line, ct = sealed_artifact(t.uk, [t.us])
    body = line + b"\n" + ct[:-20] + bytes(20)
    return art_id, sign(t.uk, t.us, "POST", INBOX, body), body


def trailing_bytes(t: Trio) -> tuple[str | None, dict[str, str], bytes]:
    art_id, body = _delivery(t)
    body += b"more"
    return art_id, sign(t.uk, t.us, "POST", INBOX, body), body


def forged_onward_chain(t: Trio) -> tuple[str | None, dict[str, str], bytes]:
    # Canada shared with the UK without any onward obligation; the UK passes it on anyway.
    content = b"not to be passed on\n" * 100
    _id, upstream_line, _ct = sealed_artifact(
        t.ca, [t.uk], content,
        policy={"decisions": [{"partner": "uk-aisi", "effect": "allow", "obligations": []}]},
    )  # fmt: skip
    art_id, body = _delivery(t, content=content, chain=(json.loads(upstream_line),))
    return art_id, sign(t.uk, t.us, "POST", INBOX, body), body


def wrong_content_type(t: Trio) -> tuple[str | None, dict[str, str], bytes]:
    art_id, body = _delivery(t)
    return art_id, sign(t.uk, t.us, "POST", INBOX, body, content_type="text/plain"), body


def no_manifest_line(t: Trio) -> tuple[str | None, dict[str, str], bytes]:
    body = b"x" * 100
    return None, sign(t.uk, t.us, "POST", INBOX, body), body


REFUSED = "federation.refused"
REJECTED = "receive.rejected"
CASES = {
    "unsigned": Case(unsigned, 401, "unauthorized", REFUSED),
    "wrong-key": Case(wrong_key, 401, "unauthorized", REFUSED),
    "unknown-partner": Case(unknown_partner, 401, "unauthorized", REFUSED),
    "expired": Case(expired, 401, "unauthorized", REFUSED),
    "digest-mismatch": Case(digest_mismatch, 422, "invalid-input", REJECTED, "digest"),
    "oversized-body": Case(oversized_body, 413, "too-large", REJECTED),
    "oversized-artifact": Case(oversized_artifact, 413, "too-large", REJECTED, "too-large"),
    "signed-by-someone-else": Case(
        signed_by_someone_else, 422, "invalid-input", REJECTED, "manifest"
    ),
    "claims-uk-signed-by-ca": Case(
        claims_uk_signed_by_ca, 422, "invalid-input", REJECTED, "manifest"
    ),
    "inbound-policy-forbids": Case(
        policy_forbidden, 403, "policy-denied", REJECTED, extra={"rule": "above-amber"}
    ),
    "not-a-recipient": Case(not_a_recipient, 422, "invalid-input", REJECTED, "not-a-recipient"),
    "tampered-payload": Case(tampered_payload, 422, "invalid-input", REJECTED, "payload"),
    "trailing-bytes": Case(trailing_bytes, 422, "invalid-input", REJECTED, "payload"),
    "forged-onward-chain": Case(forged_onward_chain, 422, "invalid-input", REJECTED, "chain"),
    "wrong-content-type": Case(wrong_content_type, 422, "invalid-input", REJECTED),
    "no-manifest-line": Case(no_manifest_line, 422, "invalid-input", REJECTED),
}


def audit_count(kit: Kit, kind: str) -> int:
    with kit.node.db.session() as session:
        return session.exec(
            select(func.count()).select_from(AuditEntry).where(AuditEntry.kind == kind)
        ).one()


def stored(kit: Kit) -> tuple[int, list[str], list[Path]]:
    """Artifact rows, blob files and leftover temporary files at ``kit``."""
    with kit.node.db.session() as session:
        rows = session.exec(select(func.count()).select_from(Artifact)).one()
    blobs = folder_store(kit.node)
    return rows, sorted(blobs.iter_digests()), sorted((blobs.root / "tmp").glob("*"))


async def post(t: Trio, headers: dict[str, str], body: bytes) -> httpx.Response:
    async with t.us.client() as client:
        return await client.post(INBOX, content=body, headers=headers)


@pytest.mark.parametrize("name", list(CASES))
async def test_bad_delivery_is_a_problem_an_audit_event_and_stores_nothing(
    trio: Trio, name: str
) -> None:
    case = CASES[name]
    art_id, headers, body = case.build(trio)
    before, audits = stored(trio.us), audit_count(trio.us, case.audit)
    r = await post(trio, headers, body)
    assert r.status_code == case.status, r.text
    assert r.headers["content-type"] == "application/problem+json"
    problem = r.json()
    assert problem["type"] == f"urn:entente:problem:{case.problem}"
    assert problem["status"] == case.status and problem["detail"]
    if case.reason:
        assert problem.get("reason") == case.reason, problem
    for key, value in case.extra.items():
        assert problem.get(key) == value, problem
    assert audit_count(trio.us, case.audit) == audits + 1
    assert stored(trio.us) == before
    if art_id is not None:
        with trio.us.node.db.session() as session:
            assert session.exec(select(Artifact).where(Artifact.id == art_id)).first() is None


async def test_replayed_request_is_refused_and_stores_nothing_twice(trio: Trio) -> None:
    art_id, body = _delivery(trio)
    headers = sign(trio.uk, trio.us, "POST", INBOX, body)
    first = await post(trio, headers, body)
    assert first.status_code == 201, first.text
    rows, blobs, _ = stored(trio.us)
    refused = audit_count(trio.us, REFUSED)
    again = await post(trio, headers, body)
    assert again.status_code == 401
    assert again.json()["type"] == "urn:entente:problem:unauthorized"
    assert "nonce" in again.json()["detail"]
    assert audit_count(trio.us, REFUSED) == refused + 1
    assert stored(trio.us)[:2] == (rows, blobs)
    with trio.us.node.db.session() as session:
        accepted = session.exec(
            select(func.count())
            .select_from(AuditEntry)
            .where(AuditEntry.kind == "receive.accepted", col(AuditEntry.artifact_id) == art_id)
        ).one()
    assert accepted == 1


async def test_repeat_delivery_is_a_no_op_with_the_same_receipt(trio: Trio) -> None:
    art_id, body = _delivery(trio)
    first = await post(trio, sign(trio.uk, trio.us, "POST", INBOX, body), body)
    second = await post(trio, sign(trio.uk, trio.us, "POST", INBOX, body), body)
    assert (first.status_code, second.status_code) == (201, 200)
    assert first.json()["receipt"] == second.json()["receipt"]
    assert second.json()["created"] is False
    assert stored(trio.us)[0] == 1
    with trio.us.node.db.session() as session:
        assert session.exec(select(Artifact).where(Artifact.id == art_id)).first() is not None


async def test_batch_refuses_bad_items_and_stores_the_good_ones(trio: Trio) -> None:
    good_id, good_line, good_ct = sealed_artifact(trio.uk, [trio.us])
    red_id, red_line, red_ct = sealed_artifact(trio.uk, [trio.us], tlp="TLP:RED")
    other_id, other_line, other_ct = sealed_artifact(trio.uk, [trio.ca])
    body = b"".join(
        line + b"\n" + str(len(ct)).encode() + b"\n" + ct
        for line, ct in ((good_line, good_ct), (red_line, red_ct), (other_line, other_ct))
    )
    headers = sign(trio.uk, trio.us, "POST", INBOX, body, content_type=BATCH)
    rejected = audit_count(trio.us, REJECTED)
    r = await post(trio, headers, body)
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [x["status"] for x in results] == [201, 403, 422]
    assert results[0]["artifact_id"] == good_id and results[0]["receipt"]
    assert results[1]["problem"]["type"] == "urn:entente:problem:policy-denied"
    assert audit_count(trio.us, REJECTED) == rejected + 2
    with trio.us.node.db.session() as session:
        assert session.exec(select(Artifact).where(Artifact.id == good_id)).first() is not None
        assert session.exec(select(Artifact).where(Artifact.id == red_id)).first() is None
        assert session.exec(select(Artifact).where(Artifact.id == other_id)).first() is None
    assert len(stored(trio.us)[1]) == 1


async def test_a_batchs_refusals_past_the_first_four_are_one_summary_entry(trio: Trio) -> None:
    """64 refused items a request, at every request the rate allows, were 64 audit entries in
    as many transactions each time."""
    red = [sealed_artifact(trio.uk, [trio.us], tlp="TLP:RED") for _ in range(10)]
    items = [(line, ct) for _, line, ct in red] + [(b'{"x": 1}', b"junk")] * 54
    body = b"".join(line + b"\n" + str(len(ct)).encode() + b"\n" + ct for line, ct in items)
    headers = sign(trio.uk, trio.us, "POST", INBOX, body, content_type=BATCH)
    rejected = audit_count(trio.us, REJECTED)
    r = await post(trio, headers, body)
    assert r.status_code == 200, r.text
    statuses = [x["status"] for x in r.json()["results"]]
    assert statuses == [403] * 10 + [422] * 54  # every item still answered with its refusal
    assert audit_count(trio.us, REJECTED) == rejected + 5
    with trio.us.node.db.session() as session:
        [summary] = session.exec(
            select(AuditEntry).where(AuditEntry.kind == REJECTED, AuditEntry.rule == "summary")
        ).all()
    detail = json.loads(summary.detail)
    assert (detail["count"], detail["audited_each"], detail["via"]) == (60, 4, "push")
    assert sum(detail["reasons"].values()) == 60
    assert summary.actor == "partner:uk-aisi" and summary.partner == "uk-aisi"


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"{}\n12\nshort", id="shorter-than-its-length"),
        pytest.param(b"{}\nnot-a-length\n", id="no-length"),
        pytest.param(b"", id="empty"),
    ],
)
async def test_malformed_batch_is_refused(trio: Trio, body: bytes) -> None:
    headers = sign(trio.uk, trio.us, "POST", INBOX, body, content_type=BATCH)
    rejected = audit_count(trio.us, REJECTED)
    r = await post(trio, headers, body)
    assert r.status_code == 422
    assert r.json()["type"] == "urn:entente:problem:invalid-input"
    assert audit_count(trio.us, REJECTED) == rejected + 1
    assert stored(trio.us)[0] == 0


def test_case_table_covers_the_issue_list() -> None:
    wanted = {
        "unsigned", "wrong-key", "unknown-partner", "expired", "digest-mismatch",
        "oversized-body", "signed-by-someone-else", "inbound-policy-forbids", "not-a-recipient",
    }  # fmt: skip
    assert wanted <= set(CASES)
