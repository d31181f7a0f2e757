"""Node descriptors with an ML-DSA-65 key and a separate checkpoint key (crypto.descriptor)."""

from __future__ import annotations

import base64
import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from crypto.descriptor import (
    DESCRIPTOR_PAYLOAD_TYPE,
    NodeDescriptor,
    sign_descriptor,
    verify_descriptor,
)
from crypto.dsse import Envelope, sign_envelope
from crypto.errors import MalformedError, VerificationError
from crypto.keys import SigningKey
from crypto.keyset import KeySet, SignerSet
from crypto.mldsa import MLDSASigningKey

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
OLD_ML = MLDSASigningKey(b"\x51" * 32)
OLD = SignerSet(SigningKey(b"\x41" * 32), OLD_ML)
NEW = SignerSet(SigningKey(b"\x42" * 32), MLDSASigningKey(b"\x52" * 32))
CHECKPOINT = SigningKey(b"\x61" * 32)


def descriptor(keys: SignerSet, **changes: Any) -> NodeDescriptor:
    base = NodeDescriptor(
        node_id="uk-aisi",
        name="UK AI Security Institute",
        url="https://uk.example",
        signing_key=keys.ed25519.public,
        mldsa_key=None if keys.mldsa is None else keys.mldsa.public,
        checkpoint_key=CHECKPOINT.public,
        age_recipient="age1example",
        pq_recipient="age1pq1example",
        created=NOW,
        expires=NOW + timedelta(days=365),
    )
    return replace(base, **changes)


def _payload(d: NodeDescriptor) -> bytes:
    return json.dumps(d.to_json(), sort_keys=True, separators=(",", ":")).encode()


def test_a_hybrid_descriptor_round_trips_and_verifies() -> None:
    d = descriptor(OLD)
    data = d.to_json()
    assert base64.b64decode(data["mldsa_key"]) == OLD_ML.public.raw
    assert base64.b64decode(data["checkpoint_key"]) == CHECKPOINT.public.raw
    assert NodeDescriptor.from_json(data) == d
    envelope = sign_descriptor(d, key=OLD)
    assert [k for k, _ in envelope.signatures] == [OLD.fingerprint, OLD_ML.fingerprint]
    got = verify_descriptor(envelope, now=NOW, expected_fingerprint=OLD.fingerprint)
    assert got == d
    assert got.keyset == OLD.public
    assert got.checkpoint_key == CHECKPOINT.public


def test_a_classic_descriptor_writes_no_new_fields() -> None:
    """A node without the new keys stays readable by partners that have not upgraded."""
    d = descriptor(SignerSet(OLD.ed25519), checkpoint_key=None)
    data = d.to_json()
    assert "mldsa_key" not in data and "checkpoint_key" not in data
    envelope = sign_descriptor(d, key=OLD.ed25519)
    assert verify_descriptor(envelope, now=NOW).keyset == KeySet(OLD.ed25519.public)


def test_a_hybrid_descriptor_must_be_signed_by_its_ml_dsa_key() -> None:
    d = descriptor(OLD)
    with pytest.raises(ValueError, match="every key it carries"):
        sign_descriptor(d, key=OLD.ed25519)
    forged = sign_envelope(DESCRIPTOR_PAYLOAD_TYPE, _payload(d), [OLD.ed25519])
    with pytest.raises(VerificationError):
        verify_descriptor(forged, now=NOW)
    # ...and not by a set it does not carry.
    with pytest.raises(ValueError, match="every key it carries"):
        sign_descriptor(d, key=NEW)


def test_rotation_is_signed_by_every_key_of_the_previous_set() -> None:
    rotated = descriptor(NEW, previous=OLD.fingerprint)
    envelope = sign_descriptor(rotated, key=NEW, previous_key=OLD)
    assert len(envelope.signatures) == 4
    got = verify_descriptor(envelope, now=NOW, previous=OLD.public)
    assert got.keyset == NEW.public
    # A lone pinned Ed25519 key (a partner pinned before ML-DSA) still checks its own part.
    assert verify_descriptor(envelope, now=NOW, previous=OLD.ed25519.public) == got
    # Missing the previous set's ML-DSA signature: rejected against the previous set.
    partial = sign_envelope(DESCRIPTOR_PAYLOAD_TYPE, _payload(rotated), [*NEW.signers, OLD.ed25519])
    with pytest.raises(VerificationError):
        verify_descriptor(partial, now=NOW, previous=OLD.public)
    with pytest.raises(VerificationError, match="does not name"):
        verify_descriptor(envelope, now=NOW, previous=NEW.public)


def test_an_ml_dsa_key_kept_across_rotation_signs_once() -> None:
    kept = SignerSet(NEW.ed25519, OLD_ML)
    rotated = descriptor(kept, previous=OLD.fingerprint)
    envelope = sign_descriptor(rotated, key=kept, previous_key=OLD)
    assert len(envelope.signatures) == 3
    assert verify_descriptor(envelope, now=NOW, previous=OLD.public).keyset == kept.public


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"mldsa_key": "not base64!"}, "mldsa_key.*base64"),
        ({"mldsa_key": base64.b64encode(b"\x00" * 32).decode()}, "1952 bytes"),
        ({"mldsa_key": 7}, "mldsa_key.*base64"),
        ({"checkpoint_key": base64.b64encode(b"\x00" * 31).decode()}, "32 bytes"),
        (
            {"checkpoint_key": base64.b64encode(OLD.ed25519.public.raw).decode()},
            "checkpoint key must not be",
        ),
        ({"witness_key": None}, "unknown descriptor field"),
    ],
)
def test_descriptor_key_fields_are_parsed_strictly(change: dict[str, Any], message: str) -> None:
    data = descriptor(OLD).to_json() | change
    with pytest.raises(MalformedError, match=message):
        NodeDescriptor.from_json(data)


def test_an_old_descriptor_without_the_new_fields_still_verifies() -> None:
    key = SigningKey(b"\x43" * 32)
    data = {
        "_type": "https://entente.dev/node-descriptor/v1",
        "node_id": "us-aisi",
        "name": "US",
        "url": "https://us.example",
        "signing_key": base64.b64encode(key.public.raw).decode(),
        "fingerprint": key.fingerprint,
        "age_recipient": "age1example",
        "pq_recipient": None,
        "created": "2026-11-26T12:00:00Z",
        "expires": "2027-11-26T12:00:00Z",
        "previous": None,
    }
    payload = json.dumps(data, sort_keys=True, separators=(",", ":")).encode()
    envelope = Envelope.from_bytes(
        sign_envelope(DESCRIPTOR_PAYLOAD_TYPE, payload, [key]).to_bytes()
    )
    got = verify_descriptor(envelope, now=NOW)
    assert got.mldsa_key is None and got.checkpoint_key is None
    assert got.keyset == KeySet(key.public)
