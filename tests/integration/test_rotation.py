"""Key rotation across three real nodes: the UK rotates while the US is up and Canada is down.

The US accepts the new descriptor at once (pushed by ``entente keys rotate``, signed with the
old key it pins); Canada gets it from the UK's delivery worker once it is back. Artifacts signed
with the old key still verify and open on both sides; requests signed with the old key are
refused from then on.
"""

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


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    federation = start_federation(
        tmp_path_factory.mktemp("rotation"),
        ENTENTE_SYNC_INTERVAL_SECONDS="0.1",
        ENTENTE_RETRY_BASE_SECONDS="0.2",
        ENTENTE_RETRY_MAX_SECONDS="1",
    )
    yield federation
    federation.stop()


def query(fed: Federation, node_id: str, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    with sqlite3.connect(fed.nodes[node_id].home / "entente.db") as conn:
        return conn.execute(sql, args).fetchall()


def share(fed: Federation, to: str, content: bytes, title: str) -> str:
    uk = fed.nodes["uk-aisi"]
    meta = {
        "title": title,
        "tlp": "TLP:GREEN",
        "topics": ["evaluation"],
        "purposes": ["evaluation"],
        "partners": [to],
    }
    body, headers = upload(meta, content)
    r = httpx.post(
        f"{uk.url}/v1/artifacts",
        content=body,
        headers={**headers, **fed.auth("uk-aisi", "publisher")},
    )
    assert r.status_code == 201, r.text
    art_id: str = r.json()["id"]
    node = fed.nodes[to]
    wait_for(
        lambda: (
            httpx.get(
                f"{node.url}/v1/artifacts/{art_id}/content", headers=fed.auth(to, "reader")
            ).status_code
            == 200
        ),
        what=f"delivery to {to}",
    )
    return art_id


def read(fed: Federation, node_id: str, art_id: str) -> bytes:
    node = fed.nodes[node_id]
    r = httpx.get(f"{node.url}/v1/artifacts/{art_id}/content", headers=fed.auth(node_id, "reader"))
    assert r.status_code == 200, r.text
    return r.content


def test_rotation_accepted_by_partners_and_old_artifacts_still_verify(fed: Federation) -> None:
    uk, ca = fed.nodes["uk-aisi"], fed.nodes["ca-aisi"]
    old_to_us = share(fed, "us-aisi", b"signed with the old key\n" * 100, "before rotation")
    old_to_ca = share(fed, "ca-aisi", b"also before\n" * 100, "before rotation (ca)")
    old_fp = json.loads(uk.cli("identity", "show", "--json").stdout)["fingerprint"]

    uk.stop()
    ca.stop()
    result = uk.cli("keys", "rotate", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["previous"] == old_fp and report["fingerprint"] != old_fp
    states = {p["partner"]: p["state"] for p in report["partners"]}
    assert states == {"us-aisi": "delivered", "ca-aisi": "pending"}
    new_fp = report["fingerprint"]
    # the US pinned the new key, keeps the old one for verification, and audited it
    assert query(fed, "us-aisi", "SELECT fingerprint FROM partners WHERE node_id = 'uk-aisi'") == [
        (new_fp,)
    ]
    keys = dict(
        query(fed, "us-aisi", "SELECT fingerprint, retired_at FROM partner_keys WHERE node_id = ?",
              "uk-aisi")
    )  # fmt: skip
    assert keys[new_fp] is None and keys[old_fp] is not None
    assert query(fed, "us-aisi", "SELECT count(*) FROM audit_entries WHERE kind = ?",
                 "partner.key_rotated") == [(1,)]  # fmt: skip
    assert (
        query(fed, "uk-aisi", "SELECT count(*) FROM audit_entries WHERE kind = 'key.rotated'")[0][0]
        == 1
    )
    assert (uk.home / "keys" / "retired" / f"{old_fp}.signing.key").is_file()

    uk.start()
    ca.start()
    # Canada gets the descriptor from the UK's worker, signed with the key it still pins.
    wait_for(
        lambda: (
            query(fed, "ca-aisi", "SELECT fingerprint FROM partners WHERE node_id = 'uk-aisi'")
            == [(new_fp,)]
        ),
        what="ca-aisi to accept the rotated descriptor",
    )
    served = httpx.get(f"{uk.url}/.well-known/entente.json").json()
    # signed by every key of the new set and of the retired one: Ed25519 and ML-DSA-65 each
    keyids = {s["keyid"] for s in served["signatures"]}
    assert {new_fp, old_fp} <= keyids and len(keyids) == 4

    new_to_us = share(fed, "us-aisi", b"signed with the new key\n" * 100, "after rotation")
    new_to_ca = share(fed, "ca-aisi", b"after, to ca\n" * 100, "after rotation (ca)")
    # old and new artifacts verify and open at the recipients and at the origin itself
    assert read(fed, "us-aisi", old_to_us) == b"signed with the old key\n" * 100
    assert read(fed, "us-aisi", new_to_us) == b"signed with the new key\n" * 100
    assert read(fed, "ca-aisi", old_to_ca) == b"also before\n" * 100
    assert read(fed, "ca-aisi", new_to_ca) == b"after, to ca\n" * 100
    assert read(fed, "uk-aisi", old_to_us) == b"signed with the old key\n" * 100
    sync = uk.cli("sync", "status", "--json")
    assert sync.returncode == 0, sync.stderr
    rows = {r["partner"]: r for r in json.loads(sync.stdout)}
    assert rows["us-aisi"]["pending"] == 0 and rows["ca-aisi"]["pending"] == 0
    assert rows["us-aisi"]["failing"] == 0 and rows["ca-aisi"]["failing"] == 0
    # An auditor who pinned the old key verifies the whole log, online, across the rotation.
    audit = run_cli(
        "audit", "verify", "--url", uk.url, "--fingerprint", old_fp, "--json",
        "--state", str(uk.home.parent / "auditor-state.json"),
        env=base_env(ENTENTE_TOKEN=fed.tokens["uk-aisi"]["auditor"]),
    )  # fmt: skip
    verdict = json.loads(audit.stdout.strip().splitlines()[-1])
    assert audit.returncode == 0 and verdict["ok"], verdict
    assert verdict["keys"] == [old_fp, new_fp]
