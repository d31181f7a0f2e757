"""Post-quantum sealing in a node: hybrid when every party can read it, and terms that need it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlmodel import select

from crypto.dsse import Envelope
from crypto.sealed import Manifest
from service.models import Artifact, AuditEntry
from service.tokens import Role
from tests.service.nodekit import UPLOAD_HEADERS, Kit, make_node, pin, upload_body

TERMS = """\
format: entente.policy/v1
id: uk-aisi.{partner}
version: 1
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
    tlp: [TLP:CLEAR, TLP:GREEN, TLP:AMBER, TLP:AMBER+STRICT, TLP:RED]
    topics: [evaluation]
forbid:
  - id: strict-needs-post-quantum
    clause: Test MOU §7 (the most sensitive findings only post-quantum)
    actions: [share, onward_share]
    tlp: [TLP:AMBER+STRICT, TLP:RED]
    sealing: classic
"""


@pytest.fixture
def uk(tmp_path: Path) -> Kit:
    kit = make_node(tmp_path, "uk-aisi")
    pin(kit, make_node(tmp_path, "us-aisi"))  # post-quantum (the default)
    pin(kit, make_node(tmp_path, "ca-aisi", post_quantum=False))  # classic only
    for partner in ("us-aisi", "ca-aisi"):
        (kit.node.home.policies_dir / f"{partner}.yaml").write_text(TERMS.format(partner=partner))
    kit.node.policies.reload(actor="test", now=kit.node.now())
    return kit


async def _share(kit: Kit, tlp: str, partners: list[str]) -> tuple[int, dict[str, object]]:
    meta = {"title": "Eval", "tlp": tlp, "topics": ["evaluation"], "partners": partners}
    async with kit.client() as c:
        r = await c.post(
            "/v1/artifacts",
            content=upload_body(json.dumps(meta), b"finding " * 1000),
            headers={**UPLOAD_HEADERS, **kit.auth(Role.PUBLISHER)},
        )
    return r.status_code, r.json()


def _manifest(kit: Kit, artifact_id: str) -> Manifest:
    with kit.node.db.session() as s:
        row = s.exec(select(Artifact).where(Artifact.id == artifact_id)).one()
    return Manifest.from_payload(Envelope.from_bytes(row.manifest.encode()).payload)


async def test_a_share_to_post_quantum_partners_is_sealed_to_hybrid_recipients_only(
    uk: Kit,
) -> None:
    status, art = await _share(uk, "TLP:RED", ["us-aisi"])
    assert status == 201, art
    assert art["sealing"] == "post-quantum"
    manifest = _manifest(uk, str(art["id"]))
    assert [r.recipient[:7] for r in manifest.recipients] == ["age1pq1", "age1pq1"]
    async with uk.client() as c:  # this node opens it with its own hybrid identity
        body = await c.get(f"/v1/artifacts/{art['id']}/content", headers=uk.auth(Role.READER))
    assert body.status_code == 200 and body.content == b"finding " * 1000
    with uk.node.db.session() as s:
        entry = s.exec(select(AuditEntry).where(AuditEntry.kind == "share.allowed")).one()
    assert json.loads(entry.detail)["sealing"] == "post-quantum"


async def test_one_classic_partner_makes_the_share_classic(uk: Kit) -> None:
    status, art = await _share(uk, "TLP:GREEN", ["us-aisi", "ca-aisi"])
    assert status == 201, art
    assert art["sealing"] == "classic"
    manifest = _manifest(uk, str(art["id"]))
    assert all(r.recipient.startswith("age1") and not r.recipient.startswith("age1pq1")
               for r in manifest.recipients)  # fmt: skip


async def test_terms_that_need_post_quantum_deny_a_classic_share_naming_rule_and_clause(
    uk: Kit,
) -> None:
    status, problem = await _share(uk, "TLP:RED", ["ca-aisi"])
    assert status == 403, problem
    assert problem["rule"] == "strict-needs-post-quantum"
    assert problem["clause"] == "Test MOU §7 (the most sensitive findings only post-quantum)"
    assert problem["partner"] == "ca-aisi"
    with uk.node.db.session() as s:
        assert s.exec(select(Artifact)).first() is None
        denied = s.exec(select(AuditEntry).where(AuditEntry.kind == "share.denied")).all()
    assert [(e.partner, e.rule) for e in denied] == [("ca-aisi", "strict-needs-post-quantum")]
