"""Onward sharing between three real nodes: the UK shares with the US, the US passes it on to
Canada where the UK's terms and both MOUs allow it, and is refused where they do not."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.integration.test_federation import upload, wait_for
from tests.nodes import Federation, base_env, run_cli, start_federation

pytestmark = pytest.mark.integration

GREEN = {
    "title": "Evaluation method notes",
    "tlp": "TLP:GREEN",
    "topics": ["evaluation"],
    "purposes": ["evaluation"],
    "partners": ["us-aisi"],
}


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    federation = start_federation(
        tmp_path_factory.mktemp("onward"),
        ENTENTE_SYNC_INTERVAL_SECONDS="0.1",
        ENTENTE_RETRY_BASE_SECONDS="0.2",
        ENTENTE_RETRY_MAX_SECONDS="1",
    )
    yield federation
    federation.stop()


def audit(fed: Federation, node_id: str, kind: str) -> list[dict[str, Any]]:
    db = fed.nodes[node_id].home / "entente.db"
    with sqlite3.connect(db) as conn:
        conn.row_factory = sqlite3.Row
        rows = conn.execute(
            "SELECT * FROM audit_entries WHERE kind = ? ORDER BY id", (kind,)
        ).fetchall()
    return [dict(r) for r in rows]


def share_from_uk(fed: Federation, content: bytes, **meta: Any) -> str:
    uk = fed.nodes["uk-aisi"]
    body, headers = upload({**GREEN, **meta}, content)
    r = httpx.post(
        f"{uk.url}/v1/artifacts",
        content=body,
        headers={**headers, **fed.auth("uk-aisi", "publisher")},
    )
    assert r.status_code == 201, r.text
    art_id: str = r.json()["id"]
    us = fed.nodes["us-aisi"]
    wait_for(
        lambda: (
            httpx.get(
                f"{us.url}/v1/artifacts/{art_id}", headers=fed.auth("us-aisi", "reader")
            ).status_code
            == 200
        ),
        what="delivery to us-aisi",
    )
    return art_id


def onward(fed: Federation, art_id: str, *to: str) -> httpx.Response:
    us = fed.nodes["us-aisi"]
    return httpx.post(
        f"{us.url}/v1/artifacts/{art_id}/share",
        json={"partners": list(to)},
        headers=fed.auth("us-aisi", "publisher"),
    )


def test_onward_share_allowed_verified_read_and_revoked_downstream(fed: Federation) -> None:
    us, ca = fed.nodes["us-aisi"], fed.nodes["ca-aisi"]
    content = b"method notes, fine to pass on to declaration signatories\n" * 200
    art_id = share_from_uk(fed, content, onward_approved=["ca-aisi"])
    # through the CLI, as a US publisher would
    result = run_cli(
        "share-onward", art_id, "--to", "ca-aisi", "--url", us.url, "--json",
        env=base_env(ENTENTE_TOKEN=fed.tokens["us-aisi"]["publisher"]),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    copy = json.loads(result.stdout)
    assert copy["id"] != art_id and copy["origin"] == "us-aisi" and copy["tlp"] == "TLP:GREEN"
    assert copy["policy"]["onward"]["upstream"] == art_id
    assert copy["policy"]["onward"]["origin"] == "uk-aisi"

    def at_ca() -> dict[str, Any] | None:
        r = httpx.get(f"{ca.url}/v1/artifacts/{copy['id']}", headers=fed.auth("ca-aisi", "reader"))
        return r.json() if r.status_code == 200 else None

    got = wait_for(at_ca, what="onward delivery to ca-aisi")
    assert got["origin"] == "us-aisi" and got["sender"] == "us-aisi"
    read = httpx.get(
        f"{ca.url}/v1/artifacts/{copy['id']}/content", headers=fed.auth("ca-aisi", "reader")
    )
    assert read.status_code == 200 and read.content == content
    accepted = [
        a for a in audit(fed, "ca-aisi", "receive.accepted") if a["artifact_id"] == copy["id"]
    ]
    assert len(accepted) == 1
    assert json.loads(accepted[0]["detail"])["origin"] == "uk-aisi"
    assert json.loads(accepted[0]["detail"])["upstream"] == art_id
    assert [a["artifact_id"] for a in audit(fed, "us-aisi", "onward.allowed")] == [copy["id"]]
    status = run_cli(
        "sync", "status", "--url", us.url, "--json",
        env=base_env(ENTENTE_TOKEN=fed.tokens["us-aisi"]["auditor"]),
    )  # fmt: skip
    assert status.returncode == 0, status.stderr
    to_ca = {r["partner"]: r for r in json.loads(status.stdout)}["ca-aisi"]
    assert to_ca["delivered"] >= 1 and to_ca["failing"] == 0 and to_ca["last_contact"]

    # The UK revokes: the US deletes its copy and revokes what it passed on; Canada deletes too.
    uk = fed.nodes["uk-aisi"]
    r = httpx.post(
        f"{uk.url}/v1/artifacts/{art_id}/revoke",
        params={"reason": "withdrawn"},
        headers=fed.auth("uk-aisi", "publisher"),
    )
    assert r.status_code == 200, r.text
    wait_for(lambda: at_ca() is None, what="revocation to reach ca-aisi")
    assert any(a["artifact_id"] == copy["id"] for a in audit(fed, "ca-aisi", "revocation.received"))
    wait_for(
        lambda: any(
            a["artifact_id"] == copy["id"] for a in audit(fed, "us-aisi", "revocation.acknowledged")
        ),
        what="ca-aisi's revocation receipt at us-aisi",
    )


@pytest.mark.parametrize(
    ("meta", "rule", "why"),
    [
        pytest.param({}, "upstream-onward-terms", "not approved", id="originator-not-asked"),
        pytest.param(
            {"onward_approved": ["ca-aisi"], "tlp": "TLP:AMBER"},
            "declaration-only-clear-green",
            "Bletchley Declaration, para 8",
            id="amber-to-declaration-only-partner",
        ),
    ],
)
def test_onward_share_refused(fed: Federation, meta: dict[str, Any], rule: str, why: str) -> None:
    art_id = share_from_uk(fed, b"not for passing on\n" * 50, **meta)
    before = len(audit(fed, "ca-aisi", "receive.accepted"))
    r = onward(fed, art_id, "ca-aisi")
    assert r.status_code == 403, r.text
    problem = r.json()
    assert problem["type"] == "urn:entente:problem:policy-denied"
    assert problem["rule"] == rule
    assert why in json.dumps(problem)
    denied = [a for a in audit(fed, "us-aisi", "onward.denied") if a["artifact_id"] == art_id]
    assert len(denied) == 1 and denied[0]["partner"] == "ca-aisi" and denied[0]["rule"] == rule
    # nothing went out: no new outbox row at the US, nothing new at Canada
    db = fed.nodes["us-aisi"].home / "entente.db"
    with sqlite3.connect(db) as conn:
        sent = conn.execute(
            "SELECT count(*) FROM artifacts WHERE upstream_id = ?", (art_id,)
        ).fetchone()[0]
    assert sent == 0
    assert len(audit(fed, "ca-aisi", "receive.accepted")) == before


def test_onward_share_needs_a_third_node_and_a_received_artifact(fed: Federation) -> None:
    art_id = share_from_uk(fed, b"x" * 100, onward_approved=["ca-aisi"])
    back = onward(fed, art_id, "uk-aisi")
    assert back.status_code == 403 and back.json()["reason"] == "not-third-node"
    assert onward(fed, "art_nosuchthing", "ca-aisi").status_code == 404
