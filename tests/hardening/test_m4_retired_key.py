"""M4: after a partner rotated its key, the retired key was still accepted for new manifests: a
node holding it forged an onward share whose signed root claims the rotated partner as origin,
and it was stored.

Now a retired key verifies only what it signed before its retirement (the rotation record's
signed time, or when this node accepted it, whichever is earlier): manifests and onward chain
links by their ``created``, receipts by their ``received_at``, answers by their signature's
``created``. What it signed before keeps verifying.
"""

from __future__ import annotations

import hashlib
import io
import json
import secrets
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlmodel import select

from crypto import httpsig
from crypto.descriptor import NodeDescriptor, sign_descriptor
from crypto.errors import VerificationError
from crypto.keys import SigningKey
from crypto.keyset import SignerSet
from crypto.mldsa import MLDSASigningKey
from crypto.receipt import Receipt, sign_receipt
from crypto.sealed import ManifestRecipient, seal
from service.federation.onward import verify_chain
from service.federation.settle import record_receipts
from service.federation.signing import (
    digest_value,
    sign_request_headers,
    sign_response_headers,
    verify_response_from,
)
from service.models import Artifact, Outbox, PartnerKey
from service.partners import partner_keys, rotate_partner
from tests.hardening.kit import share_sync
from tests.service.nodekit import Kit, make_node, pin
from tests.service.test_federation_input import DELIVERY, sign
from tests.service.test_federation_onward import decision, manifest

CONTENT = b"an evaluation finding\n" * 64


@pytest.fixture
def nodes(tmp_path: Path) -> dict[str, Kit]:
    kits = {n: make_node(tmp_path, n) for n in ("uk-aisi", "us-aisi", "ca-aisi")}
    for a in kits.values():
        for b in kits.values():
            if a is not b:
                pin(a, b)
    return kits


def _rotate_at(nodes: dict[str, Kit], who: str, at: str, when: datetime) -> SignerSet:
    """``who`` rotates its keys (Ed25519 and ML-DSA) at ``when``; ``at`` accepts the rotation.
    Returns the new set."""
    old = nodes[who].node.keys.signer
    new = SignerSet(
        SigningKey.generate(), None if old.mldsa is None else MLDSASigningKey.generate()
    )
    home = nodes[who].node.home
    descriptor = NodeDescriptor(
        node_id=home.node_id,
        name=home.name,
        url=home.url,
        signing_key=new.ed25519.public,
        mldsa_key=new.public.mldsa,
        age_recipient=home.age_recipient,
        pq_recipient=home.pq_recipient,
        created=when,
        expires=when + timedelta(days=30),
        previous=old.fingerprint,
    )
    envelope = sign_descriptor(descriptor, key=new, previous_key=old)
    with nodes[at].node.db.session() as session:
        rotate_partner(
            session, descriptor_bytes=envelope.to_bytes(), now=datetime.now(UTC), actor="test"
        )
    return new


def _sealed(
    sender: Kit,
    to: list[Kit],
    *,
    policy: dict[str, object],
    created: datetime,
    chain: tuple[dict[str, object], ...] = (),
) -> tuple[str, bytes, bytes]:
    out = io.BytesIO()
    art_id = f"art_m4{secrets.token_hex(8)}"
    result = seal(
        io.BytesIO(CONTENT),
        out,
        artifact_id=art_id,
        title="A finding",
        origin=sender.node.node_id,
        tlp="TLP:GREEN",
        recipients=[
            ManifestRecipient(k.node.node_id, k.node.home.age_recipient) for k in [sender, *to]
        ],
        signer=sender.node.keys.signer,
        policy=policy,
        now=created,
        topics=["evaluation"],
        purposes=["evaluation"],
        chain=chain,
    )
    line = json.dumps(result.envelope.to_json(), separators=(",", ":")).encode()
    return art_id, line, out.getvalue()


def _root(nodes: dict[str, Kit], created: datetime) -> bytes:
    """A root manifest claiming uk-aisi as origin, signed with uk-aisi's (old) key, shared with
    ca-aisi, whose terms let ca-aisi pass it on to us-aisi."""
    policy = {"decisions": [decision("ca-aisi", ["us-aisi"])], "onward_approved": ["us-aisi"]}
    return _sealed(nodes["uk-aisi"], [nodes["ca-aisi"]], policy=policy, created=created)[1]


def _onward(nodes: dict[str, Kit], root: bytes) -> tuple[str, bytes, bytes]:
    return _sealed(
        nodes["ca-aisi"],
        [nodes["us-aisi"]],
        policy={"decisions": [decision("us-aisi")]},
        created=datetime.now(UTC),
        chain=(json.loads(root),),
    )


