"""Network rosters: a node joins a network in one step (one digest compared out of band),
existing members take a new version on enough pinned members' signatures, every descriptor is
still checked against its fingerprint, and removal is a version without the member."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlmodel import select

from crypto.dsse import Envelope
from crypto.roster import Member, Roster, sign_roster
from service.errors import PartnerError
from service.models import AuditEntry, Partner
from service.roster import RosterImport, import_roster
from tests.service.nodekit import Kit, make_node, pin


def member(kit: Kit) -> Member:
    return Member(
        kit.node.node_id,
        kit.node.keys.signing.fingerprint,
        json.loads(kit.node.descriptor().to_bytes()),
    )


def roster(*kits: Kit, version: int = 1, previous: Roster | None = None) -> Roster:
    return Roster(
        "aisi-network", version, datetime.now(UTC), tuple(member(k) for k in kits),
        previous.sha256 if previous else None,
    )  # fmt: skip


def signed(r: Roster, *by: Kit) -> bytes:
    envelope: Envelope | None = None
    for kit in by:
        envelope = sign_roster(r, kit.node.keys.signer, onto=envelope)
    assert envelope is not None
    return json.dumps(envelope.to_json()).encode()


def take(kit: Kit, raw: bytes, **options: object) -> RosterImport:
    with kit.node.db.session() as session:
        return import_roster(
            session, raw, node_id=kit.node.node_id, own_keysets=kit.node.keys.keysets,
            now=kit.node.now(), actor="test", **options,  # type: ignore[arg-type]
        )  # fmt: skip


def pinned(kit: Kit) -> list[str]:
    with kit.node.db.session() as session:
        return sorted(p.node_id for p in session.exec(select(Partner)))


@pytest.fixture
def net(tmp_path: Path) -> dict[str, Kit]:
    kits = {n: make_node(tmp_path, n, policies=False) for n in ("aa", "bb", "cc", "dd")}
    for a in ("aa", "bb", "cc"):
        for b in ("aa", "bb", "cc"):
            if a != b:
                pin(kits[a], kits[b])
    return kits


def test_a_node_joins_with_one_digest_compared_out_of_band(net: dict[str, Kit]) -> None:
    r = roster(net["aa"], net["bb"], net["cc"], net["dd"])
    raw = signed(r, net["aa"])
    with pytest.raises(PartnerError, match="pins no member of the roster yet"):
        take(net["dd"], raw)
    with pytest.raises(PartnerError, match="not the roster you were given"):
        take(net["dd"], raw, digest="00" * 32)
    result = take(net["dd"], raw, digest=r.sha256)
    assert result.added == ["aa", "bb", "cc"] and result.trusted_by == "digest"
    assert pinned(net["dd"]) == ["aa", "bb", "cc"]
    with net["dd"].node.db.session() as session:
        kinds = [e.kind for e in session.exec(select(AuditEntry))]
    assert kinds.count("partner.added") == 3 and "roster.imported" in kinds


def test_members_take_a_new_version_on_enough_pinned_signatures(net: dict[str, Kit]) -> None:
    v1 = roster(net["aa"], net["bb"], net["cc"])
    pin(net["aa"], net["dd"])
    v2 = roster(net["aa"], net["bb"], net["cc"], net["dd"], version=2, previous=v1)
    # bb pins aa and cc: a majority of two is both.
    with pytest.raises(PartnerError, match="signed by 1 of the members this node pins"):
        take(net["bb"], signed(v2, net["aa"]))
    assert pinned(net["bb"]) == ["aa", "cc"]
    result = take(net["bb"], signed(v2, net["aa"], net["cc"]))
    assert result.added == ["dd"] and result.unchanged == ["aa", "cc"]
    assert result.trusted_by == "aa, cc"
    # A signature by a member it does not pin does not count.
    assert take(net["cc"], signed(v2, net["aa"], net["bb"], net["dd"])).added == ["dd"]


def test_removal_is_a_version_without_the_member(net: dict[str, Kit]) -> None:
    v2 = roster(net["aa"], net["bb"], version=2, previous=roster(net["aa"], net["bb"], net["cc"]))
    kept = take(net["bb"], signed(v2, net["aa"], net["cc"]))
    assert kept.missing == ["cc"] and pinned(net["bb"]) == ["aa", "cc"]
    gone = take(net["bb"], signed(v2, net["aa"], net["cc"]), remove_missing=True)
    assert gone.removed == ["cc"] and pinned(net["bb"]) == ["aa"]


def test_every_descriptor_is_still_checked_against_its_fingerprint(
    net: dict[str, Kit], tmp_path: Path
) -> None:
    bad = Member("dd", net["cc"].node.keys.signing.fingerprint, member(net["dd"]).descriptor)
    r = Roster("aisi-network", 1, datetime.now(UTC), (member(net["aa"]), bad))
    with pytest.raises(PartnerError, match="roster member dd"):
        take(net["aa"], signed(r, net["bb"], net["cc"]), digest=r.sha256)
    assert pinned(net["aa"]) == ["bb", "cc"]  # nothing pinned: all or nothing
    # A key differing from the pinned one is reported and left alone.
    (tmp_path / "x").mkdir()
    other = make_node(tmp_path / "x", "cc", policies=False)
    r2 = Roster("aisi-network", 1, datetime.now(UTC), (member(net["aa"]), member(other)))
    result = take(net["aa"], signed(r2, net["aa"]), digest=r2.sha256)
    assert result.differs == ["cc"] and pinned(net["aa"]) == ["bb", "cc"]


def test_a_node_outside_the_roster_refuses_it(net: dict[str, Kit]) -> None:
    r = roster(net["aa"], net["bb"])
    with pytest.raises(PartnerError, match="not a member"):
        take(net["dd"], signed(r, net["aa"]), digest=r.sha256)
