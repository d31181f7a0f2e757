"""Post-quantum end to end, between real nodes: a hybrid share delivered, read and revoked; a
classic-only node refused a TLP:RED share where the terms need post-quantum, naming the rule."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest

from crypto.dsse import Envelope
from crypto.sealed import Manifest
from tests.integration.test_federation import audit_kinds, upload, wait_for
from tests.nodes import Federation, start_federation

pytestmark = pytest.mark.integration

TERMS = """\
format: entente.policy/v1
id: {me}.{partner}
version: 2
mou: Test MOU, post-quantum amendment [example]
partner: {partner}
valid_from: 2025-01-01
valid_until: 2030-12-31
approved_by:
  - {{name: T. Officer, role: Policy officer, date: 2025-01-01}}
permit:
  - id: findings
    clause: Test MOU §2
    actions: [share, receive, read]
    tlp: [TLP:CLEAR, TLP:GREEN, TLP:AMBER, TLP:AMBER+STRICT, TLP:RED]
    topics: [evaluation]
    purposes: [evaluation]
forbid:
  - id: strict-needs-post-quantum
    clause: Test MOU §7(b) (the most sensitive findings only post-quantum)
    actions: [share, receive, onward_share]
    tlp: [TLP:AMBER+STRICT, TLP:RED]
    sealing: classic
"""


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    federation = start_federation(
        tmp_path_factory.mktemp("pq"),
        ("uk-aisi", "us-aisi", "ca-aisi"),
        classic_only=("ca-aisi",),
        ENTENTE_SYNC_INTERVAL_SECONDS="0.2",
        ENTENTE_RETRY_BASE_SECONDS="0.2",
        ENTENTE_RETRY_MAX_SECONDS="1",
    )
    try:
        for me, node in federation.nodes.items():
            for partner in federation.nodes:
                if partner != me:
                    (node.home / "policies" / f"{partner}.yaml").write_text(
                        TERMS.format(me=me, partner=partner)
                    )
            reloaded = httpx.post(
                f"{node.url}/v1/admin/policies/reload", headers=federation.auth(me, "admin")
            )
            assert reloaded.status_code == 200, reloaded.text
        yield federation
    finally:
        federation.stop()


def _share(fed: Federation, to: list[str], tlp: str) -> httpx.Response:
    meta = {"title": "Red-team findings", "tlp": tlp, "topics": ["evaluation"],
            "purposes": ["evaluation"], "partners": to}  # fmt: skip
    body, headers = upload(meta, b"finding\n" * 4096)
    uk = fed.nodes["uk-aisi"]
    return httpx.post(
        f"{uk.url}/v1/artifacts",
        content=body,
        headers={**headers, **fed.auth("uk-aisi", "publisher")},
    )


def test_a_hybrid_share_is_delivered_read_and_revoked(fed: Federation) -> None:
    uk, us = fed.nodes["uk-aisi"], fed.nodes["us-aisi"]
    r = _share(fed, ["us-aisi"], "TLP:RED")
    assert r.status_code == 201, r.text
    art = r.json()
    assert art["sealing"] == "post-quantum"

    def delivered() -> bool:
        d = httpx.get(f"{uk.url}/v1/artifacts/{art['id']}", headers=fed.auth("uk-aisi", "auditor"))
        return bool(d.json()["deliveries"][0]["state"] == "delivered")

    wait_for(delivered, what="delivery to us-aisi")
    got = httpx.get(f"{us.url}/v1/artifacts/{art['id']}", headers=fed.auth("us-aisi", "auditor"))
    assert got.status_code == 200, got.text
    received = got.json()
    assert received["sealing"] == "post-quantum"
    # the manifest the US holds: hybrid recipients only, and signed with Ed25519 AND ML-DSA-65
    envelope = Envelope.from_json(received["manifest"])
    manifest = Manifest.from_payload(envelope.payload)
    assert manifest.sealing == "mlkem768x25519"
    assert all(r.recipient.startswith("age1pq1") for r in manifest.recipients)
    assert len(envelope.signatures) == 2
    content = httpx.get(
        f"{us.url}/v1/artifacts/{art['id']}/content", headers=fed.auth("us-aisi", "reader")
    )
    assert content.status_code == 200 and content.content == b"finding\n" * 4096
    revoked = httpx.post(
        f"{uk.url}/v1/artifacts/{art['id']}/revoke",
        params={"reason": "superseded"},
        headers=fed.auth("uk-aisi", "publisher"),
    )
    assert revoked.status_code == 200, revoked.text
    wait_for(
        lambda: "revocation.acknowledged" in audit_kinds(fed, "uk-aisi"), what="revocation ack"
    )
    gone = httpx.get(f"{us.url}/v1/artifacts/{art['id']}", headers=fed.auth("us-aisi", "reader"))
    assert gone.status_code == 410


def test_a_classic_only_partner_is_refused_a_red_share_naming_the_rule(fed: Federation) -> None:
    r = _share(fed, ["ca-aisi"], "TLP:RED")
    assert r.status_code == 403, r.text
    problem = r.json()
    assert problem["rule"] == "strict-needs-post-quantum"
    assert problem["clause"] == "Test MOU §7(b) (the most sensitive findings only post-quantum)"
    assert problem["partner"] == "ca-aisi"
    # a GREEN finding still goes to it, sealed classic (everyone must be able to read it)
    green = _share(fed, ["ca-aisi", "us-aisi"], "TLP:GREEN")
    assert green.status_code == 201, green.text
    assert green.json()["sealing"] == "classic"
    kinds = audit_kinds(fed, "uk-aisi")
    assert kinds.count("share.denied") >= 1


def test_descriptors_advertise_the_post_quantum_keys(fed: Federation) -> None:
    uk, ca = fed.nodes["uk-aisi"], fed.nodes["ca-aisi"]
    mine = httpx.get(f"{uk.url}/.well-known/entente.json").json()
    payload = json.loads(Envelope.from_json(mine).payload)
    assert payload["pq_recipient"].startswith("age1pq1")
    assert payload["mldsa_key"] and payload["checkpoint_key"]
    assert payload["checkpoint_key"] != payload["signing_key"]
    classic = json.loads(
        Envelope.from_json(httpx.get(f"{ca.url}/.well-known/entente.json").json()).payload
    )
    assert classic["pq_recipient"] is None and "mldsa_key" not in classic