async def test_a_retired_key_cannot_sign_a_new_onward_root(nodes: dict[str, Kit]) -> None:
    rotated = datetime.now(UTC) - timedelta(hours=1)
    _rotate_at(nodes, "uk-aisi", "us-aisi", rotated)
    # Someone holding uk-aisi's retired key forges a root created after the rotation and
    # passes it on, signed as ca-aisi (a pinned partner of us-aisi), to us-aisi.
    forged_root = _root(nodes, created=datetime.now(UTC))
    art_id, line, ciphertext = _onward(nodes, forged_root)
    with pytest.raises(VerificationError, match="retired"):
        verify_chain(nodes["us-aisi"].node, manifest(line))
    body = line + b"\n" + ciphertext
    headers = sign(nodes["ca-aisi"], nodes["us-aisi"], "POST", "/federation/v1/inbox", body)
    async with nodes["us-aisi"].client() as c:
        r = await c.post("/federation/v1/inbox", content=body, headers=headers)
    assert r.status_code == 422, r.text
    assert r.json()["reason"] == "chain" and "retired" in r.json()["detail"]
    with nodes["us-aisi"].node.db.session() as session:
        assert session.exec(select(Artifact).where(Artifact.id == art_id)).first() is None


async def test_what_a_retired_key_signed_before_its_retirement_still_verifies(
    nodes: dict[str, Kit],
) -> None:
    root = _root(nodes, created=datetime.now(UTC) - timedelta(hours=2))
    _rotate_at(nodes, "uk-aisi", "us-aisi", datetime.now(UTC) - timedelta(hours=1))
    art_id, line, ciphertext = _onward(nodes, root)
    links = verify_chain(nodes["us-aisi"].node, manifest(line))
    assert [m.origin for m in links] == ["uk-aisi", "ca-aisi"]
    body = line + b"\n" + ciphertext
    headers = sign(nodes["ca-aisi"], nodes["us-aisi"], "POST", "/federation/v1/inbox", body)
    assert headers["Content-Type"] == DELIVERY
    async with nodes["us-aisi"].client() as c:
        r = await c.post("/federation/v1/inbox", content=body, headers=headers)
    assert r.status_code == 201, r.text
    with nodes["us-aisi"].node.db.session() as session:
        stored = session.exec(select(Artifact).where(Artifact.id == art_id)).first()
        assert stored is not None and stored.upstream_origin == "uk-aisi"


def test_a_retired_key_cannot_sign_a_new_receipt(nodes: dict[str, Kit]) -> None:
    us = nodes["us-aisi"]
    sent = share_sync(us, CONTENT, partners=["uk-aisi"], tlp="TLP:GREEN")
    old = nodes["uk-aisi"].node.keys.signer
    new = _rotate_at(nodes, "uk-aisi", "us-aisi", datetime.now(UTC) - timedelta(minutes=5))
    with us.node.db.session() as session:
        retired = session.get(PartnerKey, old.fingerprint)
        assert retired is not None and retired.retired_at is not None

    def receipt(key: SignerSet) -> dict[str, object]:
        signed = sign_receipt(
            Receipt(
                kind="delivery",
                artifact_id=sent["id"],
                sha256=sent["sha256"],
                receiver="uk-aisi",
                sender="us-aisi",
                received_at=datetime.now(UTC),
            ),
            key=key,
        )
        out: dict[str, object] = signed.to_json()
        return out

    assert record_receipts(us.node, partner="uk-aisi", receipts=[receipt(old)]) == 0
    with us.node.db.session() as session:
        row = session.exec(select(Outbox).where(Outbox.artifact_id == sent["id"])).one()
        assert row.state == "pending"
    assert record_receipts(us.node, partner="uk-aisi", receipts=[receipt(new)]) == 1


def test_a_retired_key_cannot_sign_a_new_answer(nodes: dict[str, Kit]) -> None:
    uk, us = nodes["uk-aisi"].node, nodes["us-aisi"].node
    url = "http://uk-aisi/federation/v1/feed?after=0"
    digest = digest_value(hashlib.sha256(b"").digest())
    request = httpsig.Request(
        "GET",
        url,
        sign_request_headers(us, method="GET", url=url, headers={}, content_digest=digest),
    )
    headers = {"Content-Type": "application/json"}
    headers.update(
        sign_response_headers(
            uk, request=request, status=200, headers=headers, content_digest=digest
        )
    )
    old = uk.keys.signing
    _rotate_at(nodes, "uk-aisi", "us-aisi", datetime.now(UTC) - timedelta(minutes=1))
    with us.db.session() as session:
        keys = partner_keys(session, "uk-aisi")
    assert old.fingerprint in keys.retired
    with pytest.raises(VerificationError, match="retired"):
        verify_response_from(
            us,
            partner_keys=keys.keys,
            retired=keys.retired,
            request=request,
            status=200,
            headers=list(headers.items()),
        )
