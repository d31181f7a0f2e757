"""A hybrid DSSE envelope (Ed25519 + ML-DSA-65) checked against the DSSE spec, not our verifier.

The envelope is what ``crypto.sealed.seal`` writes with a signer set. This test rebuilds the PAE by
hand from the DSSE v1 protocol text (``"DSSEv1" SP LEN(type) SP type SP LEN(body) SP body``, with
LEN the ASCII decimal byte length), then:

* verifies the Ed25519 signature with securesystemslib's DSSE implementation (which ignores the
  ML-DSA signature, a key it does not know, as DSSE requires);
* verifies the ML-DSA-65 signature with pyca's ``MLDSA65PublicKey`` directly over that PAE.

Nothing here calls ``crypto.dsse.verify_envelope`` or ``crypto.mldsa``'s verification.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import io
import json
from datetime import UTC, datetime
from typing import Any

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.mldsa import MLDSA65PublicKey
from securesystemslib.dsse import Envelope as SslibEnvelope
from securesystemslib.exceptions import VerificationError as SslibVerificationError
from securesystemslib.signer import SSlibKey

from crypto import age, sealed
from crypto.keys import SigningKey
from crypto.keyset import SignerSet
from crypto.mldsa import MLDSASigningKey

ED = SigningKey.generate()
ML = MLDSASigningKey.generate()
SIGNER = SignerSet(ED, ML)


def _pae_by_hand(payload_type: str, payload: bytes) -> bytes:
    # DSSE protocol v1: PAE(type, body) = "DSSEv1" + SP + LEN(type) + SP + type + SP
    #                                      + LEN(body) + SP + body
    t = payload_type.encode("utf-8")
    return b" ".join([b"DSSEv1", str(len(t)).encode(), t, str(len(payload)).encode(), payload])


def _hybrid_envelope() -> dict[str, Any]:
    reader = age.HybridIdentity.generate()
    result = sealed.seal(
        io.BytesIO(b"long-lived finding"),
        io.BytesIO(),
        artifact_id="dsse-pq-1",
        title="Hybrid DSSE",
        origin="uk-aisi",
        tlp="TLP:RED",
        recipients=[sealed.ManifestRecipient("us-aisi", reader.recipient.to_string())],
        signer=SIGNER,
        policy={},
        now=datetime(2026, 1, 2, tzinfo=UTC),
    )
    data: dict[str, Any] = json.loads(result.envelope.to_bytes())
    return data


def _sslib_envelope(data: dict[str, Any]) -> SslibEnvelope:
    return SslibEnvelope.from_dict(copy.deepcopy(data))  # from_dict consumes its argument


def _sslib_key() -> SSlibKey:
    return SSlibKey(
        keyid=ED.fingerprint,
        keytype="ed25519",
        scheme="ed25519",
        keyval={"public": ED.public.raw.hex()},
    )


def _mldsa_signature(data: dict[str, Any], public_raw: bytes) -> bytes:
    keyid = hashlib.sha256(public_raw).hexdigest()  # the DSSE keyid: hex SHA-256 of the raw key
    (sig,) = [s["sig"] for s in data["signatures"] if s["keyid"] == keyid]
    return base64.b64decode(sig)


def test_the_envelope_carries_one_signature_per_algorithm() -> None:
    data = _hybrid_envelope()
    assert data["payloadType"] == "application/vnd.in-toto+json"
    assert [s["keyid"] for s in data["signatures"]] == [ED.fingerprint, ML.fingerprint]
    assert [len(base64.b64decode(s["sig"])) for s in data["signatures"]] == [64, 3309]
    statement = json.loads(base64.b64decode(data["payload"]))
    assert statement["predicate"]["sealing"] == "mlkem768x25519"


def test_ed25519_part_verifies_with_securesystemslib() -> None:
    data = _hybrid_envelope()
    envelope = _sslib_envelope(data)
    payload = base64.b64decode(data["payload"])
    assert envelope.pae() == _pae_by_hand(data["payloadType"], payload)
    accepted = envelope.verify([_sslib_key()], 1)
    assert list(accepted) == [ED.fingerprint]


def test_ml_dsa_part_verifies_with_pyca_over_the_pae_by_hand() -> None:
    data = _hybrid_envelope()
    public_raw = ML.public.raw
    signature = _mldsa_signature(data, public_raw)
    message = _pae_by_hand(data["payloadType"], base64.b64decode(data["payload"]))
    MLDSA65PublicKey.from_public_bytes(public_raw).verify(signature, message)  # raises if bad


@pytest.mark.parametrize("field", ["payload", "payloadType"])
def test_both_parts_reject_a_tampered_envelope(field: str) -> None:
    data = _hybrid_envelope()
    if field == "payload":
        statement = json.loads(base64.b64decode(data["payload"]))
        statement["predicate"]["tlp"] = "TLP:CLEAR"
        data["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()
    else:
        data["payloadType"] = "application/json"
    with pytest.raises(SslibVerificationError):
        _sslib_envelope(data).verify([_sslib_key()], 1)
    message = _pae_by_hand(data["payloadType"], base64.b64decode(data["payload"]))
    public = MLDSA65PublicKey.from_public_bytes(ML.public.raw)
    with pytest.raises(InvalidSignature):
        public.verify(_mldsa_signature(data, ML.public.raw), message)
