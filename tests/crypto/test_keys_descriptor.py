"""Keys, fingerprints, DSSE and node descriptors (foundation)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from crypto.descriptor import NodeDescriptor, sign_descriptor, verify_descriptor
from crypto.dsse import Envelope, pae, sign_envelope, verify_envelope
from crypto.errors import MalformedError, VerificationError, VerificationUnavailableError
from crypto.keys import SigningKey, VerifyKey, format_fingerprint, normalize_fingerprint

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


def _seeded(n: int) -> SigningKey:
    return SigningKey(bytes([n]) * 32)


def _descriptor(key: SigningKey, **changes: object) -> NodeDescriptor:
    base = NodeDescriptor(
        node_id="uk-aisi",
        name="UK AI Security Institute",
        url="https://uk.example",
        signing_key=key.public,
        age_recipient="age1example",
        created=NOW,
        expires=NOW + timedelta(days=365),
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def test_fingerprint_is_hex_sha256_of_raw_public_key() -> None:
    key = _seeded(1)
    assert key.fingerprint == hashlib.sha256(key.public.raw).hexdigest()
    assert len(key.fingerprint) == 64


def test_fingerprint_normalization_accepts_human_forms() -> None:
    fp = _seeded(2).fingerprint
    assert normalize_fingerprint(format_fingerprint(fp).upper()) == fp
    assert normalize_fingerprint("SHA256:" + fp) == fp
    with pytest.raises(MalformedError):
        normalize_fingerprint(fp[:-1])
    with pytest.raises(MalformedError):
        normalize_fingerprint("z" * 64)


def test_signing_key_repr_hides_the_seed() -> None:
    key = _seeded(3)
    assert key.seed.hex() not in repr(key)
    assert key.fingerprint[:16] in repr(key)


def test_sign_and_verify_and_reject_tampering() -> None:
    key = _seeded(4)
    sig = key.sign(b"message")
    key.public.verify(sig, b"message")
    with pytest.raises(VerificationError):
        key.public.verify(sig, b"messagE")
    with pytest.raises(MalformedError):
        VerifyKey(b"short")


def test_dsse_envelope_round_trip_and_failures() -> None:
    key, other = _seeded(5), _seeded(6)
    env = sign_envelope("text/plain", b"hello", [key])
    parsed = Envelope.from_bytes(env.to_bytes())
    payload, good = verify_envelope(
        parsed, trusted={key.fingerprint: key.public}, payload_type="text/plain"
    )
    assert payload == b"hello"
    assert good == {key.fingerprint}
    with pytest.raises(VerificationUnavailableError):
        verify_envelope(
            parsed, trusted={other.fingerprint: other.public}, payload_type="text/plain"
        )
    with pytest.raises(VerificationError):
        verify_envelope(parsed, trusted={key.fingerprint: key.public}, payload_type="other")
    forged = Envelope("text/plain", b"hellO", parsed.signatures)
    with pytest.raises(VerificationError):
        verify_envelope(forged, trusted={key.fingerprint: key.public}, payload_type="text/plain")


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"not json", "not valid JSON"),
        (b"[]", "JSON object"),
        (b'{"payload": "aGk=", "payloadType": "t", "signatures": []}', "non-empty"),
        (b'{"payload": "!!", "payloadType": "t", "signatures": [{"sig": "aGk="}]}', "base64"),
        (b'{"payload": "aGl=", "payloadType": "t", "signatures": [{"sig": "aGk="}]}', "canonical"),
    ],
)
def test_dsse_rejects_malformed_envelopes(raw: bytes, message: str) -> None:
    with pytest.raises(MalformedError, match=message):
        Envelope.from_bytes(raw)


def test_pae_matches_spec_example() -> None:
    assert pae("http://example.com/HelloWorld", b"hello world") == (
        b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"
    )


def test_descriptor_verifies_and_pins_by_fingerprint() -> None:
    key = _seeded(7)
    env = sign_descriptor(_descriptor(key), key=key)
    got = verify_descriptor(env, now=NOW, expected_fingerprint=key.fingerprint)
    assert got.node_id == "uk-aisi"
    assert got.fingerprint == key.fingerprint
    with pytest.raises(VerificationError, match="fingerprint mismatch"):
        verify_descriptor(env, now=NOW, expected_fingerprint=_seeded(8).fingerprint)


def test_descriptor_expiry_and_not_yet_valid() -> None:
    key = _seeded(9)
    env = sign_descriptor(_descriptor(key), key=key)
    with pytest.raises(VerificationError, match="expired"):
        verify_descriptor(env, now=NOW + timedelta(days=366))
    with pytest.raises(VerificationError, match="not valid yet"):
        verify_descriptor(env, now=NOW - timedelta(days=1))


def test_descriptor_signed_by_another_key_is_rejected() -> None:
    key, mallory = _seeded(10), _seeded(11)
    env = sign_descriptor(_descriptor(key), key=key)
    forged = Envelope(
        env.payload_type,
        env.payload,
        ((key.fingerprint, mallory.sign(pae(env.payload_type, env.payload))),),
    )
    with pytest.raises(VerificationError):
        verify_descriptor(forged, now=NOW)


def test_descriptor_rejects_unknown_fields_and_bad_node_ids() -> None:
    key = _seeded(12)
    doc = _descriptor(key).to_json()
    for bad, message in [
        ({**doc, "extra": 1}, "unknown descriptor field"),
        ({**doc, "node_id": "UK AISI"}, "node_id"),
        ({**doc, "url": "ftp://x"}, "url"),
        ({**doc, "fingerprint": "00" * 32}, "fingerprint does not match"),
        ({**doc, "expires": doc["created"]}, "expires before"),
    ]:
        env = sign_envelope(
            "application/vnd.entente.node-descriptor+json", json.dumps(bad).encode(), [key]
        )
        with pytest.raises(MalformedError, match=message):
            verify_descriptor(env, now=NOW)


def test_rotated_descriptor_needs_both_signatures() -> None:
    old, new = _seeded(13), _seeded(14)
    rotated = _descriptor(new, previous=old.fingerprint)
    env = sign_descriptor(rotated, key=new, previous_key=old)
    got = verify_descriptor(env, now=NOW, previous=old.public)
    assert got.fingerprint == new.fingerprint
    only_new = Envelope(env.payload_type, env.payload, env.signatures[:1])
    with pytest.raises(VerificationError):
        verify_descriptor(only_new, now=NOW, previous=old.public)
    with pytest.raises(VerificationError, match="does not name"):
        verify_descriptor(env, now=NOW, previous=_seeded(15).public)


def test_descriptor_verifies_with_securesystemslib() -> None:
    """An independent DSSE implementation accepts the descriptor signature."""
    from securesystemslib.dsse import Envelope as SslibEnvelope
    from securesystemslib.signer import SSlibKey

    key = _seeded(16)
    env = sign_descriptor(_descriptor(key), key=key)
    sslib_key = SSlibKey(key.fingerprint, "ed25519", "ed25519", {"public": key.public.raw.hex()})
    theirs = SslibEnvelope.from_dict(env.to_json())
    accepted = theirs.verify([sslib_key], 1)
    assert set(accepted) == {key.fingerprint}
    tampered = SslibEnvelope.from_dict({**env.to_json(), "payload": "e30="})
    from securesystemslib.exceptions import VerificationError as SslibVerificationError

    with pytest.raises(SslibVerificationError):
        tampered.verify([sslib_key], 1)


@pytest.mark.parametrize("year", [1, 500, 999, 2026])
def test_times_of_any_year_survive_their_own_round_trip(year: int) -> None:
    """Descriptors, receipts and policy times are written with four-digit years (glibc's %Y
    writes "500", which RFC 3339 and the parsers here refuse)."""
    from crypto.receipt import Receipt
    from policies._model import format_time

    when = datetime(year, 6, 1, 8, 30, 15, tzinfo=UTC)
    descriptor = _descriptor(_seeded(7), created=when, expires=when + timedelta(days=1))
    assert NodeDescriptor.from_json(descriptor.to_json()) == descriptor
    assert descriptor.to_json()["created"] == f"{year:04d}-06-01T08:30:15Z"
    receipt = Receipt("delivery", "a1", "0" * 64, "us-aisi", "uk-aisi", when)
    assert Receipt.from_json(receipt.to_json()) == receipt
    assert format_time(when) == f"{year:04d}-06-01T08:30:15Z"
    assert format_time(when.replace(microsecond=5)) == f"{year:04d}-06-01T08:30:15.000005Z"
    assert datetime.fromisoformat(format_time(when)[:-1] + "+00:00") == when
