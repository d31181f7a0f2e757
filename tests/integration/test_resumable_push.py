"""A partner's push of a large artifact, cut mid-body, resumes from what the receiver kept
(issue 18): two real `entente serve` nodes, the receiver behind a :class:`CuttingProxy` (its
URL is the proxy's, on 127.0.0.2; it listens on 127.0.0.1 behind it, as behind a relay).

The second attempt asks how much the receiver holds and sends only the rest, under a signed
``Entente-Resume-Offset``; the receiver verifies the whole and stores the artifact once. A
partial corrupted on the receiver's disk is caught by that verification: the resumed delivery
is refused (audited), the partial discarded, and the next attempt, whole, succeeds."""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from service import localnet
from service.client import Client
from service.federation.setup import prepare_federation
from tests.integration.proxies import CuttingProxy
from tests.integration.test_federation import wait_for
from tests.integration.test_python_client import TERMS
from tests.nodes import PASSPHRASE, SCRYPT_WORK_FACTOR, base_env

pytestmark = pytest.mark.integration

SIZE = 4 << 20  # bytes of the artifact: a large delivery (streamed alone, kept when cut)
CUT = 1 << 20  # bytes of the first push's body that reach the receiver
INBOX = b"POST /federation/v1/inbox "


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[localnet.NodeProcess, localnet.NodeProcess]]:
    """The UK and the US node, running; the US node's URL (pinned by the UK) is a relay's
    address in front of it, where the test puts its proxy."""
    env = base_env(
        ENTENTE_SYNC_INTERVAL_SECONDS="0.2", ENTENTE_RETRY_BASE_SECONDS="0.2",
        ENTENTE_RETRY_MAX_SECONDS="1", ENTENTE_PULL_INTERVAL_SECONDS="3600",
    )  # fmt: skip
    uk = localnet.NodeProcess(tmp_path / "uk-aisi", "uk-aisi", env=dict(env))
    us = localnet.NodeProcess(
        tmp_path / "us-aisi", "us-aisi", env=dict(env), host="127.0.0.2", listen_host="127.0.0.1"
    )
    prepared = prepare_federation(
        {n.node_id: n.url for n in (uk, us)}, root=tmp_path, passphrase=PASSPHRASE,
        scrypt_work_factor=SCRYPT_WORK_FACTOR,
    )  # fmt: skip
    for node in (uk, us):
        node.tokens = dict(prepared[node.node_id].tokens)
    federation = localnet.Federation({"uk-aisi": uk, "us-aisi": us})
    us.host = "127.0.0.1"  # the health probe goes to the node itself, not through the proxy
    try:
        federation.start()
        yield uk, us
    finally:
        federation.stop()


@pytest.fixture
def finding(tmp_path: Path) -> tuple[Path, bytes]:
    """A file of SIZE random bytes to share, and its content."""
    path = tmp_path / "weights-audit.bin"
    content = os.urandom(SIZE)
    path.write_bytes(content)
    return path, content


def _proxy(us: localnet.NodeProcess, hold: threading.Event | None = None) -> CuttingProxy:
    return CuttingProxy(
        us.port, cuts=1, after=CUT, match=INBOX, offset_field=b"entente-resume-offset",
        host="127.0.0.2", port=us.port, hold=hold,
    )  # fmt: skip


def _share(uk: localnet.NodeProcess, path: Path) -> tuple[str, int]:
    """Share ``path`` with the US; (the artifact id, its ciphertext's size)."""
    with Client(uk.url, uk.tokens["publisher"]) as client:
        shared = client.share(path, to=["us-aisi"], title="weights audit", **TERMS)
    assert shared.artifact is not None
    with sqlite3.connect(uk.home / "entente.db") as conn:
        [(size,)] = conn.execute(
            "SELECT ciphertext_size FROM artifacts WHERE id = ?", (shared.id,)
        ).fetchall()
    return shared.id, int(size)


