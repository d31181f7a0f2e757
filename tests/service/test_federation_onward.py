"""The onward-sharing chain rules (``service/federation/onward.py``), link by link.

The UK shares with the US (``m0``); the US passes it on to Canada (``m1``, chain ``[m0]``);
Canada may pass it further to Japan (``m2``, chain ``[m0, m1]``). Each case breaks one rule.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from crypto.dsse import Envelope
from crypto.errors import VerificationError
from crypto.sealed import Manifest
from service.federation.onward import onward_allowance, verify_chain
from tests.service.nodekit import Kit, make_node, pin
from tests.service.test_federation_input import sealed_artifact

CONTENT = b"an evaluation finding\n" * 64
SIGNATORIES = ["ca-aisi", "jp-aisi"]


@pytest.fixture
def nodes(tmp_path: Path) -> dict[str, Kit]:
    kits = {n: make_node(tmp_path, n, policies=n != "jp-aisi") for n in
            ("uk-aisi", "us-aisi", "ca-aisi", "jp-aisi")}  # fmt: skip
    for a in kits.values():
        for b in kits.values():
            if a is not b:
                pin(a, b)
    return kits


def decision(partner: str, *onward: list[str], approval: bool = True) -> dict[str, Any]:
    return {
        "partner": partner,
        "effect": "allow",
        "obligations": [
            {"kind": "attribute", "text": "someone"},
            *({"kind": "onward", "to": to, "originator_approval": approval} for to in onward),
        ],
    }


def manifest(line: bytes) -> Manifest:
    return Manifest.from_payload(Envelope.from_json(json.loads(line)).payload)


def link(
    nodes: dict[str, Kit],
    sender: str,
    to: list[str],
    *,
    policy: dict[str, Any],
    chain: tuple[bytes, ...] = (),
    **extra: Any,
) -> bytes:
    extra.setdefault("content", CONTENT)
    _id, line, _ct = sealed_artifact(
        nodes[sender], [nodes[t] for t in to], policy=policy,
        chain=tuple(json.loads(c) for c in chain), **extra,
    )  # fmt: skip
    return line


def m0(nodes: dict[str, Kit], **kw: Any) -> bytes:
    kw.setdefault("policy", {
        "decisions": [decision("us-aisi", SIGNATORIES)], "onward_approved": ["ca-aisi"],
    })  # fmt: skip
    return link(nodes, "uk-aisi", ["us-aisi"], **kw)


def m1(nodes: dict[str, Kit], first: bytes, to: str = "ca-aisi", **kw: Any) -> bytes:
    kw.setdefault("policy", {"decisions": [decision(to)]})
    return link(nodes, "us-aisi", [to], chain=(first,), **kw)


def test_a_permitted_onward_share_verifies(nodes: dict[str, Kit]) -> None:
    first = m0(nodes)
    second = manifest(m1(nodes, first))
    links = verify_chain(nodes["ca-aisi"].node, second)
    assert [m.origin for m in links] == ["uk-aisi", "us-aisi"]
    allowance = onward_allowance(links[:1], "us-aisi")
    assert allowance.permits("ca-aisi") and not allowance.permits("jp-aisi")  # not approved
    assert "approved" in allowance.why_not("jp-aisi")


@pytest.mark.parametrize(
    ("build", "message"),
    [
        pytest.param(
            lambda n: m1(n, m0(n, policy={"decisions": [decision("us-aisi", SIGNATORIES)]})),
            "not approved",
            id="originator-did-not-approve",
        ),
        pytest.param(
            lambda n: m1(
                n,
                m0(
                    n,
                    policy={
                        "decisions": [decision("us-aisi", ["jp-aisi"])],
                        "onward_approved": ["ca-aisi"],
                    },
                ),
            ),
            "allow only jp-aisi",
            id="not-in-the-onward-list",
        ),
        pytest.param(
            lambda n: m1(
                n,
                m0(n, policy={"decisions": [decision("us-aisi")], "onward_approved": ["ca-aisi"]}),
            ),
            "allow only nobody",
            id="no-onward-obligation",
        ),
        pytest.param(
            lambda n: m1(n, m0(n, tlp="TLP:AMBER")),
            "loosens TLP:AMBER to TLP:GREEN",
            id="tlp-loosened",
        ),
        pytest.param(
            lambda n: m1(n, m0(n), content=CONTENT + b"!"),
            "does not hold the upstream plaintext",
            id="other-content",
        ),
        pytest.param(
            lambda n: m1(
                n,
                link(
                    n,
                    "uk-aisi",
                    ["jp-aisi"],
                    policy={
                        "decisions": [decision("us-aisi", SIGNATORIES)],
                        "onward_approved": ["ca-aisi"],
                    },
                ),
            ),
            "was not a recipient",
            id="sharer-never-received-it",
        ),
        pytest.param(
            lambda n: m1(n, m0(n, expires_at=datetime.now(UTC) + timedelta(days=1))),
            "outlives the upstream expiry",
            id="expiry-extended",
        ),
        pytest.param(
            lambda n: m1(n, m0(n, embargo_until=datetime.now(UTC) + timedelta(days=1))),
            "ends the upstream embargo early",
            id="embargo-shortened",
        ),
        pytest.param(
            lambda n: m1(n, m0(n, topics=("evaluation", "personal-data/contacts"))),
            "drops the upstream topics personal-data/contacts",
            id="topic-dropped",
        ),
        pytest.param(
            lambda n: m1(n, m0(n, purposes=("evaluation", "research")), purposes=("research",)),
            "drops the upstream purposes evaluation",
            id="purpose-dropped",
        ),
        pytest.param(
            lambda n: m1(n, m0(n, hybrid=True)),
            "lowers the upstream's post-quantum sealing to classic",
            id="sealing-lowered",
        ),
        pytest.param(
            lambda n: m1(n, m0(n).replace(b'"sig":"', b'"sig":"AAAA', 1)),
            "does not verify",
            id="upstream-signature-forged",
        ),
    ],
)
def test_a_broken_chain_is_refused(nodes: dict[str, Kit], build: Any, message: str) -> None:
    with pytest.raises(VerificationError, match=message):
        verify_chain(nodes["ca-aisi"].node, manifest(build(nodes)))


def test_the_chain_origin_must_be_pinned(nodes: dict[str, Kit], tmp_path: Path) -> None:
    (tmp_path / "elsewhere").mkdir()
    loner = make_node(tmp_path / "elsewhere", "ca-aisi")
    pin(loner, nodes["us-aisi"])  # knows the sharer, not the origin
    with pytest.raises(VerificationError, match="not a pinned partner"):
        verify_chain(loner.node, manifest(m1(nodes, m0(nodes))))


def test_onward_terms_narrow_along_the_chain(nodes: dict[str, Kit]) -> None:
    first = m0(nodes, policy={
        "decisions": [decision("us-aisi", SIGNATORIES)], "onward_approved": SIGNATORIES,
    })  # fmt: skip
    # the US lets Canada pass it on to Japan or France; the UK only ever allowed Japan
    second = m1(nodes, first, policy={
        "decisions": [decision("ca-aisi", ["jp-aisi", "fr-aisi"])],
        "onward": {"decisions": [decision("uk-aisi", ["jp-aisi", "fr-aisi", "ca-aisi"])]},
    })  # fmt: skip
    links = verify_chain(nodes["ca-aisi"].node, manifest(second))
    allowance = onward_allowance(links, "ca-aisi")
    assert allowance.to == frozenset({"jp-aisi"}) and allowance.approval_required
    third = link(
        nodes, "ca-aisi", ["jp-aisi"], policy={"decisions": [decision("jp-aisi")]},
        chain=(first, second),
    )  # fmt: skip
    assert len(verify_chain(nodes["jp-aisi"].node, manifest(third))) == 3
    # a link that rewrites the chain before it is refused
    forged = link(
        nodes, "ca-aisi", ["jp-aisi"], policy={"decisions": [decision("jp-aisi")]},
        chain=(m0(nodes), second),
    )  # fmt: skip
    with pytest.raises(VerificationError):
        verify_chain(nodes["jp-aisi"].node, manifest(forged))
