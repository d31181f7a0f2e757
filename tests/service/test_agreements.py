"""Signed agreements at two nodes: only terms every party's officer signed are enforced, an
amendment countersigned by one party only changes nothing, a countersigned one takes over at its
stated time, a share the partner's signed terms would refuse never leaves, local files may only
be stricter, and two nodes compare what they hold over the federation API."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlmodel import select

from crypto.agreement import (
    OfficerCertificate,
    SignedAgreement,
    certify_officer,
    draft_agreement,
)
from crypto.dsse import Envelope
from crypto.keys import SigningKey
from crypto.keyset import SignerSet
from crypto.mldsa import MLDSASigningKey
from policies._agreement import Agreement, Terms
from service.errors import InvalidInputError
from service.federation import agreements as exchange
from service.federation.client import PartnerClient
from service.models import AuditEntry
from service.tokens import Role
from tests.service.nodekit import UPLOAD_HEADERS, Kit, make_node, pin, upload_body
from tests.service.test_federation_sync import PortalTransport

TERMS = """\
format: entente.policy/v1
id: {party}.{partner}
version: 1
mou: US-UK MOU [example]
partner: {partner}
valid_from: 2025-01-01
valid_until: 2030-12-31
approved_by:
  - {{name: T. Officer, role: Policy officer, date: 2024-12-01}}
permit:
  - id: share-findings
    clause: MOU §2(a)
    actions: [share]
    tlp: [{tlp}]
    topics: [{topics}]
  - id: receive-findings
    clause: MOU §2(b)
    actions: [receive]
    tlp: [{tlp}]
    topics: [{topics}]
