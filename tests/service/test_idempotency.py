"""``Idempotency-Key`` on the routes that share, in-process, on SQLite and PostgreSQL.

The same key with the same request answers the first result (status, body, ``Location``) and
shares nothing more; with another request it is a 422; while the first request runs, a 409; a
malformed key is a 400; keys are per token, expire, and a request that died frees its key.
"""

from __future__ import annotations

import asyncio
import io
import json
import threading
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from sqlmodel import func, select

from service import idempotency
from service.artifacts import share as sharing
from service.artifacts.terms import ShareTerms
from service.errors import ConflictError
from service.federation.client import PartnerClient
from service.federation.outbox import OutboxWorker
from service.idempotency import KEYS
from service.models import Approval, Artifact, AuditEntry, IdempotencyKey
from service.tokens import Principal, Role, create_token
from tests.service.nodekit import UPLOAD_HEADERS, Kit, make_node, pin, upload_body
from tests.service.test_federation_sync import PortalTransport
from tests.support import start_until_blocked

CONTENT = b"an evaluation finding\n" * 20_000


class Clock:
    """Starts at the real time the test runs (descriptors made then must be valid at it)."""

    def __init__(self) -> None:
        self.now = datetime.now(UTC).replace(microsecond=0)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def uk(tmp_path: Path, db_url: str) -> Kit:
    kit = make_node(tmp_path, "uk-aisi", db_url=db_url)
    kit.node.clock = Clock()
    for other in ("us-aisi", "ca-aisi"):
        pin(kit, make_node(tmp_path, other))
    return kit


def _meta(**changes: object) -> str:
    base = {"title": "Red-teaming results", "tlp": "TLP:AMBER", "topics": ["evaluation"],
            "purposes": ["evaluation"], "partners": ["us-aisi"]}  # fmt: skip
    return json.dumps({**base, **changes})


def _keyed(
    kit: Kit, key: str = '"8e03978e-40d5-43e8-bc93-6894a57f9324"', **extra: str
) -> dict[str, str]:
    return {**UPLOAD_HEADERS, **kit.auth(Role.PUBLISHER), "Idempotency-Key": key, **extra}


def _unkeyed(kit: Kit) -> list[tuple[bytes, bytes]]:
    return [
        (k.encode(), v.encode()) for k, v in {**UPLOAD_HEADERS, **kit.auth(Role.PUBLISHER)}.items()
    ]


def _count(kit: Kit, model: type) -> int:
    with kit.node.db.session() as s:
        return int(s.exec(select(func.count()).select_from(model)).one())


def _refusals(kit: Kit, rule: str) -> int:
    with kit.node.db.session() as s:
        rows = s.exec(select(AuditEntry).where(AuditEntry.kind == "request.refused")).all()
    return sum(1 for e in rows if e.rule == rule)


async def test_the_same_request_answers_the_first_result_and_shares_once(uk: Kit) -> None:
    body = upload_body(_meta(), CONTENT)
    async with uk.client() as c:
        first = await c.post("/v1/artifacts", content=body, headers=_keyed(uk))
        again = await c.post("/v1/artifacts", content=body, headers=_keyed(uk))
    assert first.status_code == 201, first.text
    assert "idempotent-replayed" not in first.headers
    assert again.status_code == 201
    assert again.headers["idempotent-replayed"] == "true"
    assert again.content == first.content
    assert again.json()["id"] == first.json()["id"]
    assert _count(uk, Artifact) == 1
    assert len(list(uk.node.blobs.iter_digests())) == 1  # the retry sealed nothing
    with uk.node.db.session() as s:
        [row] = s.exec(select(IdempotencyKey)).all()
        shares = s.exec(select(AuditEntry).where(AuditEntry.kind == "share.allowed")).all()
    assert (row.state, row.status, row.principal) == ("done", 201, _token_id(uk, Role.PUBLISHER))
    assert len(shares) == 1


