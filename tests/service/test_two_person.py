"""Two-person control in-process: a TLP:RED share (and, when configured, a policy reload) waits for
a second approver with another token and another name; it is refused for the requester and for
the same person twice, carried out on approval, closed on rejection, and expires."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlmodel import func, select
from typer.testing import CliRunner

from service.artifacts import share as sharing
from service.artifacts.sweep import sweep
from service.artifacts.terms import ShareTerms
from service.cli import approvals as cli
from service.errors import UsageError
from service.federation.client import PartnerClient
from service.federation.outbox import OutboxWorker
from service.models import Approval, Artifact, AuditEntry, Outbox
from service.partners import add_partner
from service.settings import Settings
from service.tokens import Principal, Role, create_token, revoke_token
from tests.service.nodekit import (
    UPLOAD_HEADERS,
    Kit,
    SyncBridge,
    folder_store,
    make_node,
    pin,
    upload_body,
)
from tests.service.test_federation_sync import PortalTransport


class Clock:
    """The node's clock, starting at the real time the test runs (descriptors are made then and
    must be valid at it; a time fixed at import would fall behind in a long run)."""

    def __init__(self) -> None:
        self.start = self.now = datetime.now(UTC).replace(microsecond=0)

    def __call__(self) -> datetime:
        return self.now


def _allow_red(kit: Kit) -> None:
    """This test's terms with us-aisi permit TLP:RED evaluation shares (the example's do not)."""
    path = kit.node.home.policies_dir / "us-aisi.yaml"
    text = path.read_text()
    evaluation = "    actions: [share]\n    tlp: [TLP:CLEAR, TLP:GREEN, TLP:AMBER"
    text = text.replace(evaluation + "]\n", evaluation + ", TLP:RED]\n", 1)
    forbid = "    tlp: [TLP:AMBER+STRICT"
    text = text.replace(forbid + ", TLP:RED]\n", forbid + "]\n", 1)
    path.write_text(text)
    kit.node.policies.reload(actor="test", now=kit.node.now())


def _token(kit: Kit, role: Role, name: str) -> dict[str, str]:
    with kit.node.db.session() as session:
        _row, secret = create_token(session, role=role, name=name, now=kit.node.now(), actor="test")
    return {"Authorization": f"Bearer {secret}"}


@pytest.fixture
def uk(tmp_path: Path, db_url: str) -> tuple[Kit, Clock]:
    kit = make_node(tmp_path, "uk-aisi", db_url=db_url, two_person_tlp=("TLP:RED",))
    clock = Clock()
    kit.node.clock = clock
    pin(kit, make_node(tmp_path, "us-aisi"))
    _allow_red(kit)
    return kit, clock


def _meta(tlp: str = "TLP:RED") -> str:
    return json.dumps(
        {
            "title": "Jailbreak found in model X",
            "tlp": tlp,
            "topics": ["evaluation"],
            "purposes": ["evaluation"],
            "partners": ["us-aisi"],
        }
    )


def _count(kit: Kit, model: type) -> int:
    with kit.node.db.session() as s:
        return int(s.exec(select(func.count()).select_from(model)).one())


def _audit(kit: Kit, kind: str) -> list[AuditEntry]:
    with kit.node.db.session() as s:
        return list(
            s.exec(select(AuditEntry).where(AuditEntry.kind == kind).order_by(AuditEntry.id))  # type: ignore[arg-type]
        )


async def _share(c: httpx.AsyncClient, kit: Kit, content: bytes, tlp: str = "TLP:RED") -> Any:
    return await c.post(
        "/v1/artifacts",
        content=upload_body(_meta(tlp), content),
        headers={**UPLOAD_HEADERS, **kit.auth(Role.PUBLISHER)},
    )


async def test_a_red_share_waits_for_a_second_person_and_is_carried_out_on_approval(
    uk: tuple[Kit, Clock],
) -> None:
    kit, clock = uk
    content = b"the jailbreak prompt " * 1000
    same_person = _token(kit, Role.PUBLISHER, "publisher-user")  # the requester, another token
    second = _token(kit, Role.PUBLISHER, "bob")
    async with kit.client() as c:
        r = await _share(c, kit, content)
        assert r.status_code == 202, r.text
        pending = r.json()
        assert r.headers["location"] == f"/v1/approvals/{pending['id']}"
        assert pending["state"] == "pending"
        assert pending["summary"]["tlp"] == "TLP:RED"
        expires = datetime.fromisoformat(pending["expires_at"].replace("Z", "+00:00"))
        assert expires == clock.start + timedelta(
            days=1
        )  # the default ENTENTE_APPROVAL_TTL_SECONDS
        # Not shared: no artifact, no delivery, nothing listed; only ciphertext at rest.
        assert _count(kit, Artifact) == 0
        assert _count(kit, Outbox) == 0
        assert (await c.get("/v1/artifacts", headers=kit.auth(Role.READER))).json()["items"] == []
        blobs = list(kit.node.blobs.iter_digests())
        assert len(blobs) == 1
        assert content[:32] not in folder_store(kit.node).path_for(blobs[0]).read_bytes()
        [requested] = _audit(kit, "approval.requested")
        assert json.loads(requested.detail)["approval"] == pending["id"]

        listed = await c.get("/v1/approvals", headers=kit.auth(Role.ADMIN))
        assert [a["id"] for a in listed.json()] == [pending["id"]]
        assert (await c.get("/v1/approvals", headers=kit.auth(Role.READER))).status_code == 403

        url = f"/v1/approvals/{pending['id']}/approve"
        own = await c.post(url, headers=kit.auth(Role.PUBLISHER))
        assert own.status_code == 403
        assert own.json()["reason"] == "own-request"
        twice = await c.post(url, headers=same_person)
        assert twice.status_code == 403
        assert twice.json()["reason"] == "same-person"
        auditor = await c.post(url, headers=kit.auth(Role.AUDITOR))
        assert auditor.status_code == 403
        assert [json.loads(e.detail)["reason"] for e in _audit(kit, "approval.refused")] == [
            "own-request",
            "same-person",
        ]
        assert _count(kit, Artifact) == 0  # still nothing shared

        done = await c.post(url, headers=second)
        assert done.status_code == 200, done.text
        approved = done.json()
        assert approved["state"] == "approved"
        assert approved["decided_by"].startswith("publisher:bob (")
        again = await c.post(url, headers=kit.auth(Role.ADMIN))
        assert again.status_code == 409
        assert again.json()["reason"] == "approved"

        art = (
            await c.get(f"/v1/artifacts/{approved['artifact_id']}", headers=kit.auth(Role.AUDITOR))
        ).json()
        assert art["tlp"] == "TLP:RED"
        assert [(d["partner"], d["state"]) for d in art["deliveries"]] == [("us-aisi", "pending")]
        body = await c.get(
            f"/v1/artifacts/{approved['artifact_id']}/content", headers=kit.auth(Role.READER)
        )
        assert body.content == content
    [granted] = _audit(kit, "approval.granted")
    detail = json.loads(granted.detail)
    assert detail["requested_by"].startswith("publisher:publisher-user (")
    assert detail["approved_by"].startswith("publisher:bob (")
    assert granted.actor == detail["approved_by"]
    [shared] = _audit(kit, "share.allowed")
    assert shared.actor == detail["requested_by"]
    assert json.loads(shared.detail)["approval"]["approved_by"] == detail["approved_by"]


async def test_shares_below_the_configured_label_are_unaffected(uk: tuple[Kit, Clock]) -> None:
    kit, _clock = uk
    async with kit.client() as c:
        r = await _share(c, kit, b"amber finding", tlp="TLP:AMBER")
        assert r.status_code == 201, r.text
        assert (await c.get("/v1/approvals", headers=kit.auth(Role.ADMIN))).json() == []
    assert _count(kit, Outbox) == 1
    assert _count(kit, Approval) == 0


async def test_a_policy_denial_is_answered_at_once_not_queued(tmp_path: Path) -> None:
    kit = make_node(tmp_path, "uk-aisi", two_person_tlp=("TLP:RED",))
    pin(kit, make_node(tmp_path, "us-aisi"))  # the example terms forbid TLP:RED
    async with kit.client() as c:
        r = await _share(c, kit, b"red")
    assert r.status_code == 403
    assert r.json()["rule"] == "above-amber"
    assert _count(kit, Approval) == 0


async def test_a_pending_share_expires(uk: tuple[Kit, Clock]) -> None:
    kit, clock = uk
    second = _token(kit, Role.ADMIN, "carol")
    async with kit.client() as c:
        pending = (await _share(c, kit, b"red finding")).json()
        clock.now = clock.start + timedelta(seconds=kit.node.settings.approval_ttl_seconds - 1)
        assert len((await c.get("/v1/approvals", headers=second)).json()) == 1
        clock.now = clock.start + timedelta(seconds=kit.node.settings.approval_ttl_seconds)
        assert (await c.get("/v1/approvals", headers=second)).json() == []
        late = await c.post(f"/v1/approvals/{pending['id']}/approve", headers=second)
        assert late.status_code == 409
        assert late.json()["reason"] == "expired"
        expired = (await c.get("/v1/approvals?state=expired", headers=second)).json()
        assert [(a["id"], a["decided_by"]) for a in expired] == [(pending["id"], "node:approvals")]
    [entry] = _audit(kit, "approval.expired")
    assert json.loads(entry.detail)["approval"] == pending["id"]
    assert list(kit.node.blobs.iter_digests()) == []  # its ciphertext is gone
    assert _count(kit, Artifact) == 0


async def test_a_rejected_share_is_never_shared(uk: tuple[Kit, Clock]) -> None:
    kit, _clock = uk
    async with kit.client() as c:
        pending = (await _share(c, kit, b"red finding")).json()
        r = await c.post(
            f"/v1/approvals/{pending['id']}/reject",
            params={"reason": "not for partners"},
            headers=kit.auth(Role.ADMIN),
        )
        assert r.status_code == 200
        assert r.json()["state"] == "rejected"
        second = _token(kit, Role.PUBLISHER, "bob")
        late = await c.post(f"/v1/approvals/{pending['id']}/approve", headers=second)
        assert late.status_code == 409
    [entry] = _audit(kit, "approval.rejected")
    assert json.loads(entry.detail)["reason"] == "not for partners"
    assert list(kit.node.blobs.iter_digests()) == []
    assert _count(kit, Outbox) == 0


async def test_the_start_up_sweep_keeps_a_pending_share(uk: tuple[Kit, Clock]) -> None:
    kit, _clock = uk
    async with kit.client() as c:
        assert (await _share(c, kit, b"red finding")).status_code == 202
    far = datetime.now(UTC).timestamp() + 10 * kit.node.settings.blob_orphan_grace_seconds
    report = sweep(kit.node, clock=lambda: far)
    assert report.orphans_removed == 0
    assert len(list(kit.node.blobs.iter_digests())) == 1


async def test_approval_refused_when_the_policy_changed_since_the_request(
    uk: tuple[Kit, Clock],
) -> None:
    kit, _clock = uk
    async with kit.client() as c:
        pending = (await _share(c, kit, b"red finding")).json()
        path = kit.node.home.policies_dir / "us-aisi.yaml"
        path.write_text(path.read_text().replace("version: 1\n", "version: 2\n", 1))
        kit.node.policies.reload(actor="test", now=kit.node.now())
        r = await c.post(
            f"/v1/approvals/{pending['id']}/approve", headers=_token(kit, Role.ADMIN, "carol")
        )
    assert r.status_code == 409
    assert r.json()["reason"] == "policy-changed"
    assert _count(kit, Artifact) == 0


async def test_a_policy_reload_waits_for_a_second_admin(tmp_path: Path) -> None:
    kit = make_node(tmp_path, "uk-aisi", two_person_policy_reload=True)
    before = kit.node.policies.current.sha256
    _allow_red_file = kit.node.home.policies_dir / "us-aisi.yaml"
    _allow_red_file.write_text(_allow_red_file.read_text().replace("version: 1\n", "version: 2\n"))
    async with kit.client() as c:
        r = await c.post("/v1/admin/policies/reload", headers=kit.auth(Role.ADMIN))
        assert r.status_code == 202, r.text
        pending = r.json()
        assert kit.node.policies.current.sha256 == before  # not reloaded
        url = f"/v1/approvals/{pending['id']}/approve"
        publisher = await c.post(url, headers=_token(kit, Role.PUBLISHER, "bob"))
        assert publisher.status_code == 403
        assert publisher.json()["reason"] == "role"
        done = await c.post(url, headers=_token(kit, Role.ADMIN, "dana"))
        assert done.status_code == 200, done.text
        assert done.json()["result"]["changed"] is True
    assert kit.node.policies.current.sha256 == pending["summary"]["sha256"] != before
    [granted] = _audit(kit, "approval.granted")
    assert json.loads(granted.detail)["action"] == "policy.reload"


async def test_a_reload_is_refused_when_the_folder_changed_since_the_request(
    tmp_path: Path,
) -> None:
    kit = make_node(tmp_path, "uk-aisi", two_person_policy_reload=True)
    before = kit.node.policies.current.sha256
    async with kit.client() as c:
        pending = (await c.post("/v1/admin/policies/reload", headers=kit.auth(Role.ADMIN))).json()
        path = kit.node.home.policies_dir / "us-aisi.yaml"
        path.write_text(path.read_text().replace("version: 1\n", "version: 3\n"))
        r = await c.post(
            f"/v1/approvals/{pending['id']}/approve", headers=_token(kit, Role.ADMIN, "dana")
        )
    assert r.status_code == 409
    assert r.json()["reason"] == "policy-changed"
    assert kit.node.policies.current.sha256 == before


def test_the_setting_reads_labels_and_refuses_a_typo(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ENTENTE_TWO_PERSON_TLP", raising=False)
    assert Settings.load().two_person_tlp == ()  # default: no label needs a second person
    monkeypatch.setenv("ENTENTE_TWO_PERSON_TLP", "tlp:red, TLP:AMBER+STRICT")
    settings = Settings.load()
    assert settings.two_person_tlp == ("TLP:RED", "TLP:AMBER+STRICT")
    assert settings.needs_second_approver("TLP:RED")
    assert not settings.needs_second_approver("TLP:AMBER")
    monkeypatch.setenv("ENTENTE_TWO_PERSON_TLP", "TLP:CRIMSON")
    with pytest.raises(UsageError, match="TLP:CRIMSON"):
        Settings.load()


def test_the_cli_lists_approves_and_rejects(
    uk: tuple[Kit, Clock], monkeypatch: pytest.MonkeyPatch
) -> None:
    kit, _clock = uk
    bob = _token(kit, Role.PUBLISHER, "bob")["Authorization"].removeprefix("Bearer ")

    def in_process(url: str, token: str) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"}
        return httpx.Client(transport=SyncBridge(kit), base_url=url, headers=headers)

    monkeypatch.setattr(cli, "_client", in_process)
    with httpx.Client(transport=SyncBridge(kit), base_url="http://uk-aisi") as client:
        ids = []
        for _ in range(2):
            r = client.post(
                "/v1/artifacts",
                content=upload_body(_meta(), b"red finding"),
                headers={**UPLOAD_HEADERS, **kit.auth(Role.PUBLISHER)},
            )
            assert r.status_code == 202
            ids.append(r.json()["id"])
    runner = CliRunner()
    base = ["--url", "http://uk-aisi"]
    run: Callable[..., Any] = runner.invoke
    listed = run(cli.app, ["list", *base, "--token", bob, "--json"])
    assert listed.exit_code == 0, listed.output
    assert sorted(a["id"] for a in json.loads(listed.output)) == sorted(ids)
    own = run(cli.app, ["approve", ids[0], *base, "--token", kit.tokens[Role.PUBLISHER]])
    assert own.exit_code != 0
    assert "403" in str(own.exception) or "403" in own.output
    ok = run(cli.app, ["approve", ids[0], *base, "--token", bob])
    assert ok.exit_code == 0, ok.output
    assert "deliveries are queued" in ok.output
    no = run(cli.app, ["reject", ids[1], *base, "--token", bob, "--reason", "wrong partner"])
    assert no.exit_code == 0, no.output
    assert [e.kind for e in _audit(kit, "approval.rejected")] == ["approval.rejected"]
    assert _count(kit, Outbox) == 1


def test_an_onward_share_at_the_label_waits_and_is_carried_out_on_approval(
    tmp_path: Path,
) -> None:
    uk = make_node(tmp_path, "uk-aisi")
    us = make_node(tmp_path, "us-aisi", two_person_tlp=("TLP:GREEN",))
    ca = make_node(tmp_path, "ca-aisi")
    for a, b in [(uk, us), (us, uk), (us, ca), (ca, us), (ca, uk), (uk, ca)]:
        pin(a, b)
    transport = PortalTransport({k.node.node_id: k.app for k in (uk, us, ca)})
    try:
        terms = ShareTerms(
            title="finding", tlp="TLP:GREEN", topics=("evaluation",), purposes=("evaluation",),
            partners=("us-aisi",),
        )  # fmt: skip
        publisher = Principal(token_id="tok_uk", name="uk-publisher", role=Role.PUBLISHER)
        decisions = sharing.decide_share(uk.node, terms, principal=publisher)
        sent = sharing.share_artifact(
            uk.node, uk.node.blobs, terms, io.BytesIO(b"green finding"),
            principal=publisher, decisions=decisions, onward_approved=["ca-aisi"],
        )  # fmt: skip
        client = PartnerClient(uk.node, http=httpx.Client(transport=transport))
        assert OutboxWorker(uk.node, client).run_once()

        bridge = httpx.Client(transport=SyncBridge(us), base_url="http://us-aisi")
        r = bridge.post(
            f"/v1/artifacts/{sent.id}/share",
            json={"partners": ["ca-aisi"]},
            headers=us.auth(Role.PUBLISHER),
        )
        assert r.status_code == 202, r.text
        pending = r.json()
        assert pending["action"] == "share.onward"
        assert _count(us, Outbox) == 0
        url = f"/v1/approvals/{pending['id']}/approve"
        assert bridge.post(url, headers=us.auth(Role.PUBLISHER)).status_code == 403
        done = bridge.post(url, headers=_token(us, Role.ADMIN, "erin"))
        assert done.status_code == 200, done.text
        made = done.json()["result"]["artifact_id"]
        with us.node.db.session() as s:
            rows = list(s.exec(select(Outbox)))
        assert [(o.partner, o.artifact_id) for o in rows] == [("ca-aisi", made)]
        [granted] = _audit(us, "approval.granted")
        assert json.loads(granted.detail)["result"] == {"artifact_id": made}
    finally:
        transport.close()


def test_the_approver_is_shown_everything_the_approval_makes_binding(
    uk: tuple[Kit, Clock], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pending share showed title, label and partners only: the originator's approval of
    onward sharing the signed manifest grants, its dates and purposes were hidden from the
    second person, and from the audit entries of the request and the decision (found by
    review)."""
    kit, _clock = uk
    bob = _token(kit, Role.PUBLISHER, "bob")["Authorization"].removeprefix("Bearer ")
    meta = {**json.loads(_meta()), "onward_approved": ["ca-aisi"],
            "expires_at": "2031-01-01T00:00:00Z"}  # fmt: skip

    def in_process(url: str, token: str) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"}
        return httpx.Client(transport=SyncBridge(kit), base_url=url, headers=headers)

    monkeypatch.setattr(cli, "_client", in_process)
    with httpx.Client(transport=SyncBridge(kit), base_url="http://uk-aisi") as client:
        r = client.post(
            "/v1/artifacts",
            content=upload_body(json.dumps(meta), b"red finding"),
            headers={**UPLOAD_HEADERS, **kit.auth(Role.PUBLISHER)},
        )
    assert r.status_code == 202, r.text
    summary = r.json()["summary"]
    assert summary["onward_approved"] == ["ca-aisi"]
    assert summary["expires_at"].startswith("2031-01-01")
    assert summary["purposes"] == ["evaluation"] and summary["topics"] == ["evaluation"]
    [requested] = _audit(kit, "approval.requested")
    assert json.loads(requested.detail)["onward_approved"] == ["ca-aisi"]
    base = ["--url", "http://uk-aisi", "--token", bob]
    monkeypatch.setattr(cli.console, "width", 300)  # no cell wrapped, whatever the terminal
    listed = CliRunner().invoke(cli.app, ["list", *base])
    assert "onward sharing approved to ca-aisi" in listed.output, listed.output
    shown = CliRunner().invoke(cli.app, ["show", r.json()["id"], *base])
    assert shown.exit_code == 0, shown.output
    assert "onward_approved" in shown.output and "2031-01-01" in shown.output


