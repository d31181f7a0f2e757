"""DSSE: the PAE vector (../shared/vectors/dsse-pae.json) and interop with securesystemslib.

An Entente manifest envelope must verify with securesystemslib's independent DSSE verifier, and an
envelope signed by securesystemslib must verify with ``crypto.dsse``.
"""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime

import pytest
from securesystemslib.dsse import Envelope as SslibEnvelope
from securesystemslib.exceptions import VerificationError as SslibVerificationError
from securesystemslib.signer import CryptoSigner, SSlibKey

from crypto import age, sealed
from crypto.dsse import Envelope, pae, verify_envelope
from crypto.keys import SigningKey, VerifyKey
from tests.support import vectors_dir

pytestmark = pytest.mark.vectors


def test_pae_vector() -> None:
    vector = json.loads((vectors_dir() / "dsse-pae.json").read_text())
    encoded = pae(vector["payloadType"], vector["payload"].encode())
    assert encoded == vector["pae"].encode()


def _sslib_key(key: VerifyKey) -> SSlibKey:
    return SSlibKey(
        keyid=key.fingerprint,
        keytype="ed25519",
        scheme="ed25519",
        keyval={"public": key.raw.hex()},
    )


def _sealed_envelope(signer: SigningKey) -> bytes:
    reader = age.X25519Identity.generate()
    result = sealed.seal(
        io.BytesIO(b"interop"),
        io.BytesIO(),
        artifact_id="dsse-1",
        title="DSSE interop",
        origin="uk-aisi",
        tlp="TLP:GREEN",
        recipients=[sealed.ManifestRecipient("us-aisi", reader.recipient.to_string())],
        signer=signer,
        policy={},
        now=datetime(2026, 1, 2, tzinfo=UTC),
    )
    return result.envelope.to_bytes()


def test_entente_manifest_verifies_with_securesystemslib() -> None:
    signer = SigningKey.generate()
    raw = _sealed_envelope(signer)
    envelope = SslibEnvelope.from_dict(json.loads(raw))
    accepted = envelope.verify([_sslib_key(signer.public)], 1)
    assert list(accepted) == [signer.fingerprint]
    statement = json.loads(envelope.pae().split(b" ", 4)[4])
    assert statement["_type"] == "https://in-toto.io/Statement/v1"


def test_securesystemslib_rejects_a_tampered_entente_manifest() -> None:
    signer = SigningKey.generate()
    data = json.loads(_sealed_envelope(signer))
    data["payloadType"] = "application/json"
    with pytest.raises(SslibVerificationError):
        SslibEnvelope.from_dict(data).verify([_sslib_key(signer.public)], 1)


def test_securesystemslib_envelope_verifies_with_entente() -> None:
    sslib_signer = CryptoSigner.generate_ed25519()
    public = VerifyKey(bytes.fromhex(sslib_signer.public_key.keyval["public"]))
    envelope = SslibEnvelope(
        payload=b'{"hello": "world"}', payload_type="application/vnd.in-toto+json", signatures={}
    )
    envelope.sign(sslib_signer)
    signature = next(iter(envelope.signatures.values()))
    ours = Envelope.from_json(envelope.to_dict())
    payload, good = verify_envelope(
        ours,
        trusted={signature.keyid: public},
        payload_type="application/vnd.in-toto+json",
    )
    assert payload == b'{"hello": "world"}'
    assert good == {signature.keyid}