def _token_id(kit: Kit, role: Role) -> str:
    return "tok_" + kit.tokens[role].split("_")[1]


@pytest.mark.parametrize(
    "other",
    [
        pytest.param(upload_body(_meta(), CONTENT + b"!"), id="another-file"),
        pytest.param(upload_body(_meta(title="Another title"), CONTENT), id="other-metadata"),
    ],
)
async def test_the_same_key_with_another_request_is_a_422(uk: Kit, other: bytes) -> None:
    async with uk.client() as c:
        first = await c.post(
            "/v1/artifacts", content=upload_body(_meta(), CONTENT), headers=_keyed(uk)
        )
        reused = await c.post("/v1/artifacts", content=other, headers=_keyed(uk))
    assert first.status_code == 201, first.text
    assert reused.status_code == 422
    assert reused.headers["content-type"] == "application/problem+json"
    assert reused.json()["type"] == "urn:entente:problem:idempotency-key-reused"
    assert _count(uk, Artifact) == 1
    assert _refusals(uk, "idempotency-key-reused") == 1  # audited, as every refusal


async def test_a_key_whose_first_request_runs_is_a_409(uk: Kit) -> None:
    body = upload_body(_meta(), CONTENT)
    gate = asyncio.Event()

    async def slow() -> AsyncIterator[bytes]:
        yield body[: len(body) // 2]
        await gate.wait()
        yield body[len(body) // 2 :]

    async with uk.client() as c:
        running = asyncio.create_task(c.post("/v1/artifacts", content=slow(), headers=_keyed(uk)))
        for _ in range(200):  # until the first request holds the key
            if _count(uk, IdempotencyKey):
                break
            await asyncio.sleep(0.02)
        busy = await c.post("/v1/artifacts", content=body, headers=_keyed(uk))
        gate.set()
        first = await running
        after = await c.post("/v1/artifacts", content=body, headers=_keyed(uk))
    assert busy.status_code == 409, busy.text
    assert busy.json()["type"] == "urn:entente:problem:idempotency-key-in-flight"
    assert _refusals(uk, "idempotency-key-in-flight") == 1
    assert first.status_code == 201, first.text
    assert after.headers["idempotent-replayed"] == "true"
    assert after.json()["id"] == first.json()["id"]
    assert _count(uk, Artifact) == 1


async def test_keys_are_per_principal(uk: Kit) -> None:
    with uk.node.db.session() as s:
        _row, other = create_token(
            s, role=Role.PUBLISHER, name="bob", now=uk.node.now(), actor="test"
        )
    body = upload_body(_meta(), CONTENT)
    async with uk.client() as c:
        mine = await c.post("/v1/artifacts", content=body, headers=_keyed(uk))
        theirs = await c.post(
            "/v1/artifacts", content=body,
            headers={**_keyed(uk), "Authorization": f"Bearer {other}"},
        )  # fmt: skip
    assert mine.status_code == theirs.status_code == 201
    assert "idempotent-replayed" not in theirs.headers
    assert mine.json()["id"] != theirs.json()["id"]
    assert _count(uk, Artifact) == 2


async def test_keys_expire_and_are_purged(uk: Kit) -> None:
    clock = uk.node.clock
    assert isinstance(clock, Clock)
    body = upload_body(_meta(), CONTENT)
    async with uk.client() as c:
        first = await c.post("/v1/artifacts", content=body, headers=_keyed(uk))
        clock.now += timedelta(seconds=uk.node.settings.idempotency_ttl_seconds - 1)
        replayed = await c.post("/v1/artifacts", content=body, headers=_keyed(uk))
        assert idempotency.purge_expired(uk.node) == 0
        clock.now += timedelta(seconds=2)
        assert idempotency.purge_expired(uk.node) == 1
        assert _count(uk, IdempotencyKey) == 0
        fresh = await c.post("/v1/artifacts", content=body, headers=_keyed(uk))
        clock.now += timedelta(seconds=uk.node.settings.idempotency_ttl_seconds + 1)
        # Expired but not purged yet: the key is taken over, as good as new.
        third = await c.post("/v1/artifacts", content=body, headers=_keyed(uk))
    assert replayed.headers["idempotent-replayed"] == "true"
    assert fresh.status_code == third.status_code == 201
    assert "idempotent-replayed" not in fresh.headers and "idempotent-replayed" not in third.headers
    assert len({first.json()["id"], fresh.json()["id"], third.json()["id"]}) == 3
    assert _count(uk, Artifact) == 3


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("8e03978e-40d5", id="not-quoted"),
        pytest.param('""', id="empty"),
        pytest.param('"' + "k" * 256 + '"', id="too-long"),
        pytest.param('"abc";p=1', id="parameters"),
        pytest.param('"abc', id="unterminated"),
        pytest.param('"a\\b"', id="bad-escape"),
        pytest.param('"abc", "def"', id="a-list"),
        pytest.param('"caf\u00e9"', id="not-ascii"),
    ],
)
async def test_a_malformed_key_is_a_400(uk: Kit, value: str) -> None:
    async with uk.client() as c:
        r = await c.post(
            "/v1/artifacts",
            content=upload_body(_meta(), b"x"),
            headers=[*_unkeyed(uk), (b"Idempotency-Key", value.encode("latin-1"))],
        )
    assert r.status_code == 400, r.text
    assert r.json()["type"] == "urn:entente:problem:idempotency-key-malformed"
    assert _count(uk, Artifact) == 0
    assert _count(uk, IdempotencyKey) == 0
    assert _refusals(uk, "idempotency-key-malformed") == 1


