"""`entente init` + `entente serve` as real processes on loopback."""

from __future__ import annotations

import base64
import json
import signal
from pathlib import Path

import httpx
import pytest

from tests.nodes import NodeProcess

pytestmark = pytest.mark.integration


def test_serve_publishes_a_verifiable_descriptor_and_stops_cleanly(tmp_path: Path) -> None:
    from securesystemslib.dsse import Envelope as SslibEnvelope
    from securesystemslib.signer import SSlibKey

    node = NodeProcess(tmp_path / "uk", "uk-aisi")
    node.init("UK AI Security Institute")
    node.start()
    try:
        health = httpx.get(f"{node.url}/healthz")
        assert health.json() == {"status": "ok", "node_id": "uk-aisi"}
        envelope = httpx.get(f"{node.url}/.well-known/entente.json").json()
        descriptor = json.loads(base64.b64decode(envelope["payload"]))
        assert descriptor["node_id"] == "uk-aisi"
        assert descriptor["url"] == node.url
        # An independent DSSE implementation verifies it with the key the descriptor carries.
        raw_key = base64.b64decode(descriptor["signing_key"])
        key = SSlibKey(descriptor["fingerprint"], "ed25519", "ed25519", {"public": raw_key.hex()})
        assert set(SslibEnvelope.from_dict(envelope).verify([key], 1)) == {
            descriptor["fingerprint"]
        }
        missing = httpx.get(f"{node.url}/no/such/route")
        assert missing.status_code == 404
        assert missing.headers["content-type"] == "application/problem+json"
        assert missing.json()["type"] == "urn:entente:problem:not-found"
    finally:
        code = node.stop(signal.SIGTERM)
    assert code == 0
    log = node.log_path.read_text() if node.log_path else ""
    assert "Application shutdown complete" in log
    assert "test passphrase" not in log
