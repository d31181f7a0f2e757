"""Resumable uploads (draft-ietf-httpbis-resumable-upload) in-process: create with
``POST /v1/artifacts`` and ``Upload-Complete: ?0``, ``HEAD`` the offset, ``PATCH`` the rest,
``DELETE``; the completed upload is the share a plain ``POST`` would have been."""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from sqlmodel import select

from service import uploads
from service.api import uploads as api_uploads
from service.artifacts.sweep import sweep
from service.errors import BlobStoreError
from service.models import Artifact, AuditEntry
from service.tokens import Principal, Role, create_token
from service.uploads import store as upload_store
from tests.service.nodekit import UPLOAD_HEADERS, Kit, folder_store, make_node, pin, upload_body

MARKER = b"PLAINTEXT-MARKER-4f1c"


@pytest.fixture
def uk(tmp_path: Path, db_url: str) -> Kit:
    kit = make_node(tmp_path, "uk-aisi", db_url=db_url, max_open_uploads=2)
    for other in ("us-aisi", "ca-aisi"):
        pin(kit, make_node(tmp_path, other))
    return kit


def _meta(**changes: object) -> str:
    base = {"title": "Weights audit", "tlp": "TLP:AMBER", "topics": ["evaluation/red-teaming"],
            "purposes": ["evaluation"], "partners": ["us-aisi"]}  # fmt: skip
    base.update(changes)
    return json.dumps(base)


async def _create(c: httpx.AsyncClient, kit: Kit, first: bytes = b"", **extra: str) -> str:
    r = await c.post(
        "/v1/artifacts",
        content=first,
        headers={**UPLOAD_HEADERS, **kit.auth(Role.PUBLISHER), "Upload-Complete": "?0", **extra},
    )
    assert r.status_code == 201, r.text
    assert r.headers["Upload-Complete"] == "?0"
    assert r.headers["Upload-Offset"] == str(len(first))
    assert r.headers["Location"].startswith("/v1/uploads/upl_")
    return r.headers["Location"]


async def _patch(
    c: httpx.AsyncClient, kit: Kit, where: str, offset: int, data: bytes, *, last: bool
) -> httpx.Response:
    return await c.patch(
        where,
        content=data,
        headers={**kit.auth(Role.PUBLISHER), "Content-Type": "application/partial-upload",
                 "Upload-Offset": str(offset), "Upload-Complete": "?1" if last else "?0"},
    )  # fmt: skip


def _blob_bytes(kit: Kit) -> list[bytes]:
    store = folder_store(kit.node)
    return [store.path_for(d).read_bytes() for d in store.iter_digests()]


async def test_create_head_wrong_offset_then_complete_is_the_share(uk: Kit) -> None:
    content = MARKER + b"finding " * 40_000
    body = upload_body(_meta(), content)
    cut = len(body) // 3
    async with uk.client() as c:
        where = await _create(c, uk, body[:cut], **{"Upload-Length": str(len(body))})
        head = await c.head(where, headers=uk.auth(Role.PUBLISHER))
        assert head.status_code == 204
        assert head.headers["Upload-Offset"] == str(cut)
        assert head.headers["Upload-Length"] == str(len(body))
        assert head.headers["Cache-Control"] == "no-store"
        limit, max_age = head.headers["Upload-Limit"].split(", ")
        assert limit.startswith("max-size=") and max_age.startswith("max-age=")
        assert head.headers["Upload-Draft-Interop-Version"] == "8"
        # Nothing at rest is plaintext: the stored segment is an age file to the node itself.
        stored = _blob_bytes(uk)
        assert len(stored) == 1 and MARKER not in stored[0]
        assert stored[0].startswith(b"age-encryption.org/v1\n")

        wrong = await _patch(c, uk, where, cut + 10, body[cut + 10 :], last=True)
        assert wrong.status_code == 409
        assert wrong.headers["Upload-Offset"] == str(cut)  # the draft: the right offset
        problem = wrong.json()
        assert problem["type"] == (
            "https://iana.org/assignments/http-problem-types#mismatching-upload-offset"
        )
        assert (problem["expected-offset"], problem["provided-offset"]) == (cut, cut + 10)

        middle = await _patch(c, uk, where, cut, body[cut : 2 * cut], last=False)
        assert middle.status_code == 204
        assert middle.headers["Upload-Offset"] == str(2 * cut)
        done = await _patch(c, uk, where, 2 * cut, body[2 * cut :], last=True)
        assert done.status_code == 201, done.text
        art = done.json()
        assert art["sha256"] == hashlib.sha256(content).hexdigest()
        assert art["recipients"] == ["uk-aisi", "us-aisi"]
        read = await c.get(f"/v1/artifacts/{art['id']}/content", headers=uk.auth(Role.READER))
        assert read.content == content
        # The upload is done; its answer, if the client lost it, is given again, once.
        finished = await c.head(where, headers=uk.auth(Role.PUBLISHER))
        assert finished.status_code == 204 and finished.headers["Upload-Complete"] == "?1"
        again = await _patch(c, uk, where, len(body), b"", last=True)
        assert again.status_code == 201 and again.headers["Idempotent-Replayed"] == "true"
        assert again.json() == art
    with uk.node.db.session() as s:
        rows = s.exec(select(Artifact)).all()
    assert [r.id for r in rows] == [art["id"]]
    assert list(folder_store(uk.node).iter_digests()) == [rows[0].blob]