"""
AMBER = "TLP:CLEAR, TLP:GREEN, TLP:AMBER"
GREEN = "TLP:CLEAR, TLP:GREEN"


def terms(party: str, partner: str, tlp: str = AMBER, topics: str = "evaluation") -> Terms:
    text = TERMS.format(party=party, partner=partner, tlp=tlp, topics=topics)
    return Terms(party, partner, f"{partner}.yaml", text)


@dataclass
class Officer:
    keys: SignerSet
    certificate: Envelope


def officer(kit: Kit) -> Officer:
    keys = SignerSet(SigningKey.generate(), MLDSASigningKey.generate())
    now = datetime.now(UTC) - timedelta(minutes=1)
    cert = OfficerCertificate(
        kit.node.node_id, "A. Officer", "Policy officer", keys.public, now, now + timedelta(days=9)
    )
    return Officer(keys, certify_officer(cert, node=kit.node.keys.signer))


@dataclass
class Pair:
    us: Kit
    uk: Kit
    us_officer: Officer
    uk_officer: Officer

    def agreement(
        self,
        version: int = 1,
        *,
        us_tlp: str = AMBER,
        uk_tlp: str = AMBER,
        uk_topics: str = "evaluation",
        previous: Agreement | None = None,
        in_force_from: datetime | None = None,
    ) -> Agreement:
        return Agreement(
            "us-uk-mou",
            version,
            "US-UK MOU [example]",
            ("uk-aisi", "us-aisi"),
            in_force_from or datetime(2025, 1, 1, tzinfo=UTC),
            (
                terms("us-aisi", "uk-aisi", us_tlp),
                terms("uk-aisi", "us-aisi", uk_tlp, uk_topics),
            ),
            previous.sha256 if previous else None,
        )

    def signed(self, agreement: Agreement, *by: Officer) -> SignedAgreement:
        out = draft_agreement(agreement.payload())
        for o in by:
            out = out.with_signature(o.keys, o.certificate)
        return out


@pytest.fixture
def pair(tmp_path: Path) -> Pair:
    us = make_node(tmp_path, "us-aisi", policies=False)
    uk = make_node(tmp_path, "uk-aisi", policies=False)
    pin(us, uk)
    pin(uk, us)
    return Pair(us, uk, officer(us), officer(uk))


def adopt(kit: Kit, signed: SignedAgreement, name: str = "us-uk-mou") -> Any:
    (kit.node.home.policies_dir / f"{name}.agreement.json").write_bytes(signed.to_bytes())
    return kit.node.policies.reload(actor="test", now=kit.node.now())


async def share(kit: Kit, tlp: str, topics: tuple[str, ...] = ("evaluation",)) -> Any:
    meta = {"title": "Eval", "tlp": tlp, "topics": list(topics), "partners": ["uk-aisi"]}
    async with kit.client() as c:
        r = await c.post(
            "/v1/artifacts",
            content=upload_body(json.dumps(meta), b"finding " * 50),
            headers={**UPLOAD_HEADERS, **kit.auth(Role.PUBLISHER)},
        )
    return r.status_code, r.json()


def states(kit: Kit) -> list[tuple[int, str, list[str]]]:
    return [
        (a.version, a.state, [p for p in a.parties if p not in a.signed_by])
        for a in kit.node.policies.agreements
    ]


async def test_terms_signed_by_one_party_only_are_not_enforced(pair: Pair) -> None:
    v1 = pair.agreement()
    adopt(pair.us, pair.signed(v1, pair.us_officer))
    assert states(pair.us) == [(1, "proposed", ["uk-aisi"])]
    status, problem = await share(pair.us, "TLP:GREEN")
    assert status == 403 and problem["reason"] == "no-policy", problem

    adopt(pair.us, pair.signed(v1, pair.us_officer, pair.uk_officer))
    assert states(pair.us) == [(1, "adopted", [])]
    status, body = await share(pair.us, "TLP:AMBER")
    assert status == 201, body


async def test_an_amendment_takes_over_only_countersigned_and_at_its_time(pair: Pair) -> None:
    v1 = pair.agreement()
    adopt(pair.us, pair.signed(v1, pair.us_officer, pair.uk_officer))
    start = pair.us.node.now() + timedelta(days=1)
    v2 = pair.agreement(2, us_tlp=GREEN, previous=v1, in_force_from=start)

    # Signed by the US officer only: the terms in force stay v1's.
    adopt(pair.us, pair.signed(v1, pair.us_officer, pair.uk_officer), "us-uk-mou")
    adopt(pair.us, pair.signed(v2, pair.us_officer), "us-uk-mou-v2")
    assert states(pair.us) == [(2, "proposed", ["uk-aisi"]), (1, "adopted", [])]
    assert (await share(pair.us, "TLP:AMBER"))[0] == 201

    # Countersigned: v1 until v2's in_force_from, v2 after it.
    adopt(pair.us, pair.signed(v2, pair.us_officer, pair.uk_officer), "us-uk-mou-v2")
    assert states(pair.us) == [(1, "superseded", []), (2, "adopted", [])]
    assert (await share(pair.us, "TLP:AMBER"))[0] == 201
    pair.us.node.clock = lambda: start + timedelta(seconds=1)
    status, problem = await share(pair.us, "TLP:AMBER")
    assert status == 403 and problem["reason"] == "no-matching-permit", problem
    assert (await share(pair.us, "TLP:GREEN"))[0] == 201


async def test_an_amendment_must_name_the_signed_version_it_supersedes(pair: Pair) -> None:
    v1 = pair.agreement()
    adopt(pair.us, pair.signed(v1, pair.us_officer, pair.uk_officer))
    stray = pair.agreement(2, us_tlp=GREEN, previous=pair.agreement(uk_tlp=GREEN))
    (pair.us.node.home.policies_dir / "v2.agreement.json").write_bytes(
        pair.signed(stray, pair.us_officer, pair.uk_officer).to_bytes()
    )
    with pytest.raises(Exception, match="does not supersede the signed v1"):
        pair.us.node.policies.reload(actor="test", now=pair.us.node.now())


async def test_a_share_the_partners_signed_terms_refuse_never_leaves(pair: Pair) -> None:
    # The US may share evaluation findings; the UK signed that it receives only policy notes.
    v1 = pair.agreement(uk_topics="policy")
    adopt(pair.us, pair.signed(v1, pair.us_officer, pair.uk_officer))
    status, problem = await share(pair.us, "TLP:GREEN")
    assert status == 403, problem
    assert problem["reason"] == "partner-refuses"
    assert "uk-aisi's signed terms would refuse" in problem["detail"]
    assert "their rule receive-findings (MOU §2(b)) needs" in problem["detail"]
    with pair.us.node.db.session() as session:
        entry = session.exec(select(AuditEntry).where(AuditEntry.kind == "share.denied")).one()
    assert (entry.rule, entry.clause) == ("receive-findings", "MOU §2(b)")


async def test_local_files_may_only_make_signed_terms_stricter(pair: Pair) -> None:
    adopt(pair.us, pair.signed(pair.agreement(), pair.us_officer, pair.uk_officer))
    local = pair.us.node.home.policies_dir / "uk-aisi.yaml"
    local.write_text(TERMS.format(party="us-aisi", partner="uk-aisi", tlp=AMBER, topics="x"))
    with pytest.raises(Exception, match="may only add forbid rules"):
        pair.us.node.policies.reload(actor="test", now=pair.us.node.now())

    local.write_text(
        TERMS.split("permit:")[0].format(party="us-aisi", partner="uk-aisi")
        + "permit: []\nforbid:\n  - id: no-amber-here\n    clause: Local rule\n"
        "    actions: [share]\n    tlp: [TLP:AMBER]\n"
    )
    pair.us.node.policies.reload(actor="test", now=pair.us.node.now())
    status, problem = await share(pair.us, "TLP:AMBER")
    assert status == 403 and problem["rule"] == "no-amber-here", problem
    assert (await share(pair.us, "TLP:GREEN"))[0] == 201


async def test_unsigned_permits_are_refused_when_signed_agreements_are_required(
    tmp_path: Path,
) -> None:
    kit = make_node(tmp_path, "us-aisi", policies=False, signed_agreements_required=True)
    (kit.node.home.policies_dir / "uk-aisi.yaml").write_text(
        TERMS.format(party="us-aisi", partner="uk-aisi", tlp=AMBER, topics="evaluation")
    )
    with pytest.raises(Exception, match="requires signed agreements"):
        kit.node.policies.reload(actor="test", now=kit.node.now())


async def test_a_forged_or_tampered_signature_is_refused_at_adoption(pair: Pair) -> None:
    v1 = pair.agreement()
    good = pair.signed(v1, pair.us_officer, pair.uk_officer)
    other = pair.agreement(us_tlp=GREEN)
    tampered = SignedAgreement(
        Envelope(good.envelope.payload_type, other.payload(), good.envelope.signatures),
        good.officers,
    )
    with pytest.raises(Exception, match="signatures do not verify"):
        adopt(pair.us, tampered)
    # An officer certified by a node that is not the party it claims to be.
    rogue = officer(pair.us)
    cert = OfficerCertificate(
        "uk-aisi", "Mallory", "none", rogue.keys.public,
        datetime.now(UTC) - timedelta(minutes=1), datetime.now(UTC) + timedelta(days=1),
    )  # fmt: skip
    forged = Officer(rogue.keys, certify_officer(cert, node=pair.us.node.keys.signer))
    with pytest.raises(Exception, match="not signed by uk-aisi's keys"):
        adopt(pair.us, pair.signed(v1, pair.us_officer, forged))
    assert pair.us.node.policies.agreements == ()


async def test_reload_over_the_api_names_the_reason(pair: Pair) -> None:
    (pair.us.node.home.policies_dir / "x.agreement.json").write_bytes(b"{}")
    async with pair.us.client() as c:
        r = await c.post("/v1/admin/policies/reload", headers=pair.us.auth(Role.ADMIN))
    assert r.status_code == 422 and r.json()["reason"] == "policy-load", r.text
    assert "not a signed agreement" in r.json()["detail"]
    assert isinstance(InvalidInputError("x"), Exception)


async def test_two_nodes_compare_what_they_hold(pair: Pair) -> None:
    v1 = pair.agreement()
    both = pair.signed(v1, pair.us_officer, pair.uk_officer)
    adopt(pair.us, both)
    transport = PortalTransport({"uk-aisi": pair.uk.app, "us-aisi": pair.us.app})
    try:
        client = PartnerClient(pair.us.node, http=httpx.Client(transport=transport))
        seen = exchange.compare(pair.us.node, "uk-aisi", client)
        assert not seen["same"]
        assert seen["agreements"][0]["here"] == "adopted"
        assert seen["agreements"][0]["there"] == "not held"
        adopt(pair.uk, both)
        seen = exchange.compare(pair.us.node, "uk-aisi", client)
        assert seen["same"], seen
        async with pair.us.client() as c:
            r = await c.get("/v1/admin/agreements", headers=pair.us.auth(Role.AUDITOR))
        assert r.status_code == 200
        assert r.json()["agreements"][0]["state"] == "adopted"
    finally:
        transport.close()
