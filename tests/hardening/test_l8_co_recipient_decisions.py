"""L8: co-recipients of an artifact read each other's policy decisions and MOU clauses in the
signed manifest.

Now the manifest commits to each recipient's decision with a salted SHA-256 and shows none of
them; each delivery carries its recipient's own decision and salt (its *disclosure*), which the
recipient checks against the commitment. The manifest still binds every decision, and the DSSE
envelope is unchanged (securesystemslib verifies it: tests/conformance).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from crypto.dsse import Envelope
from service.artifacts.rows import delivery_head
from service.models import Artifact
from service.tokens import Role
from tests.hardening.kit import DELIVERY_TYPE, Trio, share, signed, trio


@pytest.fixture
def nodes(tmp_path: Path) -> Trio:
    return trio(tmp_path)


async def _shared(nodes: Trio) -> tuple[dict[str, Any], Artifact]:
    sent = await share(nodes.uk, b"for both", partners=["us-aisi", "ca-aisi"], tlp="TLP:GREEN")
    with nodes.uk.node.db.session() as session:
        row = session.get(Artifact, (sent["id"], "uk-aisi"))
        assert row is not None
    return sent, row


def _texts(value: Any) -> set[str]:
    """Every string in a JSON value (keys and values)."""
    if isinstance(value, dict):
        return set(value) | {t for v in value.values() for t in _texts(v)}
    if isinstance(value, list):
        return {t for v in value for t in _texts(v)}
    return {value} if isinstance(value, str) else set()


def _private(row: Artifact, partner: str) -> set[str]:
    """The strings of ``partner``'s decision that say something: policy ids, rules, clauses."""
    [entry] = [e for e in json.loads(row.policy_ref)["decisions"] if e["partner"] == partner]
    rules = _texts(entry["rules"]) | _texts(entry["policy"])
    return {t for t in rules if len(t) > 12}


async def _deliver(nodes: Trio, head: bytes, ciphertext: bytes) -> httpx.Response:
    body = head + b"\n" + ciphertext
    path = "/federation/v1/inbox"
    headers = signed(nodes.uk.node, nodes.us.node, "POST", path, body, **{
        "Content-Type": DELIVERY_TYPE
    })  # fmt: skip
    async with nodes.us.client() as c:
        return await c.post(path, content=body, headers=headers)


def _ciphertext(nodes: Trio, row: Artifact) -> bytes:
    with nodes.uk.node.blobs.open(row.blob or "") as fh:
        data: bytes = fh.read()
    return data


async def test_the_manifest_shows_no_recipient_another_ones_decision(nodes: Trio) -> None:
    sent, row = await _shared(nodes)
    ca_terms, us_terms = _private(row, "ca-aisi"), _private(row, "us-aisi")
    assert ca_terms and us_terms and ca_terms != us_terms
    statement = json.loads(Envelope.from_bytes(row.manifest.encode()).payload)
    signed_strings = _texts(statement)
    assert not (ca_terms | us_terms) & signed_strings  # no decision is readable in it
    commitments = statement["predicate"]["policy"]["decisions"]
    assert {c["partner"] for c in commitments} == {"us-aisi", "ca-aisi"}
    assert all(set(c) == {"partner", "sha256"} for c in commitments)
    # us-aisi's delivery carries its own decision, and not ca-aisi's.
    head = delivery_head(row, "us-aisi")
    assert not ca_terms & _texts(json.loads(head))
    r = await _deliver(nodes, head, _ciphertext(nodes, row))
    assert r.status_code == 201, r.text
    # What us-aisi keeps and shows its users is its own decision only.
    async with nodes.us.client() as c:
        got = await c.get(f"/v1/artifacts/{sent['id']}", headers=nodes.us.auth(Role.READER))
    assert got.status_code == 200, got.text
    shown = _texts(got.json())
    assert us_terms <= shown
    assert not ca_terms & shown


def _tampered(head: bytes, change: str) -> bytes:
    data = json.loads(head)
    if change == "rules":
        data["disclosure"]["decision"]["rules"] = []
    elif change == "salt":
        data["disclosure"]["salt"] = "00" * 16
    elif change == "missing":
        data = data["manifest"]
    elif change == "other-partner":
        data["disclosure"]["partner"] = "ca-aisi"
    return json.dumps(data, separators=(",", ":")).encode()


@pytest.mark.parametrize("change", ["rules", "salt", "missing", "other-partner"])
async def test_a_disclosure_must_be_the_one_the_manifest_commits_to(
    nodes: Trio, change: str
) -> None:
    _sent, row = await _shared(nodes)
    r = await _deliver(
        nodes, _tampered(delivery_head(row, "us-aisi"), change), _ciphertext(nodes, row)
    )
    assert r.status_code == 422, r.text
    assert r.json()["reason"] == "disclosure"


async def test_another_recipients_disclosure_does_not_fit(nodes: Trio) -> None:
    _sent, row = await _shared(nodes)
    theirs = json.loads(delivery_head(row, "ca-aisi"))
    ours = json.loads(delivery_head(row, "us-aisi"))
    ours["disclosure"] = theirs["disclosure"]
    head = json.dumps(ours, separators=(",", ":")).encode()
    r = await _deliver(nodes, head, _ciphertext(nodes, row))
    assert r.status_code == 422 and r.json()["reason"] == "disclosure", r.text