async def test_a_key_sent_twice_is_a_400_and_an_escaped_key_is_one_key(uk: Kit) -> None:
    body = upload_body(_meta(), b"x")
    headers = _unkeyed(uk)
    async with uk.client() as c:
        twice = await c.post(
            "/v1/artifacts", content=body,
            headers=[*headers, (b"Idempotency-Key", b'"a"'), (b"Idempotency-Key", b'"b"')],
        )  # fmt: skip
        escaped = await c.post("/v1/artifacts", content=body, headers=_keyed(uk, '"a\\"b\\\\"'))
    assert twice.status_code == 400
    assert escaped.status_code == 201, escaped.text
    with uk.node.db.session() as s:
        assert [k.idempotency_key for k in s.exec(select(IdempotencyKey))] == ['a"b\\']


async def test_a_refused_request_keeps_no_key(uk: Kit) -> None:
    body = upload_body(_meta(partners=["ca-aisi"]), CONTENT)  # the MOU denies it
    async with uk.client() as c:
        first = await c.post("/v1/artifacts", content=body, headers=_keyed(uk))
        again = await c.post("/v1/artifacts", content=body, headers=_keyed(uk))
    assert first.status_code == again.status_code == 403
    assert "idempotent-replayed" not in again.headers  # decided afresh, and audited again
    assert _count(uk, IdempotencyKey) == 0
    with uk.node.db.session() as s:
        denied = s.exec(select(AuditEntry).where(AuditEntry.kind == "share.denied")).all()
    assert len(denied) == 2


def _pending(kit: Kit, key: str, *, lease: timedelta) -> None:
    now = kit.node.now()
    with kit.node.db.engine.begin() as conn:
        conn.execute(
            sa.insert(KEYS),
            [{"principal": _token_id(kit, Role.PUBLISHER), "idempotency_key": key,
              "claim": "c" * 32, "state": "pending", "route": "POST /v1/artifacts",
              "created_at": now, "lease_until": now + lease, "expires_at": now + lease}],
        )  # fmt: skip


