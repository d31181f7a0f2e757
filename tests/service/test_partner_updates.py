"""What a partner may change about itself by signing a new descriptor with its current key.

A same-key descriptor changed the partner's URL, name and encryption keys with no audit entry,
and could point this node's requests, and the check of its local webhooks, at an address on
this node's side: a local webhook receiver at that address was disabled for good (found by
review). Now every change is on record (``partner.updated``), a move from an outside address to
a loopback, link-local or private one is refused, and a webhook whose address a partner takes is
retried, not disabled at once.
"""

from __future__ import annotations

import dataclasses
import json
from datetime import timedelta
from pathlib import Path

import pytest
from sqlmodel import select

from crypto.descriptor import NodeDescriptor, sign_descriptor
from crypto.dsse import Envelope
from service.errors import PartnerError
from service.models import AuditEntry, Partner
from service.partners import rotate_partner
from tests.service.nodekit import Kit, make_node, pin


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Kit, Kit]:
    uk, us = make_node(tmp_path, "uk-aisi"), make_node(tmp_path, "us-aisi")
    pin(uk, us)
    return uk, us


def announce(uk: Kit, us: Kit, **changes: object) -> Partner:
    """us-aisi's descriptor with ``changes``, signed with its current keys, at uk-aisi."""
    envelope: Envelope = us.node.descriptor()
    current = NodeDescriptor.from_json(json.loads(envelope.payload))
    now = uk.node.now()
    renewed = dataclasses.replace(current, created=now, expires=now + timedelta(days=30), **changes)
    signed = sign_descriptor(renewed, key=us.node.keys.signer)
    with uk.node.db.session() as session:
        row = rotate_partner(
            session, descriptor_bytes=signed.to_bytes(), now=now, actor="partner:us-aisi"
        )
        session.commit()
        session.refresh(row)
        return row


def updates(uk: Kit) -> list[dict[str, object]]:
    with uk.node.db.session() as session:
        rows = session.exec(select(AuditEntry).where(AuditEntry.kind == "partner.updated"))
        return [json.loads(r.detail)["changed"] for r in rows]


def test_a_new_address_signed_with_the_same_key_is_on_record(pair: tuple[Kit, Kit]) -> None:
    uk, us = pair
    row = announce(uk, us, url="https://us.example.org")
    assert row.url == "https://us.example.org"
    assert updates(uk) == [{"url": {"from": "http://us-aisi", "to": "https://us.example.org"}}]


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:9000", "http://localhost:9000", "http://10.0.0.5", "http://[::1]"]
)
def test_a_move_to_this_nodes_side_is_refused(pair: tuple[Kit, Kit], url: str) -> None:
    uk, us = pair
    with pytest.raises(PartnerError, match="an address on this node's side"):
        announce(uk, us, url=url)
    with uk.node.db.session() as session:
        assert session.get(Partner, "us-aisi").url == "http://us-aisi"  # type: ignore[union-attr]