async def test_a_revoked_requesters_action_is_not_carried_out(uk: tuple[Kit, Clock]) -> None:
    """Revoking a stolen publisher token left its pending shares approvable, carried out in
    its name (found by review)."""
    kit, _clock = uk
    async with kit.client() as c:
        r = await _share(c, kit, b"red finding")
        assert r.status_code == 202, r.text
        with kit.node.db.session() as session:
            pending = session.get(Approval, r.json()["id"])
            assert pending is not None
            revoke_token(session, token_id=pending.requested_by, now=kit.node.now(), actor="t")
            session.commit()
        url = f"/v1/approvals/{r.json()['id']}/approve"
        refused = await c.post(url, headers=_token(kit, Role.PUBLISHER, "bob"))
    assert refused.status_code == 403, refused.text
    assert refused.json()["reason"] == "requester-revoked"
    assert _count(kit, Artifact) == 0
    [entry] = _audit(kit, "approval.refused")
    assert json.loads(entry.detail)["reason"] == "requester-revoked"


async def test_a_share_sealed_to_keys_since_replaced_is_not_carried_out(
    uk: tuple[Kit, Clock], tmp_path: Path
) -> None:
    """Approval re-decided the policies but never looked at the keys: a partner that rotated
    (its old key leaked, say) or was pinned again was sent a ciphertext its retired key opens
    (found by review)."""
    kit, _clock = uk
    async with kit.client() as c:
        r = await _share(c, kit, b"red finding")
        assert r.status_code == 202, r.text
        (tmp_path / "renewed").mkdir()
        renewed = make_node(tmp_path / "renewed", "us-aisi")  # the same id, new keys
        with kit.node.db.session() as session:
            add_partner(
                session, descriptor_bytes=renewed.node.descriptor().to_bytes(),
                fingerprint=renewed.node.keys.signing.fingerprint, own_node_id="uk-aisi",
                now=kit.node.now(), actor="test", replace=True,
            )  # fmt: skip
        url = f"/v1/approvals/{r.json()['id']}/approve"
        refused = await c.post(url, headers=_token(kit, Role.PUBLISHER, "bob"))
    assert refused.status_code == 409, refused.text
    assert refused.json()["reason"] == "recipients-changed"
    assert _count(kit, Artifact) == 0 and _count(kit, Outbox) == 0
