"""Post-quantum sealing and hybrid signatures in the recipes: crypto.sealing, crypto.sealed,
crypto.receipt."""

from __future__ import annotations

import io
import json
import os
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from crypto import age, sealed
from crypto.dsse import Envelope, sign_envelope
from crypto.errors import (
    MalformedError,
    RecipientsError,
    SealingKindError,
    VerificationError,
    VerificationUnavailableError,
)
from crypto.keys import SigningKey
from crypto.keyset import SignerSet
from crypto.mldsa import MLDSASigningKey
from crypto.receipt import Receipt, sign_receipt, verify_receipt
from crypto.sealing import (
    SEALING_HYBRID,
    SEALING_X25519,
    RecipientKeys,
    choose_recipients,
    sealing_kind,
)
from tests.crypto.test_sealed import ORIGIN_KEY, US, seal_bytes

NOW = datetime(2026, 3, 1, 9, 30, tzinfo=UTC)
ORIGIN_ML = MLDSASigningKey(b"\x31" * 32)
ORIGIN = SignerSet(ORIGIN_KEY, ORIGIN_ML)
ORIGIN_CLASSIC = SignerSet(ORIGIN_KEY)
US_PQ = age.HybridIdentity(b"\x04" * 32)
UK_PQ = age.HybridIdentity(b"\x05" * 32)
US_X = US.recipient.to_string()
US_H = US_PQ.recipient.to_string()
UK_X = age.X25519Identity(b"\x02" * 32).recipient.to_string()
UK_H = UK_PQ.recipient.to_string()


def hybrid_recipients() -> list[sealed.ManifestRecipient]:
    return [sealed.ManifestRecipient("us-aisi", US_H), sealed.ManifestRecipient("uk-aisi", UK_H)]


# --- choosing the kind --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("candidates", "kind", "chosen"),
    [
        (
            [RecipientKeys("us-aisi", US_X, US_H), RecipientKeys("uk-aisi", UK_X, UK_H)],
            SEALING_HYBRID,
            (("us-aisi", US_H), ("uk-aisi", UK_H)),
        ),
        (
            [RecipientKeys("us-aisi", US_X, US_H), RecipientKeys("uk-aisi", UK_X)],
            SEALING_X25519,
            (("us-aisi", US_X), ("uk-aisi", UK_X)),
        ),
        (
            [RecipientKeys("us-aisi", US_X), RecipientKeys("uk-aisi", UK_X)],
            SEALING_X25519,
            (("us-aisi", US_X), ("uk-aisi", UK_X)),
        ),
        ([RecipientKeys("uk-aisi", UK_X, UK_H)], SEALING_HYBRID, (("uk-aisi", UK_H),)),
    ],
    ids=["all-hybrid", "one-classic-node", "all-classic", "self-only"],
)
def test_choose_recipients(
    candidates: list[RecipientKeys], kind: str, chosen: tuple[tuple[str, str], ...]
) -> None:
    choice = choose_recipients(candidates)
    assert choice.kind == kind
    assert choice.recipients == chosen
    assert choice.post_quantum == (kind == SEALING_HYBRID)
    assert sealing_kind(r for _, r in choice.recipients) == kind


@pytest.mark.parametrize(
    ("make", "error"),
    [
        (lambda: choose_recipients([]), MalformedError),
        (lambda: RecipientKeys("us-aisi", US_H), SealingKindError),
        (lambda: RecipientKeys("us-aisi", US_X, UK_X), SealingKindError),
        (lambda: sealing_kind([US_X, UK_H]), SealingKindError),
        (lambda: sealing_kind([]), MalformedError),
        (lambda: sealing_kind(["age1notarecipient"]), MalformedError),
    ],
    ids=["none", "hybrid-as-x25519", "x25519-as-hybrid", "mix", "empty", "garbage"],
)
def test_sealing_kind_errors(make: Any, error: type[Exception]) -> None:
    with pytest.raises(error):
        make()


# --- seal ---------------------------------------------------------------------------------------


def test_seal_to_hybrid_recipients_says_so_and_opens_with_a_hybrid_identity() -> None:
    data = os.urandom(100_000)
    result, ciphertext = seal_bytes(data, recipients=hybrid_recipients(), signer=ORIGIN)
    assert result.manifest.sealing == SEALING_HYBRID
    statement = json.loads(result.envelope.payload)
    assert statement["predicate"]["sealing"] == "mlkem768x25519"
    header = age.read_header(io.BytesIO(ciphertext))
    assert [s.type for s in header.stanzas] == ["mlkem768x25519"] * 2
    out = io.BytesIO()
    manifest = sealed.open_sealed(
        io.BytesIO(ciphertext),
        out,
        envelope=result.envelope,
        identities=[US_PQ],
        keysets=[ORIGIN.public],
        origin="uk-aisi",
    )
    assert out.getvalue() == data
    assert manifest == result.manifest
    assert sealed.verify(result.envelope, keysets=[ORIGIN.public], ciphertext=ciphertext)