async def test_a_key_held_by_a_live_request_elsewhere_is_a_409_and_by_a_dead_one_is_taken(
    uk: Kit,
) -> None:
    body = upload_body(_meta(), CONTENT)
    _pending(uk, "live", lease=timedelta(seconds=30))  # another replica is sharing with it
    _pending(uk, "dead", lease=timedelta(seconds=-1))  # its replica died: the lease lapsed
    async with uk.client() as c:
        live = await c.post("/v1/artifacts", content=body, headers=_keyed(uk, '"live"'))
        dead = await c.post("/v1/artifacts", content=body, headers=_keyed(uk, '"dead"'))
    assert live.status_code == 409
    assert live.json()["retry_after"] >= 1
    assert dead.status_code == 201, dead.text
    assert _count(uk, Artifact) == 1


def test_a_request_that_lost_its_key_shares_nothing(uk: Kit) -> None:
    """Fencing: when another request takes the key over (this one outlived its lease), this
    one's transaction fails as a whole: no artifact, no blob, and the key stays the other's."""
    publisher = Principal(_token_id(uk, Role.PUBLISHER), "publisher-user", Role.PUBLISHER)
    claim = idempotency.claim(uk.node, principal=publisher, key="k", route="POST /v1/artifacts")
    assert isinstance(claim, idempotency.Claim)
    claim.fingerprint = "f" * 64
    with uk.node.db.engine.begin() as conn:  # the other request's takeover
        conn.execute(sa.update(KEYS).values(claim="d" * 32))
    terms = ShareTerms(title="t", tlp="TLP:GREEN", topics=("evaluation",),
                       purposes=("evaluation",), partners=("us-aisi",))  # fmt: skip
    decisions = sharing.decide_share(uk.node, terms, principal=publisher)
    with pytest.raises(ConflictError, match="took this Idempotency-Key over"):
        sharing.share_artifact(
            uk.node, uk.node.blobs, terms, io.BytesIO(b"finding"), principal=publisher,
            decisions=decisions, also=claim.recorder(lambda row: idempotency.Result(201, b"{}")),
        )  # fmt: skip
    claim.stop()
    assert _count(uk, Artifact) == 0
    assert list(uk.node.blobs.iter_digests()) == []
    with uk.node.db.session() as s:
        [row] = s.exec(select(IdempotencyKey)).all()
    assert (row.state, row.claim) == ("pending", "d" * 32)


async def test_a_pending_action_is_answered_again_with_its_location(
    tmp_path: Path, db_url: str
) -> None:
    kit = make_node(tmp_path, "uk-aisi", db_url=db_url, two_person_tlp=("TLP:AMBER",))
    pin(kit, make_node(tmp_path, "us-aisi"))
    body = upload_body(_meta(), CONTENT)
    async with kit.client() as c:
        first = await c.post("/v1/artifacts", content=body, headers=_keyed(kit))
        again = await c.post("/v1/artifacts", content=body, headers=_keyed(kit))
    assert first.status_code == again.status_code == 202, first.text
    assert again.headers["location"] == first.headers["location"]
    assert again.headers["location"] == f"/v1/approvals/{first.json()['id']}"
    assert again.content == first.content
    assert _count(kit, Approval) == 1


