"""Three real nodes on loopback: share, deliver, receipt, read, access notice, revoke."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from tests.nodes import Federation, start_federation

pytestmark = pytest.mark.integration


def wait_for(check: Callable[[], Any], timeout: float = 20.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def upload(meta: dict[str, Any], content: bytes) -> tuple[bytes, dict[str, str]]:
    b = "entente-it"
    body = (
        f'--{b}\r\nContent-Disposition: form-data; name="metadata"\r\n\r\n'.encode()
        + json.dumps(meta).encode()
        + f'\r\n--{b}\r\nContent-Disposition: form-data; name="file"; filename="f"\r\n\r\n'.encode()
        + content
        + f"\r\n--{b}--\r\n".encode()
    )
    return body, {"Content-Type": f"multipart/form-data; boundary={b}"}


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    federation = start_federation(
        tmp_path_factory.mktemp("fed"),
        ENTENTE_SYNC_INTERVAL_SECONDS="0.2",
        ENTENTE_RETRY_BASE_SECONDS="0.2",
        ENTENTE_RETRY_MAX_SECONDS="1",
    )
    yield federation
    federation.stop()


def audit_kinds(fed: Federation, node_id: str) -> list[str]:
    db = fed.nodes[node_id].home / "entente.db"
    import sqlite3

    with sqlite3.connect(db) as conn:
        return [r[0] for r in conn.execute("SELECT kind FROM audit_entries ORDER BY id")]


def test_share_deliver_read_notice_revoke(fed: Federation) -> None:
    uk, us = fed.nodes["uk-aisi"], fed.nodes["us-aisi"]
    content = b"joint evaluation finding\n" * 1000
    meta = {
        "title": "Joint evaluation of model X",
        "tlp": "TLP:AMBER",
        "topics": ["evaluation/red-teaming"],
        "purposes": ["evaluation"],
        "partners": ["us-aisi"],
    }
    body, headers = upload(meta, content)
    r = httpx.post(
        f"{uk.url}/v1/artifacts",
        content=body,
        headers={**headers, **fed.auth("uk-aisi", "publisher")},
    )
    assert r.status_code == 201, r.text
    art = r.json()

    def delivered() -> bool:
        d = httpx.get(f"{uk.url}/v1/artifacts/{art['id']}", headers=fed.auth("uk-aisi", "auditor"))
        return d.json()["deliveries"][0]["state"] == "delivered"

    wait_for(delivered, what="delivery to us-aisi")
    got = httpx.get(f"{us.url}/v1/artifacts/{art['id']}", headers=fed.auth("us-aisi", "reader"))
    assert got.status_code == 200
    assert got.json()["direction"] == "received"
    assert got.json()["origin"] == "uk-aisi"
    content_r = httpx.get(
        f"{us.url}/v1/artifacts/{art['id']}/content", headers=fed.auth("us-aisi", "reader")
    )
    assert content_r.status_code == 200
    assert content_r.content == content
    # TLP:AMBER carries `inform`: the UK hears that the US read it.
    wait_for(lambda: "access_notice.received" in audit_kinds(fed, "uk-aisi"), what="access notice")
    # Revoke: the US hides and deletes it, and acknowledges.
    rv = httpx.post(
        f"{uk.url}/v1/artifacts/{art['id']}/revoke",
        params={"reason": "superseded"},
        headers=fed.auth("uk-aisi", "publisher"),
    )
    assert rv.status_code == 200, rv.text
    wait_for(
        lambda: "revocation.acknowledged" in audit_kinds(fed, "uk-aisi"), what="revocation ack"
    )
    hidden = httpx.get(f"{us.url}/v1/artifacts/{art['id']}", headers=fed.auth("us-aisi", "reader"))
    assert hidden.status_code == 410, hidden.text  # Gone, saying when and why
    assert hidden.json()["reason"] == "revoked" and hidden.json()["origin"] == "uk-aisi"
    assert "was revoked by its origin uk-aisi at" in hidden.json()["detail"]
    us_kinds = audit_kinds(fed, "us-aisi")
    assert (
        "receive.accepted" in us_kinds and "read" in us_kinds and "revocation.received" in us_kinds
    )


def test_unsigned_and_forged_federation_requests_are_refused(fed: Federation) -> None:
    uk = fed.nodes["uk-aisi"]
    r = httpx.get(f"{uk.url}/federation/v1/feed")
    assert r.status_code == 401
    assert r.json()["type"] == "urn:entente:problem:unauthorized"
    assert "federation.refused" in audit_kinds(fed, "uk-aisi")
