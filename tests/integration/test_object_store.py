"""Two real nodes whose blobs live in a real object store (SeaweedFS, started by the suite), each
under its own prefix of one bucket: share, deliver, read, revoke; then a crash between placing a
blob and committing its row, cleared by the start-up sweep from the journal after a restart.

What is checked in the bucket itself: only ciphertext is stored (the plaintext appears in no
object), every artifact row's blob is an object under its content address, a revoked copy's
object is deleted, and nothing is left under ``<prefix>/tmp/``."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from service import localnet
from service.faults import EXIT_CODE
from tests.integration.test_federation import upload
from tests.nodes import ENTENTE, PASSPHRASE, SCRYPT_WORK_FACTOR, Federation, base_env
from tests.seaweed import BUCKET, SeaweedFS

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ENV = {
    "ENTENTE_SYNC_INTERVAL_SECONDS": "0.2",
    "ENTENTE_RETRY_BASE_SECONDS": "0.2",
    "ENTENTE_RETRY_MAX_SECONDS": "1",
    "ENTENTE_BLOB_ORPHAN_GRACE_SECONDS": "0",  # sweep what a crash left, at once
}


def wait_for(check: Callable[[], Any], what: str, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := check():
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory, seaweedfs: SeaweedFS) -> Iterator[Federation]:
    root = tmp_path_factory.mktemp("s3fed")
    federation = localnet.prepare_nodes(
        root, ("uk-aisi", "us-aisi"), passphrase=PASSPHRASE,
        scrypt_work_factor=SCRYPT_WORK_FACTOR, env=base_env(**ENV), command=(ENTENTE,),
    )  # fmt: skip
    run = root.name
    for node_id, node in federation.nodes.items():
        node.env = base_env(**ENV, **seaweedfs.env(f"{run}/{node_id}"))
    federation.start()
    yield federation
    federation.stop()


def objects(seaweedfs: SeaweedFS, fed: Federation, node_id: str) -> dict[str, bytes]:
    client = seaweedfs.client()
    prefix = fed.nodes[node_id].env["ENTENTE_BLOB_URL"].split("/", 3)[3] + "/"
    listed = client.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", [])
    return {
        o["Key"][len(prefix) :]: client.get_object(Bucket=BUCKET, Key=o["Key"])["Body"].read()
        for o in listed
    }


def blobs(home: Path) -> set[str]:
    with sqlite3.connect(home / "entente.db") as conn:
        return {b for (b,) in conn.execute("SELECT blob FROM artifacts WHERE blob IS NOT NULL")}


def journal(home: Path) -> int:
    with sqlite3.connect(home / "entente.db") as conn:
        return int(conn.execute("SELECT count(*) FROM blobs_in_flight").fetchone()[0])


def keyed(digests: set[str]) -> set[str]:
    return {f"{d[:2]}/{d[2:4]}/{d}" for d in digests}


def test_share_deliver_read_revoke_on_the_object_store(
    fed: Federation, seaweedfs: SeaweedFS
) -> None:
    uk, us = fed.nodes["uk-aisi"], fed.nodes["us-aisi"]
    content = b"finding kept in an object store\n" * 400_000  # 12.8 MB: a multipart upload
    meta = {
        "title": "Object store finding", "tlp": "TLP:AMBER", "topics": ["evaluation"],
        "purposes": ["evaluation"], "partners": ["us-aisi"],
    }  # fmt: skip
    body, headers = upload(meta, content)
    r = httpx.post(
        f"{uk.url}/v1/artifacts", content=body,
        headers={**headers, **fed.auth("uk-aisi", "publisher")}, timeout=120,
    )  # fmt: skip
    assert r.status_code == 201, r.text
    art = r.json()["id"]

    def delivered() -> bool:
        d = httpx.get(f"{uk.url}/v1/artifacts/{art}", headers=fed.auth("uk-aisi", "auditor"))
        return bool(d.json()["deliveries"][0]["state"] == "delivered")

    wait_for(delivered, "the delivery to us-aisi")
    got = httpx.get(
        f"{us.url}/v1/artifacts/{art}/content", headers=fed.auth("us-aisi", "reader"), timeout=120
    )
    assert got.status_code == 200 and got.content == content
    for node in (uk, us):
        stored = objects(seaweedfs, fed, node.node_id)
        assert set(stored) == keyed(blobs(node.home))  # nothing else, nothing under tmp/
        assert all(b"finding kept in an object store" not in data for data in stored.values())
        assert journal(node.home) == 0
    rv = httpx.post(
        f"{uk.url}/v1/artifacts/{art}/revoke", params={"reason": "superseded"},
        headers=fed.auth("uk-aisi", "publisher"),
    )  # fmt: skip
    assert rv.status_code == 200, rv.text
    wait_for(lambda: not blobs(us.home), "the revoked copy's ciphertext to be deleted")
    wait_for(lambda: not objects(seaweedfs, fed, "us-aisi"), "the revoked copy's object")
    assert journal(us.home) == 0


def test_a_crash_between_place_and_commit_is_swept_at_restart(
    fed: Federation, seaweedfs: SeaweedFS
) -> None:
    uk = fed.nodes["uk-aisi"]
    uk.stop()
    uk.env = {**uk.env, "ENTENTE_FAULT_POINT": "share.blob_committed"}
    uk.start()
    meta = {
        "title": "Lost in a crash", "tlp": "TLP:GREEN", "topics": ["evaluation"],
        "purposes": ["evaluation"], "partners": ["us-aisi"],
    }  # fmt: skip
    body, headers = upload(meta, b"crash" * 10_000)
    with pytest.raises(httpx.TransportError):
        httpx.post(
            f"{uk.url}/v1/artifacts", content=body,
            headers={**headers, **fed.auth("uk-aisi", "publisher")}, timeout=60,
        )  # fmt: skip
    assert uk.proc is not None and uk.proc.wait(timeout=60) == EXIT_CODE
    uk.proc = None
    assert journal(uk.home) == 1  # the placed blob, journaled; no row refers to it
    assert set(objects(seaweedfs, fed, "uk-aisi")) - keyed(blobs(uk.home))
    uk.env = {k: v for k, v in uk.env.items() if k != "ENTENTE_FAULT_POINT"}
    uk.start()
    wait_for(lambda: journal(uk.home) == 0, "the start-up sweep")
    assert set(objects(seaweedfs, fed, "uk-aisi")) == keyed(blobs(uk.home))