async def test_policy_denial_through_the_upload_is_the_plain_shares_problem(uk: Kit) -> None:
    body = upload_body(_meta(partners=["us-aisi", "ca-aisi"]), b"secret finding")
    async with uk.client() as c:
        plain = await c.post(
            "/v1/artifacts", content=body, headers={**UPLOAD_HEADERS, **uk.auth(Role.PUBLISHER)}
        )
        where = await _create(c, uk)
        resumed = await _patch(c, uk, where, 0, body, last=True)
        after = await c.head(where, headers=uk.auth(Role.PUBLISHER))
    assert plain.status_code == resumed.status_code == 403
    assert resumed.headers["content-type"] == "application/problem+json"
    one, two = plain.json(), resumed.json()
    for member in ("type", "title", "detail", "partner", "clause", "rule"):
        assert one[member] == two[member]
    assert after.status_code == 404  # the upload is gone with its answer
    assert _blob_bytes(uk) == []
    with uk.node.db.session() as s:
        denied = s.exec(select(AuditEntry).where(AuditEntry.kind == "share.denied")).all()
    assert len(denied) == 2


async def test_another_token_finds_no_upload(uk: Kit) -> None:
    with uk.node.db.session() as session:
        _row, other = create_token(
            session, role=Role.PUBLISHER, name="other", now=uk.node.now(), actor="test"
        )
    theirs = {"Authorization": f"Bearer {other}"}
    async with uk.client() as c:
        where = await _create(c, uk, b"--entente-test\r\n")
        assert (await c.head(where, headers=theirs)).status_code == 404
        r = await c.patch(
            where,
            content=b"more",
            headers={**theirs, "Content-Type": "application/partial-upload",
                     "Upload-Offset": "16", "Upload-Complete": "?0"},
        )  # fmt: skip
        assert r.status_code == 404
        assert r.json()["type"] == "urn:entente:problem:not-found"
        assert (await c.delete(where, headers=theirs)).status_code == 404
        assert (await c.head(where, headers=uk.auth(Role.READER))).status_code == 403
        mine = await c.head(where, headers=uk.auth(Role.PUBLISHER))
        assert mine.headers["Upload-Offset"] == "16"


def _metric(kit: Kit, name: str, **labels: str) -> float:
    value = kit.node.metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


async def test_metrics_count_appends_and_what_open_uploads_hold(uk: Kit) -> None:
    body = upload_body(_meta(), b"x" * 5000)
    async with uk.client() as c:
        where = await _create(c, uk, b"", **{"Upload-Length": str(len(body))})
        assert (await _patch(c, uk, where, 0, body[:1000], last=False)).status_code == 204
        assert _metric(uk, "entente_uploads_open") == 1
        assert _metric(uk, "entente_upload_bytes_held") == 1000
        # The creation's own (here empty) part counts as an append, as the draft has it.
        assert _metric(uk, "entente_upload_appends_total", outcome="appended") == 2
        done = await _patch(c, uk, where, 1000, body[1000:], last=True)
        assert done.status_code == 201, done.text
    assert _metric(uk, "entente_upload_appends_total", outcome="last") == 1
    assert _metric(uk, "entente_upload_bytes_total") == len(body)
    assert _metric(uk, "entente_uploads_open") == 0
    assert _metric(uk, "entente_upload_bytes_held") == 0