def test_an_onward_share_with_a_key_is_made_once(tmp_path: Path) -> None:
    uk, us, ca = (make_node(tmp_path, n) for n in ("uk-aisi", "us-aisi", "ca-aisi"))
    for a, b in [(uk, us), (us, uk), (us, ca), (ca, us), (ca, uk), (uk, ca)]:
        pin(a, b)
    transport = PortalTransport({k.node.node_id: k.app for k in (uk, us, ca)})
    try:
        terms = ShareTerms(title="finding", tlp="TLP:GREEN", topics=("evaluation",),
                           purposes=("evaluation",), partners=("us-aisi",))  # fmt: skip
        publisher = Principal(token_id="tok_uk", name="uk-publisher", role=Role.PUBLISHER)
        sent = sharing.share_artifact(
            uk.node, uk.node.blobs, terms, io.BytesIO(b"green finding"), principal=publisher,
            decisions=sharing.decide_share(uk.node, terms, principal=publisher),
            onward_approved=["ca-aisi"],
        )  # fmt: skip
        client = PartnerClient(uk.node, http=httpx.Client(transport=transport))
        assert OutboxWorker(uk.node, client).run_once()
        with httpx.Client(transport=transport, base_url="http://us-aisi") as bridge:
            url = f"/v1/artifacts/{sent.id}/share"
            headers = {**us.auth(Role.PUBLISHER), "Idempotency-Key": '"onward-1"'}
            first = bridge.post(url, json={"partners": ["ca-aisi"]}, headers=headers)
            again = bridge.post(url, json={"partners": ["ca-aisi"]}, headers=headers)
            other = bridge.post(url, json={"partners": ["ca-aisi"], "x": 1}, headers=headers)
            elsewhere = bridge.post(
                "/v1/artifacts", content=upload_body(_meta(), b"x"),
                headers={**headers, **UPLOAD_HEADERS},
            )  # fmt: skip
    finally:
        transport.close()
    assert first.status_code == 201, first.text
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json()["id"] == first.json()["id"]
    assert other.status_code == 422  # not even valid: refused before the key is looked at
    assert elsewhere.status_code == 422
    assert elsewhere.json()["type"] == "urn:entente:problem:idempotency-key-reused"
    with us.node.db.session() as s:
        sent_rows = s.exec(select(Artifact).where(Artifact.direction == "sent")).all()
    assert [a.id for a in sent_rows] == [first.json()["id"]]


@pytest.mark.postgres
def test_renewing_leases_never_deadlocks_with_a_group_commit_settling_them(
    tmp_path: Path, pg_url: str
) -> None:
    """A replica's lease renewal updates all the claims it holds at once while its group commit
    settles several of them in one transaction, in its own order: the renewal must skip a row
    being settled rather than wait for it holding another (found by
    tests/integration/test_replicas_s3.py as PostgreSQL's "deadlock detected")."""
    kit = make_node(tmp_path, "uk-aisi", db_url=pg_url)
    publisher = Principal(_token_id(kit, Role.PUBLISHER), "publisher-user", Role.PUBLISHER)
    now = kit.node.now()
    first, second = "a" * 32, "b" * 32  # inserted in this order: a renewal meets `first` first
    with kit.node.db.engine.begin() as conn:
        for claim_id in (first, second):
            conn.execute(
                sa.insert(KEYS),
                [{"principal": publisher.token_id, "idempotency_key": claim_id,
                  "claim": claim_id, "state": "pending", "route": "POST /v1/artifacts",
                  "created_at": now, "lease_until": now + timedelta(seconds=30),
                  "expires_at": now + timedelta(seconds=30)}],
            )  # fmt: skip
    claims = {
        c: idempotency.Claim(kit.node, principal=publisher, key=c, claim=c) for c in (first, second)
    }
    for claim in claims.values():
        claim.fingerprint = "f" * 64
    renewal_failed: list[BaseException] = []

    def renew() -> None:
        try:
            idempotency._leases(kit.node).renew([first, second])
        except BaseException as exc:
            renewal_failed.append(exc)

    renewer = threading.Thread(target=renew)
    with kit.node.db.engine.begin() as group:  # a group commit settling `second`, then `first`
        claims[second].settle(group, idempotency.Result(201, b"{}"))
        start_until_blocked(renewer, pg_url)
        claims[first].settle(group, idempotency.Result(201, b"{}"))
    renewer.join(30)
    assert not renewer.is_alive()
    assert renewal_failed == []
    with kit.node.db.engine.connect() as conn:
        states = dict(conn.execute(sa.select(KEYS.c.claim, KEYS.c.state)).all())
    assert states == {first: "done", second: "done"}
