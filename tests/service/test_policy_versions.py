"""The active policy set, versioned in the database: the version rule, reloads, restarts, and two
replicas of one node deciding on the same terms immediately after a reload through either."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from fastapi import FastAPI
from sqlmodel import select

from policies import PolicyLoadError, PolicySet, load_policy
from service.app import create_app
from service.artifacts.retention import RetentionWorker
from service.db import open_database
from service.federation.pull import pull_all
from service.models import AuditEntry, PolicyVersion, PolicyVersionFile
from service.node import Node
from service.policy_store import PolicyStore, Snapshot, newer
from service.tokens import Role
from tests.service.nodekit import CREATED, UPLOAD_HEADERS, Kit, make_node, pin, upload_body
from tests.service.test_federation_sync import Pair, joined, share

TERMS = """\
format: entente.policy/v1
id: uk-aisi.{partner}
version: {version}
mou: Test MOU [example]
partner: {partner}
valid_from: 2025-01-01
valid_until: 2030-12-31
approved_by:
  - {{name: T. Officer, role: Policy officer, date: 2024-12-01}}
permit:
  - id: share-findings
    clause: Test MOU §1
    actions: [share]
    tlp: [{tlp}]
    topics: [evaluation]
"""
BEFORE = "TLP:CLEAR, TLP:GREEN, TLP:AMBER"  # the terms as first agreed
AMENDED = "TLP:CLEAR, TLP:GREEN"  # the amendment: no more TLP:AMBER


def _write_terms(kit: Kit, partner: str, tlp: str, version: int) -> None:
    path = kit.node.home.policies_dir / f"{partner}.yaml"
    path.write_text(TERMS.format(partner=partner, tlp=tlp, version=version))


def _set(*versions_and_tlps: tuple[str, int, str]) -> PolicySet:
    return PolicySet.from_policies(
        load_policy(TERMS.format(partner=p, version=v, tlp=t)) for p, v, t in versions_and_tlps
    )


# --- the version rule -------------------------------------------------------------------------

A = _set(("us-aisi", 1, BEFORE))
B = _set(("us-aisi", 2, AMENDED))


@pytest.mark.parametrize(
    ("held", "candidate", "kept"),
    [
        (Snapshot(0, PolicySet.empty()), Snapshot(1, A), "candidate"),  # the first load
        (Snapshot(1, A), Snapshot(2, B), "candidate"),  # a newer version replaces
        (Snapshot(2, B), Snapshot(1, A), "held"),  # an older one (a slow thread's read) never
        (Snapshot(2, B), Snapshot(2, A), "held"),  # nor does the same number
    ],
    ids=["first", "newer", "older-ignored", "same-ignored"],
)
def test_a_replica_only_moves_to_a_strictly_newer_version(
    held: Snapshot, candidate: Snapshot, kept: str
) -> None:
    assert newer(held, candidate) is (candidate if kept == "candidate" else held)


# --- reloads and restarts ---------------------------------------------------------------------


def _versions(kit: Kit) -> list[tuple[int, str]]:
    with kit.node.db.session() as s:
        rows = s.exec(select(PolicyVersion).order_by(PolicyVersion.version)).all()  # type: ignore[arg-type]
    return [(r.version, r.sha256) for r in rows]


def _set_changes(kit: Kit) -> list[dict[str, Any]]:
    with kit.node.db.session() as s:
        rows = s.exec(
            select(AuditEntry.detail).where(AuditEntry.kind == "policy.set_changed")
        ).all()
    return [json.loads(d) for d in rows]


def test_reloads_write_a_version_only_for_a_valid_changed_folder(
    tmp_path: Path, db_url: str
) -> None:
    kit = make_node(tmp_path, "uk-aisi", db_url=db_url, policies=False)
    store = kit.node.policies
    assert _versions(kit) == [(1, PolicySet.empty().sha256)]  # the first start: the folder
    now = kit.node.now()

    _write_terms(kit, "us-aisi", BEFORE, 1)
    first = store.reload(actor="test", now=now)
    assert (first.snapshot.version, first.changed) == (2, True)
    assert store.reload(actor="test", now=now).changed is False  # the same files: no version
    assert [v for v, _ in _versions(kit)] == [1, 2]

    (kit.node.home.policies_dir / "broken.yaml").write_text("format: entente.policy/v1\n")
    with pytest.raises(PolicyLoadError):
        store.reload(actor="test", now=now)
    assert [v for v, _ in _versions(kit)] == [1, 2]  # all or nothing
    assert store.version == 2
    (kit.node.home.policies_dir / "broken.yaml").unlink()

    _write_terms(kit, "us-aisi", AMENDED, 2)
    amended = store.reload(actor="admin:test", now=now)
    assert amended.snapshot.version == 3
    with kit.node.db.session() as s:
        [stored] = s.exec(select(PolicyVersionFile).where(PolicyVersionFile.version == 3)).all()
    assert stored.name == "us-aisi.yaml"
    assert stored.content == (kit.node.home.policies_dir / "us-aisi.yaml").read_bytes()
    assert stored.sha256 == store.current.policies["us-aisi"].sha256

    changes = _set_changes(kit)
    assert [c["version"] for c in changes] == [1, 2, 3]
    assert changes[-1]["previous"] == changes[-2]["sha256"]
    assert changes[-1]["sha256"] == amended.snapshot.sha256


def test_a_restart_decides_on_the_database_version_not_an_unreloaded_folder(
    tmp_path: Path, db_url: str
) -> None:
    kit = make_node(tmp_path, "uk-aisi", db_url=db_url, policies=False)
    _write_terms(kit, "us-aisi", BEFORE, 1)
    in_force = kit.node.policies.reload(actor="test", now=kit.node.now()).snapshot
    _write_terms(kit, "us-aisi", AMENDED, 2)  # edited, not reloaded

    restarted = PolicyStore(kit.node.home.policies_dir, db=kit.node.db)
    held = restarted.start(actor="node:start", now=kit.node.now())
    assert (held.version, held.sha256) == (in_force.version, in_force.sha256)
    assert len(_set_changes(kit)) == 2  # nothing audited: nothing changed


# --- one query per request, not per partner ---------------------------------------------------


async def test_a_share_to_two_partners_checks_the_version_once(tmp_path: Path) -> None:
    kit = make_node(tmp_path, "uk-aisi", policies=False)
    for partner in ("us-aisi", "ca-aisi"):
        pin(kit, make_node(tmp_path, partner))
        _write_terms(kit, partner, BEFORE, 1)
    kit.node.policies.reload(actor="test", now=kit.node.now())
    with _version_checks(kit) as checks:
        status, _body = await _share(kit, kit.app, "TLP:GREEN", ["us-aisi", "ca-aisi"])
        assert status == 201
        assert len(checks) == 1  # two partners decided on one snapshot
        await _share(kit, kit.app, "TLP:GREEN", ["us-aisi"])
        assert len(checks) == 2  # and the next request checks again


@contextmanager
def _version_checks(kit: Kit) -> Iterator[list[str]]:
    """The reads of the committed policy version made on ``kit``'s database meanwhile."""
    checks: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if "policy_versions" in statement:
            checks.append(statement)

    sa.event.listen(kit.node.db.engine, "before_cursor_execute", count)
    try:
        yield checks
    finally:
        sa.event.remove(kit.node.db.engine, "before_cursor_execute", count)


