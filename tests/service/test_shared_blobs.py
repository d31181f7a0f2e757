"""One blob, several rows: byte-identical ciphertexts share one address in the blob store, so
whatever stops referring to a blob deletes it only when no row refers to it any more.

The attack the tests play: a partner that received artifact Y's ciphertext C (sealed to it and
to us) signs its own manifest for C (its own origin, a new id Z, Y's digest, size and header)
and delivers it to us. Every check passes and Z's row refers to Y's blob; then the partner's
revocation of Z, or a batch bringing Z twice, must not delete Y's ciphertext.
"""

from __future__ import annotations

import dataclasses
import io
import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from crypto.dsse import Envelope
from crypto.sealed import Manifest, sign_manifest
from service.artifacts import retention
from service.artifacts import share as sharing
from service.artifacts.retention_rules import Deletion
from service.artifacts.terms import ShareTerms
from service.federation import notices
from service.federation.receive import Receiver
from service.models import Approval, Artifact
from service.tokens import Principal, Role
from tests.service.nodekit import Kit, make_node, pin

PUBLISHER = Principal(token_id="tok_test", name="tester", role=Role.PUBLISHER)


@pytest.fixture
def uk(tmp_path: Path) -> Kit:
    return make_node(tmp_path, "uk-aisi")


@pytest.fixture
def us(tmp_path: Path, uk: Kit) -> Kit:
    us = make_node(tmp_path, "us-aisi")
    pin(uk, us)
    pin(us, uk)
    return us


def share(uk: Kit, content: bytes) -> Artifact:
    """``uk``'s share of ``content`` with us-aisi (sealed to both)."""
    terms = ShareTerms(
        title="finding", tlp="TLP:GREEN", topics=("evaluation",), purposes=("evaluation",),
        partners=("us-aisi",),
    )  # fmt: skip
    decisions = sharing.decide_share(uk.node, terms, principal=PUBLISHER)
    return sharing.share_artifact(
        uk.node, uk.node.blobs, terms, io.BytesIO(content), principal=PUBLISHER,
        decisions=decisions,
    )  # fmt: skip


def manifest_of(row: Artifact) -> Manifest:
    return Manifest.from_payload(Envelope.from_bytes(row.manifest.encode()).payload)


def forged(us: Kit, manifest: Manifest, artifact_id: str) -> bytes:
    """us-aisi's own signed manifest, as ``artifact_id``, for the ciphertext of ``manifest``."""
    mine = dataclasses.replace(
        manifest, artifact_id=artifact_id, origin="us-aisi", policy={"decisions": []}
    )
    return sign_manifest(mine, us.node.keys.signer).to_bytes()


def ciphertext(kit: Kit, row: Artifact) -> bytes:
    assert row.blob is not None
    with kit.node.blobs.open(row.blob) as f:
        return f.read()


def revoke(kit: Kit, sender: str, artifact_id: str, sha256: str, notice_id: int = 1) -> None:
    notices.accept(
        kit.node,
        sender=sender,
        data={"type": "revocation", "notice_id": notice_id, "artifact_id": artifact_id,
              "sha256": sha256, "reason": "withdrawn"},
    )  # fmt: skip


def stage(receiver: Receiver, head: bytes, data: bytes) -> Any:
    """A delivery checked and staged, ready for :meth:`Receiver.commit`."""
    return receiver.stage(receiver.check(head), io.BytesIO(data))


def get(kit: Kit, artifact_id: str, origin: str) -> Artifact:
    with kit.node.db.session() as session:
        row = session.get(Artifact, (artifact_id, origin))
    assert row is not None
    return row


def test_a_partners_revocation_leaves_the_ciphertext_of_our_share(uk: Kit, us: Kit) -> None:
    y = share(uk, b"the UK finding\n" * 100)
    c = ciphertext(uk, y)
    receiver = Receiver(uk.node, sender="us-aisi", via="push")
    receiver.receive(forged(us, manifest_of(y), "art_z"), io.BytesIO(c))
    assert get(uk, "art_z", "us-aisi").blob == y.blob  # Z refers to Y's blob
    revoke(uk, "us-aisi", "art_z", y.sha256)
    assert get(uk, "art_z", "us-aisi").revoked_at is not None
    assert uk.node.blobs.exists(y.blob or "")  # Y is still ours to deliver
    # The last referrer gone, the blob goes too.
    now = uk.node.now()
    due = retention.Due(y.id, y.origin, y.direction, Deletion("expired", now))
    assert retention.delete_copy(uk.node, due, now=now)
    assert not uk.node.blobs.exists(y.blob or "")


def test_a_batch_bringing_an_id_twice_keeps_a_blob_another_row_holds(uk: Kit, us: Kit) -> None:
    """Z twice, the second carrying C: a repeat of the first (same plaintext, other sealing)."""
    content = b"the UK finding\n" * 100
    y, resealed = share(uk, content), share(uk, content)
    receiver = Receiver(uk.node, sender="us-aisi", via="push")
    batch = [
        stage(receiver, forged(us, manifest_of(resealed), "art_z"), ciphertext(uk, resealed)),
        stage(receiver, forged(us, manifest_of(y), "art_z"), ciphertext(uk, y)),
    ]
    assert [r.created for r in receiver.commit(batch)] == [True, False]
    assert get(uk, "art_z", "us-aisi").blob == resealed.blob
    assert uk.node.blobs.exists(y.blob or "")


def test_a_batch_drops_a_blob_only_once_every_item_is_tried(uk: Kit, us: Kit) -> None:
    """Z twice, the second carrying C, then Q carrying C: no row refers to C when the second Z
    is found a repeat, and Q's row, committed next, does."""
    content = b"the UK finding\n" * 100
    y, resealed = share(uk, content), share(uk, content)
    c = ciphertext(uk, y)
    with uk.node.db.session() as session:  # this node no longer holds Y: C is no one's
        mine = session.get(Artifact, (y.id, y.origin))
        assert mine is not None
        mine.blob = None
        session.add(mine)
    receiver = Receiver(uk.node, sender="us-aisi", via="push")
    batch = [
        stage(receiver, forged(us, manifest_of(resealed), "art_z"), ciphertext(uk, resealed)),
        stage(receiver, forged(us, manifest_of(y), "art_z"), c),
        stage(receiver, forged(us, manifest_of(y), "art_q"), c),
    ]
    assert [r.created for r in receiver.commit(batch)] == [True, False, True]
    assert get(uk, "art_q", "us-aisi").blob == y.blob
    assert uk.node.blobs.exists(y.blob or "")


def test_a_pending_approval_keeps_its_blob(uk: Kit, us: Kit) -> None:
    """A share waiting for its second approver refers to its sealed blob as a row does."""
    y = share(uk, b"the UK finding\n" * 100)
    receiver = Receiver(uk.node, sender="us-aisi", via="push")
    receiver.receive(forged(us, manifest_of(y), "art_z"), io.BytesIO(ciphertext(uk, y)))
    now = uk.node.now()
    with uk.node.db.session() as session:
        mine = session.get(Artifact, (y.id, y.origin))
        assert mine is not None
        mine.blob = None  # only the approval refers to it now, besides Z
        session.add(mine)
        session.add(
            Approval(
                id="apr_test", action="share", requested_by="tok_test", requester_name="tester",
                requester="token:tester", requested_at=now, expires_at=now + timedelta(hours=1),
                payload=json.dumps({}), artifact_id=y.id, blob=y.blob,
            )
        )  # fmt: skip
    revoke(uk, "us-aisi", "art_z", y.sha256)
    assert uk.node.blobs.exists(y.blob or "")
