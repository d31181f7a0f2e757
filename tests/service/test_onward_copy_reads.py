"""Reading a copy this node passed on (onward) is reading the artifact it was made from.

uk-aisi shares with us-aisi, approving onward sharing to ca-aisi; us-aisi passes it on. The copy
us-aisi keeps (sealed to itself too, so that it can send it again) is a ``sent`` row of its own.
A read of it took no read decision, queued no access notice to the UK, and applied neither the
UK's revocation nor the read rule's retention: the same plaintext, read outside the terms that
bind it (found by review). Now it is read as the received artifact: its terms, its obligations,
its audit partner; and not at all once that artifact is no longer held here.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from sqlmodel import select

from service.artifacts import share as sharing
from service.artifacts.terms import ShareTerms
from service.federation.client import PartnerClient
from service.federation.outbox import OutboxWorker
from service.models import Artifact, AuditEntry, Outbox
from service.tokens import Principal, Role
from tests.service.nodekit import Kit, SyncBridge, make_node, pin
from tests.service.test_federation_sync import PortalTransport

CONTENT = b"a green finding\n" * 64


@dataclass
class Passed:
    us: Kit
    upstream: str  # the UK's artifact, received at us-aisi
    copy: str  # us-aisi's onward copy of it, for ca-aisi
    bridge: httpx.Client  # to us-aisi's app


@dataclass
class Shared:
    """uk-aisi's GREEN share, delivered to us-aisi, onward sharing to ca-aisi approved."""

    uk: Kit
    us: Kit
    ca: Kit
    transport: PortalTransport
    upstream: str


def shared_with_us(root: Path) -> Shared:
    uk, us, ca = (make_node(root, n) for n in ("uk-aisi", "us-aisi", "ca-aisi"))
    for a in (uk, us, ca):
        for b in (uk, us, ca):
            if a is not b:
                pin(a, b)
    transport = PortalTransport({k.node.node_id: k.app for k in (uk, us, ca)})
    terms = ShareTerms(
        title="finding", tlp="TLP:GREEN", topics=("evaluation",), purposes=("evaluation",),
        partners=("us-aisi",),
    )  # fmt: skip
    publisher = Principal(token_id="tok_uk", name="uk-publisher", role=Role.PUBLISHER)
    sent = sharing.share_artifact(
        uk.node, uk.node.blobs, terms, io.BytesIO(CONTENT), principal=publisher,
        decisions=sharing.decide_share(uk.node, terms, principal=publisher),
        onward_approved=["ca-aisi"],
    )  # fmt: skip
    client = PartnerClient(uk.node, http=httpx.Client(transport=transport))
    assert OutboxWorker(uk.node, client).run_once()
    return Shared(uk, us, ca, transport, sent.id)


def pass_on(shared: Shared, bridge: httpx.Client) -> httpx.Response:
    """us-aisi's publisher passes the UK's artifact on to ca-aisi."""
    return bridge.post(
        f"/v1/artifacts/{shared.upstream}/share",
        json={"partners": ["ca-aisi"]},
        headers=shared.us.auth(Role.PUBLISHER),
    )


@pytest.fixture
def passed(tmp_path: Path) -> Iterator[Passed]:
    shared = shared_with_us(tmp_path)
    bridge = httpx.Client(transport=SyncBridge(shared.us), base_url="http://us-aisi")
    r = pass_on(shared, bridge)
    assert r.status_code == 201, r.text
    yield Passed(shared.us, shared.upstream, r.json()["id"], bridge)
    bridge.close()
    shared.transport.close()


def _entries(kit: Kit, kind: str) -> list[AuditEntry]:
    with kit.node.db.session() as session:
        return list(session.exec(select(AuditEntry).where(AuditEntry.kind == kind)))


def test_reading_the_copy_is_reading_what_it_was_made_from(passed: Passed) -> None:
    us = passed.us
    r = passed.bridge.get(f"/v1/artifacts/{passed.copy}/content", headers=us.auth(Role.READER))
    assert r.status_code == 200, r.text
    assert r.content == CONTENT
    [read] = [e for e in _entries(us, "read") if e.artifact_id == passed.copy]
    assert read.partner == "uk-aisi"  # decided as a read of the UK's artifact
    assert read.rule  # by its read rule
    assert json.loads(read.detail)["upstream"] == passed.upstream


def test_the_copy_is_not_read_once_the_origin_revoked_what_it_was_made_from(
    passed: Passed,
) -> None:
    us = passed.us
    with us.node.db.engine.begin() as conn:  # the UK's revocation, as its notice records it
        conn.execute(
            sa.update(Artifact.__table__)  # type: ignore[attr-defined]
            .where(sa.column("id") == passed.upstream, sa.column("origin") == "uk-aisi")
            .values(revoked_at=us.node.now())
        )
    r = passed.bridge.get(f"/v1/artifacts/{passed.copy}/content", headers=us.auth(Role.READER))
    assert r.status_code == 410, r.text
    assert r.json()["reason"] == "revoked"
    [denied] = [e for e in _entries(us, "read.denied") if e.artifact_id == passed.copy]
    assert denied.partner == "uk-aisi" and denied.rule == "revoked"


def test_the_copy_is_not_read_once_what_it_was_made_from_is_deleted_here(
    passed: Passed,
) -> None:
    us = passed.us
    with us.node.db.engine.begin() as conn:  # retention deleted the UK's artifact here
        conn.execute(
            sa.update(Artifact.__table__)  # type: ignore[attr-defined]
            .where(sa.column("id") == passed.upstream, sa.column("origin") == "uk-aisi")
            .values(blob=None, deleted_at=us.node.now())
        )
    r = passed.bridge.get(f"/v1/artifacts/{passed.copy}/content", headers=us.auth(Role.READER))
    assert r.status_code == 410, r.text
    assert r.json()["reason"] == "upstream-gone"


def test_a_revocation_during_an_onward_share_stops_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The revoked check came once, before the plaintext was resealed: a revocation arriving
    meanwhile left a copy committed unrevoked, delivered on to the third node (found by
    review). The copy's transaction now looks at its upstream again, locked."""
    from service.federation import onward

    shared = shared_with_us(tmp_path)
    us, upstream = shared.us, shared.upstream
    real = onward.plaintext_chunks

    def revoked_meanwhile(*args: object, **kwargs: object) -> Iterator[bytes]:
        for i, chunk in enumerate(real(*args, **kwargs)):  # type: ignore[arg-type]
            if i == 0:  # the UK's revocation arrives while the copy is being sealed
                with us.node.db.engine.begin() as conn:
                    conn.execute(
                        sa.update(Artifact.__table__)  # type: ignore[attr-defined]
                        .where(sa.column("id") == upstream, sa.column("origin") == "uk-aisi")
                        .values(revoked_at=us.node.now())
                    )
            yield chunk

    monkeypatch.setattr(onward, "plaintext_chunks", revoked_meanwhile)
    with httpx.Client(transport=SyncBridge(us), base_url="http://us-aisi") as bridge:
        r = pass_on(shared, bridge)
    shared.transport.close()
    assert r.status_code == 409, r.text
    assert r.json()["reason"] == "revoked"
    with us.node.db.session() as session:
        copies = session.exec(select(Artifact).where(Artifact.upstream_id == upstream)).all()
        queued = session.exec(select(Outbox).where(Outbox.partner == "ca-aisi")).all()
    assert copies == [] and queued == []
