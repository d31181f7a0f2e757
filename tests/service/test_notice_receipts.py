"""A notice receipt states an artifact's digest under this node's signature: a notice about an
artifact this node holds is refused (and audited) unless it names the digest this node holds,
lest the node sign "artifact X has digest S" for an S a partner chose."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import col, select

from crypto.dsse import Envelope
from crypto.receipt import verify_receipt
from service.errors import InvalidInputError
from service.federation import notices
from service.federation.receive import Receiver
from service.models import Artifact, AuditEntry, ReceivedNotice
from service.partners import partner_verify_keys
from tests.service.nodekit import Kit, make_node, pin
from tests.service.test_federation_input import sealed_artifact, sign
from tests.service.test_shared_blobs import share

NOTICES = "/federation/v1/notices"
OTHER = "0" * 64  # a digest no artifact here has


@pytest.fixture
def uk(tmp_path: Path) -> Kit:
    return make_node(tmp_path, "uk-aisi")


@pytest.fixture
def us(tmp_path: Path, uk: Kit) -> Kit:
    us = make_node(tmp_path, "us-aisi")
    pin(uk, us)
    pin(us, uk)
    return us


async def post_notice(sender: Kit, receiver: Kit, notice: dict[str, object]) -> tuple[int, Any]:
    body = json.dumps(notice).encode()
    headers = sign(sender, receiver, "POST", NOTICES, body, content_type="application/json")
    async with receiver.client() as client:
        r = await client.post(NOTICES, content=body, headers=headers)
    return r.status_code, r.json()


def refusals(kit: Kit) -> list[str]:
    with kit.node.db.session() as session:
        rows = session.exec(
            select(AuditEntry)
            .where(AuditEntry.kind == "request.refused")
            .order_by(col(AuditEntry.id))
        )
        return [json.loads(e.detail).get("detail", "") for e in rows]


def noticed(kit: Kit) -> int:
    with kit.node.db.session() as session:
        return len(session.exec(select(ReceivedNotice)).all())


async def test_an_access_notice_must_name_the_digest_of_our_artifact(uk: Kit, us: Kit) -> None:
    y = share(uk, b"the UK finding\n" * 100)
    access = {"type": "access", "notice_id": 1, "artifact_id": y.id, "reader": "analyst",
              "read_at": "2030-01-01T00:00:00Z"}  # fmt: skip
    status, problem = await post_notice(us, uk, {**access, "sha256": OTHER})
    assert status == 422, problem
    assert "sha256" in problem["detail"]
    assert any("sha256" in detail for detail in refusals(uk))  # audited
    assert noticed(uk) == 0
    # With the artifact's digest, the receipt states it.
    status, answer = await post_notice(us, uk, {**access, "sha256": y.sha256})
    assert status == 200, answer
    with us.node.db.session() as session:
        trusted = partner_verify_keys(session, "uk-aisi")
    verify_receipt(
        Envelope.from_json(answer["receipt"]), trusted=trusted, expect_kind="access",
        artifact_id=y.id, sha256=y.sha256, receiver="uk-aisi", sender="us-aisi",
    )  # fmt: skip


def test_a_revocation_must_name_the_digest_of_the_artifact_held(uk: Kit, us: Kit) -> None:
    art_id, line, ciphertext = sealed_artifact(us, [uk])
    Receiver(uk.node, sender="us-aisi", via="push").receive(line, io.BytesIO(ciphertext))
    revocation = {"type": "revocation", "notice_id": 1, "artifact_id": art_id, "reason": "x"}
    with pytest.raises(InvalidInputError, match="sha256"):
        notices.accept(uk.node, sender="us-aisi", data={**revocation, "sha256": OTHER})
    with uk.node.db.session() as session:
        held = session.get(Artifact, (art_id, "us-aisi"))
    assert held is not None and held.revoked_at is None and held.blob is not None
    assert uk.node.blobs.exists(held.blob)
    assert noticed(uk) == 0
    notices.accept(uk.node, sender="us-aisi", data={**revocation, "sha256": held.sha256})
    with uk.node.db.session() as session:
        revoked = session.get(Artifact, (art_id, "us-aisi"))
    assert revoked is not None and revoked.revoked_at is not None


def test_a_revocation_of_an_artifact_not_held_is_still_received(uk: Kit, us: Kit) -> None:
    """A revocation can overtake its delivery: there is no digest to compare it with then."""
    notice = {"type": "revocation", "notice_id": 1, "artifact_id": "art_later", "sha256": OTHER,
              "reason": "withdrawn"}  # fmt: skip
    assert notices.accept(uk.node, sender="us-aisi", data=notice)
    assert noticed(uk) == 1
