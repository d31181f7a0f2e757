"""crypto.mldsa keys, crypto.keyset sets, and DSSE's key-set rule (every key of a set signs)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from crypto.dsse import Envelope, pae, sign_envelope, verify_envelope
from crypto.errors import MalformedError, VerificationError, VerificationUnavailableError
from crypto.keys import Signer, SigningKey, Verifier
from crypto.keyset import KeySet, SignerSet, signers_of
from crypto.mldsa import (
    MLDSA65_PUBLIC_KEY_SIZE,
    MLDSA65_SIGNATURE_SIZE,
    MLDSASigningKey,
    MLDSAVerifyKey,
)

TYPE = "application/vnd.entente.test+json"
PAYLOAD = b'{"hello":"world"}'

ED_A = SigningKey(b"\x0a" * 32)
ED_A2 = SigningKey(b"\x0b" * 32)  # the same partner's next Ed25519 key (rotation)
ED_B = SigningKey(b"\x0c" * 32)
ML_A = MLDSASigningKey(b"\x1a" * 32)
ML_A2 = MLDSASigningKey(b"\x1b" * 32)
ML_B = MLDSASigningKey(b"\x1c" * 32)

A = SignerSet(ED_A, ML_A)
A2 = SignerSet(ED_A2, ML_A2)
A_CLASSIC = SignerSet(ED_A)
B = SignerSet(ED_B, ML_B)


# --- ML-DSA-65 keys -----------------------------------------------------------------------------


def test_mldsa_key_shape_matches_the_ed25519_keys() -> None:
    public = ML_A.public
    assert len(public.raw) == MLDSA65_PUBLIC_KEY_SIZE
    assert public.fingerprint == hashlib.sha256(public.raw).hexdigest() == ML_A.fingerprint
    assert MLDSAVerifyKey(public.raw) == public
    assert hash(MLDSAVerifyKey(public.raw)) == hash(public)
    assert ML_A.seed == b"\x1a" * 32
    assert MLDSASigningKey(ML_A.seed).public == public
    signature = ML_A.sign(b"message")
    assert len(signature) == MLDSA65_SIGNATURE_SIZE
    public.verify(signature, b"message")
    assert public.is_valid(signature, b"message")
    assert not public.is_valid(signature, b"messagE")
    assert not ML_B.public.is_valid(signature, b"message")
    with pytest.raises(VerificationError):
        public.verify(signature[:-1], b"message")
    with pytest.raises(VerificationError):
        public.verify(bytes(MLDSA65_SIGNATURE_SIZE), b"message")


def test_mldsa_generate_takes_its_randomness_as_an_argument() -> None:
    drawn: list[int] = []

    def rng(n: int) -> bytes:
        drawn.append(n)
        return b"\x42" * n

    key = MLDSASigningKey.generate(rng=rng)
    assert drawn == [32]
    assert key.seed == b"\x42" * 32
    assert MLDSASigningKey.generate().seed != MLDSASigningKey.generate().seed


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: MLDSAVerifyKey(b"\x00" * 32), "1952 bytes"),
        (lambda: MLDSAVerifyKey(b"\x00" * (MLDSA65_PUBLIC_KEY_SIZE + 1)), "1952 bytes"),
        (lambda: MLDSASigningKey(b"\x00" * 31), "seed is 32 bytes"),
    ],
)
def test_mldsa_keys_refuse_wrong_lengths(make: Callable[[], object], message: str) -> None:
    with pytest.raises(MalformedError, match=message):
        make()


def test_reprs_never_show_secrets() -> None:
    for text in (repr(ML_A), repr(A), repr(A.public), repr(ML_A.public)):
        assert ML_A.seed.hex()[:16] not in text
        assert ED_A.seed.hex()[:16] not in text
    assert ML_A.fingerprint[:16] in repr(ML_A)
    assert ED_A.fingerprint[:16] in repr(A) and ML_A.fingerprint[:16] in repr(A)


def test_sets_name_themselves_by_their_ed25519_key() -> None:
    assert A.fingerprint == A.public.fingerprint == ED_A.fingerprint
    assert A.public == KeySet(ED_A.public, ML_A.public)
    assert A.public.keys == (ED_A.public, ML_A.public)
    assert A.public.post_quantum and not A_CLASSIC.public.post_quantum
    assert signers_of(ED_A) == (ED_A,)
    assert signers_of(A) == (ED_A, ML_A)
    with pytest.raises(TypeError):
        KeySet(ML_A.public)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        SignerSet(ED_A, ED_B)  # type: ignore[arg-type]


# --- DSSE with key sets -------------------------------------------------------------------------


def _envelope(*signers: Signer) -> Envelope:
    return sign_envelope(TYPE, PAYLOAD, signers)


def _forged(envelope: Envelope, keyid: str) -> Envelope:
    """``envelope`` with the signature named ``keyid`` replaced by one over another message."""
    bad = ML_A.sign(pae(TYPE, b"other")) if keyid == ML_A.fingerprint else ED_A.sign(b"x")
    sigs = tuple((k, bad if k == keyid else s) for k, s in envelope.signatures)
    return Envelope(envelope.payload_type, envelope.payload, sigs)


@dataclass(frozen=True)
class Case:
    name: str
    envelope: Callable[[], Envelope]
    keysets: tuple[KeySet, ...]
    verified: tuple[KeySet, ...] = ()
    error: type[Exception] | None = None


CASES = [
    Case("hybrid set, both signed", lambda: _envelope(*A.signers), (A.public,), (A.public,)),
    Case(
        "hybrid set, Ed25519 alone",
        lambda: _envelope(ED_A),
        (A.public,),
        error=VerificationError,
    ),
    Case(
        "hybrid set, ML-DSA alone",
        lambda: _envelope(ML_A),
        (A.public,),
        error=VerificationError,
    ),
    Case(
        "classic set, Ed25519 alone",
        lambda: _envelope(ED_A),
        (A_CLASSIC.public,),
        (A_CLASSIC.public,),
    ),
    Case(
        "classic set ignores the ML-DSA signature it does not know",
        lambda: _envelope(*A.signers),
        (A_CLASSIC.public,),
        (A_CLASSIC.public,),
    ),
    Case(
        "two Ed25519 keys of one partner are no threshold of two",
        lambda: _envelope(ED_A, ED_A2),
        (A.public, A2.public),
        error=VerificationError,
    ),
    Case(
        "an unknown extra signature is ignored",
        lambda: _envelope(*A.signers, *B.signers),
        (A.public,),
        (A.public,),
    ),
    Case(
        "every complete set is reported",
        lambda: _envelope(*A.signers, *A2.signers),
        (A.public, A2.public, B.public),
        (A.public, A2.public),
    ),
    Case(
        "a bad ML-DSA signature by a key of the set fails",
        lambda: _forged(_envelope(*A.signers), ML_A.fingerprint),
        (A.public,),
        error=VerificationError,
    ),
    Case(
        "a bad signature fails even when another set is complete",
        lambda: _forged(_envelope(*A.signers, *B.signers), ED_A.fingerprint),
        (A.public, B.public),
        error=VerificationError,
    ),
    Case(
        "a bad signature by an unknown key is ignored",
        lambda: _forged(_envelope(*A.signers, ED_B), ED_B.fingerprint),
        (A.public,),
        (A.public,),
    ),
    Case(
        "no signature by any key given",
        lambda: _envelope(*B.signers),
        (A.public,),
        error=VerificationUnavailableError,
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_verify_envelope_with_key_sets(case: Case) -> None:
    envelope = Envelope.from_bytes(case.envelope().to_bytes())  # through the wire form
    if case.error is not None:
        with pytest.raises(case.error):
            verify_envelope(envelope, keysets=case.keysets, payload_type=TYPE)
        return
    payload, verified = verify_envelope(envelope, keysets=case.keysets, payload_type=TYPE)
    assert payload == PAYLOAD
    assert verified == case.verified


def test_verify_envelope_refuses_an_empty_rule_and_two_rules() -> None:
    envelope = _envelope(*A.signers)
    with pytest.raises(ValueError, match="at least one key set"):
        verify_envelope(envelope, keysets=[], payload_type=TYPE)
    with pytest.raises(ValueError, match="either"):
        verify_envelope(  # type: ignore[call-overload]
            envelope,
            keysets=[A.public],
            trusted={ED_A.fingerprint: ED_A.public},
            payload_type=TYPE,
        )
    with pytest.raises(VerificationError, match="payloadType"):
        verify_envelope(envelope, keysets=[A.public], payload_type="other")


def test_the_trusted_form_accepts_ml_dsa_keys_too() -> None:
    envelope = _envelope(*A.signers)
    trusted: dict[str, Verifier] = {ED_A.fingerprint: ED_A.public, ML_A.fingerprint: ML_A.public}
    payload, good = verify_envelope(envelope, trusted=trusted, payload_type=TYPE, threshold=2)
    assert payload == PAYLOAD
    assert good == {ED_A.fingerprint, ML_A.fingerprint}


def test_a_hybrid_envelope_carries_one_signature_per_key() -> None:
    envelope = _envelope(*A.signers)
    assert [k for k, _ in envelope.signatures] == [ED_A.fingerprint, ML_A.fingerprint]
    assert [len(s) for _, s in envelope.signatures] == [64, MLDSA65_SIGNATURE_SIZE]