async def test_cancel_and_expiry_delete_the_stored_bytes(uk: Kit) -> None:
    async with uk.client() as c:
        cancelled = await _create(c, uk, b"first bytes")
        assert (await c.delete(cancelled, headers=uk.auth(Role.PUBLISHER))).status_code == 204
        assert (await c.head(cancelled, headers=uk.auth(Role.PUBLISHER))).status_code == 404
        assert _blob_bytes(uk) == []
        expiring = await _create(c, uk, b"other bytes")
        assert len(_blob_bytes(uk)) == 1
        later = uk.node.now() + timedelta(seconds=uk.node.settings.upload_expiry_seconds + 1)
        assert uploads.purge_expired(uk.node, now=later) == 1
        assert (await c.head(expiring, headers=uk.auth(Role.PUBLISHER))).status_code == 404
    assert _blob_bytes(uk) == []


async def test_limits_and_malformed_fields_are_problems(uk: Kit) -> None:
    limit = uk.node.settings.max_artifact_bytes + uk.node.settings.max_metadata_bytes + (64 << 10)
    async with uk.client() as c:
        pub = {**UPLOAD_HEADERS, **uk.auth(Role.PUBLISHER), "Upload-Complete": "?0"}
        too_long = await c.post("/v1/artifacts", headers={**pub, "Upload-Length": str(limit + 1)})
        assert too_long.status_code == 413
        bad = await c.post("/v1/artifacts", headers={**pub, "Upload-Complete": "yes"})
        assert bad.status_code == 422
        keyed = await c.post("/v1/artifacts", headers={**pub, "Idempotency-Key": '"k1"'})
        assert keyed.status_code == 422
        short = await _create(c, uk, b"", **{"Upload-Length": "4"})
        inconsistent = "https://iana.org/assignments/http-problem-types#inconsistent-upload-length"
        over = await _patch(c, uk, short, 0, b"12345", last=True)
        assert (over.status_code, over.json()["type"]) == (400, inconsistent)
        early = await _patch(c, uk, short, 0, b"12", last=True)
        assert (early.status_code, early.json()["type"]) == (400, inconsistent)
        await _create(c, uk)
        busy = await c.post("/v1/artifacts", headers=pub)  # max_open_uploads=2
        assert busy.status_code == 429
        typed = await c.patch(
            short,
            content=b"12",
            headers={**uk.auth(Role.PUBLISHER), "Content-Type": "application/octet-stream",
                     "Upload-Offset": "0", "Upload-Complete": "?0"},
        )  # fmt: skip
        assert typed.status_code == 422
        assert (await c.head("/v1/uploads/nonsense", headers=pub)).status_code == 422


async def test_an_interrupted_append_keeps_the_bytes_it_received(uk: Kit) -> None:
    principal = Principal(token_id="t-1", name="p", role=Role.PUBLISHER)
    created = uploads.create(
        uk.node, principal=principal, content_type=UPLOAD_HEADERS["Content-Type"],
        length=None, max_size=1 << 20,
    )  # fmt: skip
    chunks = iter([b"a" * 1000, b"b" * 500])

    class Lost(Exception):
        pass

    def pull() -> bytes:
        chunk = next(chunks, None)
        if chunk is None:
            raise Lost
        return chunk

    with pytest.raises(Lost):
        uploads.append(uk.node, created.id, principal=principal, offset=0, pull=pull,
                       complete=False, max_size=1 << 20, interruptions=(Lost,))  # fmt: skip
    found = uploads.state(uk.node, created.id, principal=principal)
    assert (found.received, found.complete) == (1500, False)
    assert b"".join(uploads.plaintext(uk.node, created.id)) == b"a" * 1000 + b"b" * 500