# --- one query per unit of background work: a pulled page, a retention round ------------------


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[Pair]:
    pair = joined(make_node(tmp_path, "uk-aisi"), make_node(tmp_path, "us-aisi"))
    yield pair
    pair.transport.close()


def test_a_pulled_page_decides_on_one_version_checked_once(pair: Pair) -> None:
    share(pair.uk, 12)
    with _version_checks(pair.us) as checks:
        assert pull_all(pair.us.node, pair.client(pair.us)) == 12
    assert len(checks) == 1  # twelve artifacts received, each decided, on one snapshot
    share(pair.uk, 3)
    with _version_checks(pair.us) as checks:
        assert pull_all(pair.us.node, pair.client(pair.us)) == 3
    assert len(checks) == 1  # and the next page checks again


def test_a_pulled_page_decides_on_a_version_committed_before_it_began(pair: Pair) -> None:
    """A reload through another replica of the receiver, committed before the page is pulled,
    is the version the page is decided on (the version rule, as for a request)."""
    share(pair.uk, 2)  # TLP:GREEN
    terms = pair.us.node.home.policies_dir / "uk-aisi.yaml"
    amended = terms.read_text().replace("version: 1\n", "version: 2\n", 1)
    amended = amended.replace(  # the receive permit narrowed to TLP:CLEAR
        "actions: [receive]\n    tlp: [TLP:CLEAR, TLP:GREEN, TLP:AMBER]",
        "actions: [receive]\n    tlp: [TLP:CLEAR]",
    )
    assert amended.count("tlp: [TLP:CLEAR]\n") == 1
    terms.write_text(amended)
    replica = PolicyStore(pair.us.node.home.policies_dir, db=pair.us.node.db)
    assert replica.reload(actor="test", now=pair.us.node.now()).changed
    assert pull_all(pair.us.node, pair.client(pair.us)) == 0
    with pair.us.node.db.session() as session:
        refused = session.exec(select(AuditEntry).where(AuditEntry.kind == "receive.rejected"))
        assert len(refused.all()) == 2