def test_seal_to_x25519_recipients_says_x25519() -> None:
    result, _ = seal_bytes(b"classic")
    assert result.manifest.sealing == SEALING_X25519
    assert json.loads(result.envelope.payload)["predicate"]["sealing"] == "x25519"


def test_seal_refuses_a_mix_before_writing_anything() -> None:
    sink = io.BytesIO()
    mixed = [sealed.ManifestRecipient("us-aisi", US_H), sealed.ManifestRecipient("uk-aisi", UK_X)]
    with pytest.raises(SealingKindError, match="cannot be mixed") as caught:
        sealed.seal(
            io.BytesIO(b"x"),
            sink,
            artifact_id="art-1",
            title="Mixed",
            origin="uk-aisi",
            tlp="TLP:RED",
            recipients=mixed,
            signer=ORIGIN,
            policy={},
            now=NOW,
        )
    assert isinstance(caught.value, MalformedError)
    assert isinstance(caught.value, RecipientsError)
    assert isinstance(caught.value, ValueError)
    assert sink.getvalue() == b""


def _statement(result: sealed.Sealed) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(result.envelope.payload)
    return data


def test_the_sealing_field_is_checked_against_the_recipients() -> None:
    classic, _ = seal_bytes(b"x")
    claims_pq = _statement(classic)
    claims_pq["predicate"]["sealing"] = "mlkem768x25519"
    with pytest.raises(MalformedError, match="lists a recipient of another kind"):
        sealed.Manifest.from_statement(claims_pq)
    hybrid, _ = seal_bytes(b"x", recipients=hybrid_recipients())
    claims_classic = _statement(hybrid)
    claims_classic["predicate"]["sealing"] = "x25519"
    with pytest.raises(MalformedError, match="another kind"):
        sealed.Manifest.from_statement(claims_classic)
    unknown = _statement(hybrid)
    unknown["predicate"]["sealing"] = "kyber"
    with pytest.raises(MalformedError, match="sealing kind"):
        sealed.Manifest.from_statement(unknown)
    with pytest.raises(SealingKindError):
        replace(classic.manifest, sealing=SEALING_HYBRID)


def test_a_manifest_from_before_the_sealing_field_parses_as_x25519() -> None:
    result, _ = seal_bytes(b"old")
    old = _statement(result)
    del old["predicate"]["sealing"]
    manifest = sealed.Manifest.from_statement(old)
    assert manifest.sealing == SEALING_X25519
    assert replace(manifest, sealing=SEALING_X25519) == result.manifest
    # Signed by the old code (no field), it still verifies.
    payload = json.dumps(old, sort_keys=True, separators=(",", ":")).encode()
    envelope = sign_envelope(sealed.MANIFEST_PAYLOAD_TYPE, payload, [ORIGIN_KEY])
    assert sealed.verify_manifest(envelope, keysets=[ORIGIN_CLASSIC.public]).sealing == "x25519"


# --- hybrid manifest signatures -----------------------------------------------------------------


def test_a_hybrid_manifest_verifies_only_with_both_signatures() -> None:
    result, _ = seal_bytes(b"signed twice", signer=ORIGIN)
    keyids = [k for k, _ in result.envelope.signatures]
    assert keyids == [ORIGIN_KEY.fingerprint, ORIGIN_ML.fingerprint]
    assert sealed.verify_manifest(result.envelope, keysets=[ORIGIN.public]) == result.manifest
    ed_only = Envelope(
        result.envelope.payload_type, result.envelope.payload, result.envelope.signatures[:1]
    )
    with pytest.raises(VerificationError):
        sealed.verify_manifest(ed_only, keysets=[ORIGIN.public])
    # A partner that has not advertised ML-DSA is still verified on Ed25519 alone.
    assert sealed.verify_manifest(ed_only, keysets=[ORIGIN_CLASSIC.public]) == result.manifest
    # The older trusted= form keeps working for callers not moved yet.
    trusted = {ORIGIN_KEY.fingerprint: ORIGIN_KEY.public}
    assert sealed.verify_manifest(result.envelope, trusted=trusted) == result.manifest
    with pytest.raises(ValueError, match="either"):
        sealed.verify_manifest(result.envelope, trusted=trusted, keysets=[ORIGIN.public])
    with pytest.raises(ValueError, match="either"):
        sealed.verify_manifest(result.envelope)