async def test_an_upload_on_an_object_store(request: pytest.FixtureRequest, tmp_path: Path) -> None:
    server = request.getfixturevalue("seaweedfs")
    prefix = request.getfixturevalue("s3_prefix")
    options = {k.removeprefix("ENTENTE_").lower(): v for k, v in server.env(prefix).items()}
    kit = make_node(tmp_path, "uk-aisi", **options)
    pin(kit, make_node(tmp_path, "us-aisi"))
    content = MARKER + bytes(range(256)) * 40_000
    body = upload_body(_meta(), content)
    half = len(body) // 2
    async with kit.client() as c:
        where = await _create(c, kit, body[:half])
        done = await _patch(c, kit, where, half, body[half:], last=True)
        assert done.status_code == 201, done.text
        read = await c.get(
            f"/v1/artifacts/{done.json()['id']}/content", headers=kit.auth(Role.READER)
        )
    assert read.content == content
    assert len(list(kit.node.blobs.iter_digests())) == 1  # the segments are gone


async def test_a_segment_whose_row_never_committed_is_swept(uk: Kit) -> None:
    principal = Principal(token_id="t-1", name="p", role=Role.PUBLISHER)
    created = uploads.create(
        uk.node, principal=principal, content_type=UPLOAD_HEADERS["Content-Type"],
        length=None, max_size=1 << 20,
    )  # fmt: skip
    chunks = iter([b"kept bytes"])
    uploads.append(uk.node, created.id, principal=principal, offset=0,
                   pull=lambda: next(chunks, b""), complete=False, max_size=1 << 20)  # fmt: skip
    kept = _blob_bytes(uk)
    # A crash between a segment's blob and its row: the blob is journaled, nothing refers to it.
    stray = iter([b"never recorded"])
    body = upload_store._Received(lambda: next(stray, b""), 1 << 20, (), "too large")
    orphan = upload_store._write_segment(uk.node, body, upload_store.label(created.id, 10))
    assert orphan is not None and len(_blob_bytes(uk)) == 2
    later = time.time() + uk.node.settings.blob_orphan_grace_seconds + 60
    report = sweep(uk.node, clock=lambda: later)
    assert report.orphans_removed == 1
    assert _blob_bytes(uk) == kept  # the recorded segment stays
    assert b"".join(uploads.plaintext(uk.node, created.id)) == b"kept bytes"


