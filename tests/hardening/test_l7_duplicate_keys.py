"""L7: a signed payload with duplicate JSON object keys is refused, whatever signs it.

Found: a manifest whose payload said ``"tlp": "TLP:RED"`` then ``"tlp": "TLP:GREEN"``, signed by
a pinned partner, was accepted as GREEN (Python's ``json`` keeps the last key; another reader may
keep the first). Every signed payload now goes through ``crypto.strict_json``, which refuses
duplicate keys: DSSE envelopes, manifests, node descriptors, receipts, and notices.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from crypto import strict_json
from crypto.descriptor import DESCRIPTOR_PAYLOAD_TYPE, verify_descriptor
from crypto.dsse import Envelope, sign_envelope
from crypto.errors import MalformedError
from crypto.receipt import RECEIPT_PAYLOAD_TYPE, verify_receipt
from crypto.sealed import MANIFEST_PAYLOAD_TYPE, Manifest
from service.models import Artifact
from tests.hardening.test_bad_input import (
    Bad,
    Env,
    R,
    check_refusal,
    deliver,
    fed_call,
    fresh_manifest,
    sqlite_env,
)

__all__ = ["sqlite_env"]  # the module-scoped trio (SQLite: refused before the database)


def _red_then_green(e: Env) -> bytes:
    """The fresh manifest's payload with its TLP given twice, signed by us-aisi (its origin)."""
    statement = fresh_manifest(e).to_statement()
    statement["predicate"]["tlp"] = "TLP:RED"
    payload = json.dumps(statement, sort_keys=True, separators=(",", ":")).encode()
    doubled = payload.replace(b'"tlp":"TLP:RED"', b'"tlp":"TLP:RED","tlp":"TLP:GREEN"', 1)
    assert doubled != payload
    envelope = sign_envelope(MANIFEST_PAYLOAD_TYPE, doubled, [e.nodes.us.node.keys.signing])
    return json.dumps(json.loads(envelope.to_bytes()), separators=(",", ":")).encode()


def _doubled_envelope_key(line: bytes) -> bytes:
    """An envelope carrying ``payloadType`` twice (its signature untouched)."""
    data = json.loads(line)
    head = json.dumps({"payloadType": "application/x-other"})[:-1]
    return (head + "," + json.dumps(data)[1:]).encode()


async def test_manifest_with_duplicate_tlp_is_refused(sqlite_env: Env) -> None:
    e = sqlite_env
    send = deliver(lambda e: _red_then_green(e) + b"\n" + e.fresh_ciphertext)
    await check_refusal(e, send, Bad(send, 422, "invalid-input", "receive.rejected"))
    with e.uk.node.db.session() as session:
        assert session.get(Artifact, (e.fresh, "us-aisi")) is None, (
            "stored despite its ambiguous TLP"
        )


async def test_envelope_with_duplicate_key_is_refused(sqlite_env: Env) -> None:
    e = sqlite_env
    send = deliver(lambda e: _doubled_envelope_key(e.fresh_manifest) + b"\n" + e.fresh_ciphertext)
    await check_refusal(e, send, Bad(send, 422, "invalid-input", "receive.rejected"))


async def test_notice_and_descriptor_with_duplicate_keys_are_refused(sqlite_env: Env) -> None:
    e = sqlite_env
    notice = b'{"type":"access","notice_id":1,"notice_id":2}'
    send = fed_call("POST", "/federation/v1/notices", notice)
    await check_refusal(e, send, Bad(send, 422, "invalid-input", R))
    descriptor = _doubled_envelope_key(e.nodes.us.node.home.descriptor_envelope().to_bytes())
    send = fed_call("POST", "/federation/v1/descriptor", descriptor)
    await check_refusal(e, send, Bad(send, 422, "invalid-input", R))
    receipts = b'{"receipts":[],"receipts":[]}'
    send = fed_call("POST", "/federation/v1/receipts", receipts)
    await check_refusal(e, send, Bad(send, 422, "invalid-input", R))


def _signed(e: Env, payload_type: str, payload: bytes) -> Envelope:
    return sign_envelope(payload_type, payload, [e.nodes.us.node.keys.signing])


def test_every_signed_payload_parser_refuses_duplicate_keys(sqlite_env: Env) -> None:
    """The crypto parsers themselves, below any route."""
    e = sqlite_env
    us = e.nodes.us.node
    trusted = {us.keys.signing.fingerprint: us.keys.signing.public}
    doubled = b'{"kind":"a","kind":"b"}'
    with pytest.raises(MalformedError):
        Manifest.from_payload(doubled)
    with pytest.raises(MalformedError):
        Envelope.from_bytes(_doubled_envelope_key(_signed(e, "x", b"{}").to_bytes()))
    with pytest.raises(MalformedError):
        verify_receipt(
            _signed(e, RECEIPT_PAYLOAD_TYPE, doubled),
            trusted=trusted,
            expect_kind="a",
            artifact_id="x",
            sha256="0" * 64,
            receiver="uk-aisi",
            sender="us-aisi",
        )
    descriptor = json.loads(us.home.descriptor_envelope().payload)
    text = json.dumps(descriptor, separators=(",", ":"))
    twice = text.replace('"node_id":', '"node_id":"xx-aisi","node_id":', 1).encode()
    with pytest.raises(MalformedError):
        verify_descriptor(_signed(e, DESCRIPTOR_PAYLOAD_TYPE, twice), now=us.now())


@pytest.mark.parametrize(
    "text",
    ['{"a":1,"a":1}', '{"x":{"b":[{"c":1,"c":2}]}}', '[{"k":1},{"k":1,"k":1}]'],
)
def test_loader_refuses_duplicates_at_any_depth(text: str) -> None:
    with pytest.raises(strict_json.StrictJSONError, match="duplicate"):
        strict_json.loads(text)


def test_loader_keeps_distinct_keys() -> None:
    data: Any = strict_json.loads('{"a":1,"b":{"a":2},"c":[{"a":3}]}')
    assert data == {"a": 1, "b": {"a": 2}, "c": [{"a": 3}]}