def test_a_retention_round_decides_on_one_version_checked_once(pair: Pair) -> None:
    share(pair.uk, 6)
    with _version_checks(pair.uk) as checks:
        assert RetentionWorker(pair.uk.node).run_once().deleted == ()
    assert len(checks) == 1  # six rows' terms, on one snapshot


# --- two replicas of one node -----------------------------------------------------------------


async def _share(kit: Kit, app: FastAPI, tlp: str, partners: list[str]) -> tuple[int, Any]:
    """Share through ``app``: one replica of ``kit``'s node."""
    meta = {"title": "Eval", "tlp": tlp, "topics": ["evaluation"], "partners": partners}
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://uk-aisi") as c:
        r = await c.post(
            "/v1/artifacts",
            content=upload_body(json.dumps(meta), b"finding " * 100),
            headers={**UPLOAD_HEADERS, **kit.auth(Role.PUBLISHER)},
        )
    return r.status_code, r.json()


async def _reload(kit: Kit, app: FastAPI) -> dict[str, Any]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://uk-aisi") as c:
        r = await c.post("/v1/admin/policies/reload", headers=kit.auth(Role.ADMIN))
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


@pytest.mark.postgres
async def test_two_replicas_decide_on_the_same_version_right_after_a_reload_through_either(
    tmp_path: Path, pg_url: str
) -> None:
    replica_a = make_node(tmp_path, "uk-aisi", db_url=pg_url, policies=False)
    pin(replica_a, make_node(tmp_path, "us-aisi"))
    _write_terms(replica_a, "us-aisi", BEFORE, 1)
    # Replica B: the same home and database, its own engine, policy store and app, started
    # (it holds the version in force at its start, then only learns from the database).
    db_b = open_database(pg_url)
    store_b = PolicyStore(replica_a.node.home.policies_dir, db=db_b)
    node_b = Node(
        settings=replica_a.node.settings,
        home=replica_a.node.home,
        keys=replica_a.node.keys,
        db=db_b,
        blobs=replica_a.node.blobs,
        policies=store_b,
    )
    CREATED.append(node_b)
    store_b.start(actor="node:start", now=node_b.now())
    app_a, app_b = replica_a.app, create_app(node_b, start_workers=False)
    uk = replica_a  # the node's tokens, the same for both replicas

    first = await _reload(uk, app_a)
    assert first["changed"] is True
    assert (await _share(uk, app_b, "TLP:AMBER", ["us-aisi"]))[0] == 201  # B learnt the first terms
    assert (await _share(uk, app_a, "TLP:AMBER", ["us-aisi"]))[0] == 201

    _write_terms(replica_a, "us-aisi", AMENDED, 2)  # the amendment, reloaded through A
    amended = await _reload(uk, app_a)
    assert amended["version"] == first["version"] + 1
    status, problem = await _share(uk, app_b, "TLP:AMBER", ["us-aisi"])  # B's very next request
    assert status == 403, problem
    assert (await _share(uk, app_a, "TLP:AMBER", ["us-aisi"]))[0] == 403
    assert store_b.version == amended["version"]

    _write_terms(replica_a, "us-aisi", BEFORE, 3)  # and back again, reloaded through B
    restored = await _reload(uk, app_b)
    assert restored["version"] == amended["version"] + 1
    assert (await _share(uk, app_a, "TLP:AMBER", ["us-aisi"]))[0] == 201  # A's very next request
    assert (await _share(uk, app_b, "TLP:AMBER", ["us-aisi"]))[0] == 201
