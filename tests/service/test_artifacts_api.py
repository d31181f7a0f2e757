"""The /v1 artifact API in-process: share, deny, list, read, revoke; on SQLite and PostgreSQL."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from sqlmodel import func, select

from service.models import Artifact, AuditEntry, Outbox
from service.tokens import Role
from tests.service.nodekit import (
    UPLOAD_HEADERS,
    Kit,
    folder_store,
    make_node,
    pin,
    upload_body,
)


@pytest.fixture
def uk(tmp_path: Path, db_url: str) -> Kit:
    kit = make_node(tmp_path, "uk-aisi", db_url=db_url)
    for other in ("us-aisi", "ca-aisi"):
        pin(kit, make_node(tmp_path, other))
    return kit


def _meta(**changes: object) -> str:
    base = {
        "title": "Red-teaming results for model X",
        "tlp": "TLP:AMBER",
        "topics": ["evaluation/red-teaming"],
        "purposes": ["evaluation"],
        "partners": ["us-aisi"],
    }
    base.update(changes)
    return json.dumps(base)


def _count(kit: Kit, model: type) -> int:
    with kit.node.db.session() as s:
        return int(s.exec(select(func.count()).select_from(model)).one())


def _blobs(kit: Kit) -> list[str]:
    return sorted(kit.node.blobs.iter_digests())


async def test_share_list_get_read_revoke(uk: Kit) -> None:
    content = b"finding " * 50_000
    async with uk.client() as c:
        r = await c.post(
            "/v1/artifacts",
            content=upload_body(_meta(), content),
            headers={**UPLOAD_HEADERS, **uk.auth(Role.PUBLISHER)},
        )
        assert r.status_code == 201, r.text
        art = r.json()
        assert art["sha256"] == hashlib.sha256(content).hexdigest()
        assert art["recipients"] == ["uk-aisi", "us-aisi"]
        assert art["direction"] == "sent"

        listed = (await c.get("/v1/artifacts", headers=uk.auth(Role.READER))).json()
        assert [a["id"] for a in listed["items"]] == [art["id"]]
        detail = (await c.get(f"/v1/artifacts/{art['id']}", headers=uk.auth(Role.AUDITOR))).json()
        assert detail["manifest"]["payloadType"] == "application/vnd.in-toto+json"
        assert [d["partner"] for d in detail["deliveries"]] == ["us-aisi"]

        body = await c.get(f"/v1/artifacts/{art['id']}/content", headers=uk.auth(Role.READER))
        assert body.status_code == 200
        assert body.content == content

        revoked = await c.post(
            f"/v1/artifacts/{art['id']}/revoke", params={"reason": "superseded"},
            headers=uk.auth(Role.PUBLISHER),
        )  # fmt: skip
        assert revoked.json()["revoked_at"] is not None
        gone = await c.get(f"/v1/artifacts/{art['id']}/content", headers=uk.auth(Role.READER))
        assert gone.status_code == 410
        assert gone.json()["reason"] == "revoked"
    with uk.node.db.session() as s:
        kinds = [e.kind for e in s.exec(select(AuditEntry).order_by(AuditEntry.id))]  # type: ignore[arg-type]
        outbox = {(o.kind, o.partner) for o in s.exec(select(Outbox))}
    assert "share.allowed" in kinds and "read" in kinds and "revocation.issued" in kinds
    assert kinds[-1] == "read.denied"
    assert outbox == {("deliver", "us-aisi"), ("notice", "us-aisi")}
    # No plaintext on disk: the stored blob is an age file.
    [digest] = _blobs(uk)
    with uk.node.blobs.open(digest) as fh:
        assert fh.read(22) == b"age-encryption.org/v1\n"


async def test_denied_share_names_the_clause_and_stores_nothing(uk: Kit) -> None:
    async with uk.client() as c:
        r = await c.post(
            "/v1/artifacts",
            content=upload_body(_meta(partners=["us-aisi", "ca-aisi"]), b"secret finding"),
            headers={**UPLOAD_HEADERS, **uk.auth(Role.PUBLISHER)},
        )
    assert r.status_code == 403
    problem = r.json()
    assert r.headers["content-type"] == "application/problem+json"
    assert problem["type"] == "urn:entente:problem:policy-denied"
    assert problem["partner"] == "ca-aisi"
    assert problem["clause"]
    assert problem["rule"]
    assert _count(uk, Artifact) == 0
    assert _count(uk, Outbox) == 0
    assert _blobs(uk) == []
    with uk.node.db.session() as s:
        denied = s.exec(select(AuditEntry).where(AuditEntry.kind == "share.denied")).all()
    assert [(e.partner, e.clause) for e in denied] == [("ca-aisi", problem["clause"])]


@pytest.mark.parametrize(
    ("metadata", "status", "needle"),
    [
        (_meta(tlp="TLP:PURPLE"), 422, "metadata.tlp"),
        (_meta(partners=[]), 422, "metadata.partners"),
        (_meta(partners=["nobody"]), 422, "not a pinned partner"),
        (_meta(embargo_until="2026-01-01T00:00:00"), 422, "time zone"),
        (_meta(extra="field"), 422, "metadata.extra"),
        ("{not json", 422, "metadata"),
        (_meta(topics=["../../etc/passwd"]), 422, "metadata.topics"),
    ],
)
async def test_bad_metadata_is_refused_and_stores_nothing(
    uk: Kit, metadata: str, status: int, needle: str
) -> None:
    async with uk.client() as c:
        r = await c.post(
            "/v1/artifacts",
            content=upload_body(metadata, b"data"),
            headers={**UPLOAD_HEADERS, **uk.auth(Role.PUBLISHER)},
        )
    assert r.status_code == status, r.text
    assert needle in r.json()["detail"]
    assert _count(uk, Artifact) == 0
    assert _blobs(uk) == []
    with uk.node.db.session() as s:
        refusals = s.exec(
            select(AuditEntry).where(AuditEntry.decision == "deny")  # type: ignore[arg-type]
        ).all()
    assert refusals, "every refusal is audited"


async def test_upload_over_the_limit_leaves_nothing(tmp_path: Path) -> None:
    kit = make_node(tmp_path, "uk-aisi", max_artifact_bytes=1000)
    pin(kit, make_node(tmp_path, "us-aisi"))
    async with kit.client() as c:
        r = await c.post(
            "/v1/artifacts",
            content=upload_body(_meta(), b"x" * 5000),
            headers={**UPLOAD_HEADERS, **kit.auth(Role.PUBLISHER)},
        )
    assert r.status_code == 413
    assert _count(kit, Artifact) == 0
    assert _blobs(kit) == []
    assert list((folder_store(kit.node).root / "tmp").iterdir()) == []


async def test_pagination_and_filters(uk: Kit) -> None:
    async with uk.client() as c:
        for i in range(5):
            r = await c.post(
                "/v1/artifacts",
                content=upload_body(
                    _meta(title=f"t{i}", tlp="TLP:GREEN" if i % 2 else "TLP:AMBER"), b"x"
                ),
                headers={**UPLOAD_HEADERS, **uk.auth(Role.PUBLISHER)},
            )
            assert r.status_code == 201, r.text
        seen: list[str] = []
        cursor = None
        while True:
            params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
            page = (
                await c.get("/v1/artifacts", params=params, headers=uk.auth(Role.READER))
            ).json()
            seen += [a["title"] for a in page["items"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert seen == ["t4", "t3", "t2", "t1", "t0"]
        green = (
            await c.get("/v1/artifacts", params={"tlp": "TLP:GREEN"}, headers=uk.auth(Role.READER))
        ).json()
        assert sorted(a["title"] for a in green["items"]) == ["t1", "t3"]
        bad = await c.get(
            "/v1/artifacts", params={"cursor": "garbage"}, headers=uk.auth(Role.READER)
        )
        assert bad.status_code == 422


async def test_stored_ciphertext_failing_verification_is_a_502_problem(uk: Kit) -> None:
    """Storage corruption (or tampering with the blob store) found in the first chunk is a
    problem document naming it, before any plaintext is sent; the read stays audited."""
    content = b"finding " * 1000
    async with uk.client() as c:
        r = await c.post(
            "/v1/artifacts",
            content=upload_body(_meta(), content),
            headers={**UPLOAD_HEADERS, **uk.auth(Role.PUBLISHER)},
        )
        assert r.status_code == 201, r.text
        art = r.json()
        with uk.node.db.session() as s:
            row = s.exec(select(Artifact).where(Artifact.id == art["id"])).one()
        path = folder_store(uk.node).path_for(row.blob or "")
        data = bytearray(path.read_bytes())
        data[-40] ^= 0x01  # inside the last (here the only) STREAM chunk
        path.chmod(0o600)
        path.write_bytes(bytes(data))
        r = await c.get(f"/v1/artifacts/{art['id']}/content", headers=uk.auth(Role.READER))
        assert r.status_code == 502, r.text
        assert r.headers["content-type"] == "application/problem+json"
        problem = r.json()
        assert problem["type"] == "urn:entente:problem:artifact-corrupt"
        assert art["id"] in problem["detail"]
        assert content[:64] not in r.content


async def test_search_by_title_time_and_metadata(uk: Kit) -> None:
    titles = ["Cyber range 100% results", "Bio uplift notes", "cyber_ctf scores"]
    async with uk.client() as c:
        stamps = []
        for i, title in enumerate(titles):
            purposes = ["research"] if i == 1 else ["evaluation"]
            topics = ["safety-research"] if i == 1 else ["evaluation"]
            r = await c.post(
                "/v1/artifacts",
                content=upload_body(_meta(title=title, purposes=purposes, topics=topics), b"x"),
                headers={**UPLOAD_HEADERS, **uk.auth(Role.PUBLISHER)},
            )
            assert r.status_code == 201, r.text
            stamps.append(r.json()["recorded_at"])

        async def titles_for(**params: str) -> list[str]:
            got = await c.get("/v1/artifacts", params=params, headers=uk.auth(Role.READER))
            assert got.status_code == 200, got.text
            return sorted(a["title"] for a in got.json()["items"])

        assert await titles_for(title="CYBER") == ["Cyber range 100% results", "cyber_ctf scores"]
        assert await titles_for(title="100%") == ["Cyber range 100% results"]  # % is literal
        assert await titles_for(title="r_r") == []  # so is _ ("Cyber range" has "r r")
        assert await titles_for(purpose="research") == ["Bio uplift notes"]
        assert await titles_for(since=stamps[1]) == ["Bio uplift notes", "cyber_ctf scores"]
        assert await titles_for(until=stamps[1]) == ["Cyber range 100% results"]
        assert await titles_for(since=stamps[1], until=stamps[2]) == ["Bio uplift notes"]
        naive = await c.get(
            "/v1/artifacts", params={"since": "2026-01-01T00:00:00"}, headers=uk.auth(Role.READER)
        )
        assert naive.status_code == 422
        assert naive.headers["content-type"].startswith("application/problem+json")


async def test_a_download_is_typed_by_its_name_only_when_the_type_is_passive(uk: Kit) -> None:
    async with uk.client() as c:
        served = {}
        for name, body in (("results.json", b'{"score": 1}'), ("run.eval", b"PK\x03\x04"),
                           ("page.html", b"<script>alert(1)</script>"),
                           ("image.svg", b"<svg onload=alert(1)/>"), ("notes", b"x")):  # fmt: skip
            r = await c.post(
                "/v1/artifacts",
                content=upload_body(_meta(title=name, filename=name), body),
                headers={**UPLOAD_HEADERS, **uk.auth(Role.PUBLISHER)},
            )
            assert r.status_code == 201, r.text
            got = await c.get(
                f"/v1/artifacts/{r.json()['id']}/content", headers=uk.auth(Role.READER)
            )
            assert got.status_code == 200 and got.content == body
            assert got.headers["x-content-type-options"] == "nosniff"
            assert got.headers["content-security-policy"].startswith("sandbox")
            assert got.headers["content-disposition"].startswith("attachment;")
            served[name] = got.headers["content-type"]
    assert served == {
        "results.json": "application/json",
        "run.eval": "application/zip",
        "page.html": "application/octet-stream",  # a partner's HTML never runs on this origin
        "image.svg": "application/octet-stream",
        "notes": "application/octet-stream",
    }
