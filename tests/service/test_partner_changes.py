"""Partner changes through the running node, and two-person control over them: a pinning or
unpinning asked by one admin waits for a second admin, is refused for the same person, is
checked at once for bad input, and is audited with both people."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlmodel import select

from service.cli import partners as partner_cli
from service.errors import UsageError
from service.models import AuditEntry, Partner
from service.settings import Settings
from service.tokens import Role, create_token
from tests.service.nodekit import Kit, make_node, pin


def token(kit: Kit, name: str) -> dict[str, str]:
    with kit.node.db.session() as session:
        _row, secret = create_token(
            session, role=Role.ADMIN, name=name, now=kit.node.now(), actor="test"
        )
    return {"Authorization": f"Bearer {secret}"}


def body(other: Kit, **extra: object) -> dict[str, object]:
    return {
        "descriptor": json.loads(other.node.descriptor().to_bytes()),
        "fingerprint": other.node.keys.signing.fingerprint,
        **extra,
    }


def pinned(kit: Kit) -> list[str]:
    with kit.node.db.session() as session:
        return [p.node_id for p in session.exec(select(Partner))]


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Kit, Kit]:
    uk = make_node(tmp_path, "uk-aisi", two_person_partner_changes=True)
    return uk, make_node(tmp_path, "us-aisi")


async def test_a_pinning_waits_for_a_second_admin_and_names_both(pair: tuple[Kit, Kit]) -> None:
    uk, us = pair
    alice, bob = token(uk, "alice"), token(uk, "bob")
    async with uk.client() as c:
        r = await c.post("/v1/admin/partners", json=body(us), headers=alice)
        assert r.status_code == 202, r.text
        pending = r.json()
        assert pending["action"] == "partner.add" and pinned(uk) == []
        same = await c.post(f"/v1/approvals/{pending['id']}/approve", headers=alice)
        assert same.status_code == 403, same.text
        again = await c.post(f"/v1/approvals/{pending['id']}/approve", headers=token(uk, "alice"))
        assert again.status_code == 403, again.text  # the same person under another token
        ok = await c.post(f"/v1/approvals/{pending['id']}/approve", headers=bob)
        assert ok.status_code == 200, ok.text
    assert pinned(uk) == ["us-aisi"]
    with uk.node.db.session() as session:
        added = session.exec(select(AuditEntry).where(AuditEntry.kind == "partner.added")).one()
    assert "alice" in added.actor and "approved by" in added.actor and "bob" in added.actor


async def test_bad_input_is_refused_at_once_not_queued(pair: tuple[Kit, Kit]) -> None:
    uk, us = pair
    async with uk.client() as c:
        wrong = await c.post(
            "/v1/admin/partners", json=body(us, fingerprint="00" * 32), headers=token(uk, "a")
        )
        assert wrong.status_code == 422, wrong.text
        assert "fingerprint" in wrong.json()["detail"]
        extra = await c.post(
            "/v1/admin/partners", json=body(us, surprise=1), headers=token(uk, "a")
        )
        assert extra.status_code == 422
        listed = await c.get("/v1/approvals", headers=token(uk, "b"))
    assert listed.json() == []


async def test_an_unpinning_waits_too(pair: tuple[Kit, Kit]) -> None:
    uk, us = pair
    pin(uk, us)
    async with uk.client() as c:
        r = await c.delete("/v1/admin/partners/us-aisi", headers=token(uk, "a"))
        assert r.status_code == 202, r.text
        assert pinned(uk) == ["us-aisi"]
        ok = await c.post(f"/v1/approvals/{r.json()['id']}/approve", headers=token(uk, "b"))
        assert ok.status_code == 200, ok.text
        missing = await c.delete("/v1/admin/partners/nobody", headers=token(uk, "a"))
        assert missing.status_code == 404
    assert pinned(uk) == []


def test_the_home_cli_refuses_when_partner_changes_need_two_people(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, two_person_partner_changes=True)
    with pytest.raises(UsageError, match="two-person control for partner changes"):
        partner_cli._refuse_if_two_person(settings)
    partner_cli._refuse_if_two_person(Settings(home=tmp_path))  # off: nothing to refuse


async def test_without_two_person_control_a_pinning_is_carried_out_at_once(
    tmp_path: Path,
) -> None:
    uk, us = make_node(tmp_path, "uk-aisi"), make_node(tmp_path, "us-aisi")
    async with uk.client() as c:
        r = await c.post("/v1/admin/partners", json=body(us), headers=token(uk, "a"))
        assert r.status_code == 201, r.text
        listed = await c.get("/v1/admin/partners", headers=uk.auth(Role.AUDITOR))
    assert [p["node_id"] for p in listed.json()] == ["us-aisi"] == pinned(uk)