async def test_a_share_unavailable_here_leaves_the_upload_for_the_last_append_again(
    uk: Kit, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = api_uploads._share_sync
    failures = [BlobStoreError("the object store is down")]

    def flaky(*args: Any) -> Any:
        if failures:
            raise failures.pop()
        return real(*args)

    monkeypatch.setattr(api_uploads, "_share_sync", flaky)
    content = b"finding " * 1000
    body = upload_body(_meta(), content)
    async with uk.client() as c:
        where = await _create(c, uk, body[:100])
        down = await _patch(c, uk, where, 100, body[100:], last=True)
        assert down.status_code == 503
        assert down.json()["type"] == "urn:entente:problem:blob-store"
        head = await c.head(where, headers=uk.auth(Role.PUBLISHER))
        assert (head.headers["Upload-Offset"], head.headers["Upload-Complete"]) == (
            str(len(body)), "?0",
        )  # fmt: skip
        again = await _patch(c, uk, where, len(body), b"", last=True)
        assert again.status_code == 201, again.text
        assert again.json()["sha256"] == hashlib.sha256(content).hexdigest()


async def test_a_store_that_swaps_two_segments_is_caught(uk: Kit) -> None:
    """Every segment is an age file to the node itself, so two of the same size would both
    open: the digest the database recorded for each is checked as it is read, and a body put
    together in another order is never shared."""
    content = MARKER + bytes(range(256)) * 2_000
    body = upload_body(_meta(), content)
    k = len(body) // 3
    async with uk.client() as c:
        where = await _create(c, uk)
        assert (await _patch(c, uk, where, 0, body[:k], last=False)).status_code == 204
        assert (await _patch(c, uk, where, k, body[k : 2 * k], last=False)).status_code == 204
        with uk.node.db.engine.connect() as conn:
            first, second = conn.execute(
                sa.select(upload_store.SEGMENTS.c.digest).order_by(upload_store.SEGMENTS.c.start)
            ).scalars()
        store = folder_store(uk.node)
        a, b = store.path_for(first), store.path_for(second)
        assert a.stat().st_size == b.stat().st_size  # the same size: only the digest differs
        swapped = a.with_name("swap")
        a.rename(swapped)
        b.rename(a)
        swapped.rename(b)
        done = await _patch(c, uk, where, 2 * k, body[2 * k :], last=True)
        assert done.status_code == 502, done.text
        assert done.json()["type"] == "urn:entente:problem:artifact-corrupt"
        assert "not the one recorded" in done.json()["detail"]
    with uk.node.db.session() as s:
        assert s.exec(select(Artifact)).all() == []  # nothing was shared


@pytest.mark.parametrize("partners", [["us-aisi"], ["xx-aisi"]], ids=["shared", "refused"])
async def test_a_completion_leaves_no_decrypting_thread(
    uk: Kit, monkeypatch: pytest.MonkeyPatch, partners: list[str]
) -> None:
    """The share stops reading at the body's closing boundary (or at a refusal); the thread
    decrypting the segments after it blocked for ever on a full queue: one thread, and up to
    4 MiB, per completion (found by review)."""
    real = api_uploads._share_sync

    def slow(*args: Any, **kwargs: Any) -> Any:  # the worker fills its queue meanwhile
        try:
            return real(*args, **kwargs)
        finally:
            time.sleep(0.3)

    monkeypatch.setattr(api_uploads, "_share_sync", slow)
    body = upload_body(_meta(partners=partners), b"x" * 100)
    async with uk.client() as c:
        where = await _create(c, uk, body)
        offset = len(body)
        for _ in range(4):  # four more segments after the closing boundary (an epilogue)
            assert (await _patch(c, uk, where, offset, b"\r", last=False)).status_code == 204
            offset += 1
        r = await _patch(c, uk, where, offset, b"", last=True)
    assert r.status_code == (201 if partners == ["us-aisi"] else 422), r.text
    assert await asyncio.to_thread(_decrypting_after, 5.0) == []


def _decrypting_after(seconds: float) -> list[str]:
    """The threads still decrypting an upload once they are all gone, or ``seconds`` passed."""
    deadline = time.monotonic() + seconds
    while True:
        alive = [t.name for t in threading.enumerate() if t.name.startswith("upload-upl_")]
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.1)


async def test_a_client_key_cannot_take_an_uploads_completion(uk: Kit) -> None:
    """The completion's idempotency key was ``upload <id>``, which a client could send as its
    own ``Idempotency-Key`` first: the completion then answered 422, the upload stayed complete
    and never carried out, its bytes kept and no longer counted (found by review)."""
    body = upload_body(_meta(), b"x" * 1000)
    async with uk.client() as c:
        where = await _create(c, uk)
        upload_id = where.rsplit("/", 1)[1]
        first = await c.post(
            "/v1/artifacts",
            content=upload_body(_meta(), b"small"),
            headers={**UPLOAD_HEADERS, **uk.auth(Role.PUBLISHER),
                     "Idempotency-Key": f'"upload {upload_id}"'},
        )  # fmt: skip
        assert first.status_code == 201, first.text
        done = await _patch(c, uk, where, 0, body, last=True)
        assert done.status_code == 201, done.text
    with uk.node.db.session() as session:
        assert len(session.exec(select(Artifact)).all()) == 2


async def test_concurrent_creations_stay_within_the_open_uploads(uk: Kit) -> None:
    """Creations counted the token's open uploads, then inserted, with nothing between: eight
    at once all counted none (found by review)."""
    async with uk.client() as c:
        answers = await asyncio.gather(
            *[
                c.post(
                    "/v1/artifacts",
                    content=b"",
                    headers={**UPLOAD_HEADERS, **uk.auth(Role.PUBLISHER), "Upload-Complete": "?0"},
                )
                for _ in range(8)
            ]
        )
    statuses = sorted(a.status_code for a in answers)
    assert statuses == [201, 201] + [429] * 6, statuses  # max_open_uploads=2