def test_a_retired_key_set_verifies_only_what_it_signed_before_retiring() -> None:
    result, _ = seal_bytes(b"x", signer=ORIGIN)
    retired_after = {ORIGIN.fingerprint: NOW + timedelta(seconds=1)}
    retired_before = {ORIGIN.fingerprint: NOW}
    ok = sealed.verify_manifest(result.envelope, keysets=[ORIGIN.public], retired=retired_after)
    assert ok == result.manifest
    with pytest.raises(VerificationError, match="retired"):
        sealed.verify_manifest(result.envelope, keysets=[ORIGIN.public], retired=retired_before)


def test_a_manifest_by_another_node_is_unavailable_not_bad() -> None:
    other = SignerSet(SigningKey(b"\x77" * 32), MLDSASigningKey(b"\x78" * 32))
    result, _ = seal_bytes(b"x", signer=other)
    with pytest.raises(VerificationUnavailableError):
        sealed.verify_manifest(result.envelope, keysets=[ORIGIN.public])


# --- receipts -----------------------------------------------------------------------------------

RECEIPT = Receipt(
    kind="delivery",
    artifact_id="art-1",
    sha256="ab" * 32,
    receiver="us-aisi",
    sender="uk-aisi",
    received_at=NOW,
)
EXPECT: dict[str, Any] = {
    "expect_kind": "delivery",
    "artifact_id": "art-1",
    "sha256": "ab" * 32,
    "receiver": "us-aisi",
    "sender": "uk-aisi",
}


def test_receipts_signed_by_a_set_verify_against_key_sets() -> None:
    envelope = sign_receipt(RECEIPT, key=ORIGIN)
    assert len(envelope.signatures) == 2
    assert verify_receipt(envelope, keysets=[ORIGIN.public], **EXPECT) == RECEIPT
    classic = sign_receipt(RECEIPT, key=ORIGIN_KEY)
    with pytest.raises(VerificationError):
        verify_receipt(classic, keysets=[ORIGIN.public], **EXPECT)
    assert verify_receipt(classic, keysets=[ORIGIN_CLASSIC.public], **EXPECT) == RECEIPT
    trusted = {ORIGIN_KEY.fingerprint: ORIGIN_KEY.public}
    assert verify_receipt(classic, trusted=trusted, **EXPECT) == RECEIPT
    with pytest.raises(ValueError, match="either"):
        verify_receipt(envelope, **EXPECT)


# --- the reader's own stanza first --------------------------------------------------------------


class _Attempts:
    """An identity that records each stanza it is offered, in order, then unwraps as ``inner``."""

    def __init__(self, inner: age.HybridIdentity) -> None:
        self.inner = inner
        self.offered: list[Any] = []

    def unwrap(self, stanzas: Any) -> bytes | None:
        for stanza in stanzas:
            self.offered.append(stanza)
            key = self.inner.unwrap([stanza])
            if key is not None:
                return key
        return None


FIVE = [f"n{i}-aisi" for i in range(5)]
FIVE_IDS = [age.HybridIdentity(bytes([0x40 + i]) * 32) for i in range(5)]


@pytest.mark.parametrize(
    ("identity", "reader", "tried"),
    [
        (3, "n3-aisi", [3]),  # its own place: one attempt (four before the hint)
        (3, None, [0, 1, 2, 3]),  # no hint: header order
        (3, "somebody-else", [0, 1, 2, 3]),  # a reader the manifest does not name
        (1, "n3-aisi", [3, 0, 1]),  # a wrong hint still opens: the others follow
    ],
)
def test_the_reader_s_own_stanza_is_tried_first(
    identity: int, reader: str | None, tried: list[int]
) -> None:
    data = os.urandom(5000)
    recipients = [
        sealed.ManifestRecipient(name, ident.recipient.to_string())
        for name, ident in zip(FIVE, FIVE_IDS, strict=True)
    ]
    result, ciphertext = seal_bytes(data, recipients=recipients, signer=ORIGIN)
    stanzas = age.read_header(io.BytesIO(ciphertext)).stanzas
    spy = _Attempts(FIVE_IDS[identity])
    out = io.BytesIO()
    sealed.open_sealed(
        io.BytesIO(ciphertext),
        out,
        envelope=result.envelope,
        identities=[spy],  # type: ignore[list-item]
        keysets=[ORIGIN.public],
        reader=reader,
    )
    assert out.getvalue() == data
    assert spy.offered == [stanzas[i] for i in tried]