def _delivered(uk: localnet.NodeProcess, artifact_id: str) -> bool:
    got = httpx.get(f"{uk.url}/v1/artifacts/{artifact_id}", headers=uk.auth("auditor")).json()
    return bool(got["deliveries"]) and got["deliveries"][0]["state"] == "delivered"


def _held_once(us: localnet.NodeProcess, artifact_id: str, content: bytes) -> None:
    listed = httpx.get(
        f"{us.url}/v1/artifacts", params={"direction": "received"}, headers=us.auth("auditor")
    ).json()["items"]
    assert [a["id"] for a in listed] == [artifact_id]
    got = httpx.get(f"{us.url}/v1/artifacts/{artifact_id}/content", headers=us.auth("reader"))
    assert got.status_code == 200 and got.content == content


def _kinds(node: localnet.NodeProcess) -> list[tuple[str, str | None]]:
    with sqlite3.connect(node.home / "entente.db") as conn:
        return list(conn.execute("SELECT kind, rule FROM audit_entries ORDER BY id"))


def _partials(us: localnet.NodeProcess) -> list[Path]:
    return sorted((us.home / "partial-in").rglob("*.part"))


def test_a_cut_push_resumes_from_the_receivers_offset(
    pair: tuple[localnet.NodeProcess, localnet.NodeProcess], finding: tuple[Path, bytes]
) -> None:
    uk, us = pair
    path, content = finding
    proxy = _proxy(us)
    try:
        artifact_id, size = _share(uk, path)
        wait_for(lambda: _delivered(uk, artifact_id), 120, "the delivery to us-aisi")
    finally:
        proxy.close()
    # The first push was cut after CUT bytes; the second started where the receiver had stopped.
    assert len(proxy.offsets) == 2, proxy.offsets
    first, resumed = proxy.offsets
    assert first == -1 and 0 < resumed <= CUT
    assert proxy.forwarded[0] >= CUT
    head = proxy.forwarded[1] - (size - resumed)  # the manifest line and its newline
    assert 0 < head < 64 << 10  # the rest of the ciphertext only, and the manifest
    assert proxy.forwarded[1] < size
    _held_once(us, artifact_id, content)
    assert [k for k, _ in _kinds(us)].count("receive.accepted") == 1
    assert _partials(us) == []  # removed once stored


def test_a_corrupted_partial_is_refused_discarded_and_sent_whole_next(
    pair: tuple[localnet.NodeProcess, localnet.NodeProcess], finding: tuple[Path, bytes]
) -> None:
    uk, us = pair
    path, content = finding
    hold = threading.Event()
    proxy = _proxy(us, hold)
    try:
        artifact_id, size = _share(uk, path)
        [partial] = wait_for(lambda: _partials(us), 60, "the receiver's partial")
        wait_for(lambda: len(proxy.offsets) == 2, 60, "the second push (held)")
        time.sleep(0.5)  # the receiver has long noticed the first push's cut
        with partial.open("r+b") as fh:  # one bit flipped on the receiver's disk
            fh.seek(partial.stat().st_size // 2)
            byte = fh.read(1)
            fh.seek(-1, os.SEEK_CUR)
            fh.write(bytes([byte[0] ^ 0x01]))
        hold.set()
        wait_for(lambda: _delivered(uk, artifact_id), 120, "the delivery to us-aisi")
    finally:
        hold.set()
        proxy.close()
    assert len(proxy.offsets) == 3, proxy.offsets
    assert proxy.offsets[0] == -1 and proxy.offsets[1] > 0 and proxy.offsets[2] == -1
    assert proxy.forwarded[2] > size  # the third, whole
    refused = [rule for kind, rule in _kinds(us) if kind == "receive.rejected"]
    assert len(refused) == 1 and "payload failed verification" in (refused[0] or "")
    _held_once(us, artifact_id, content)
    assert _partials(us) == []
