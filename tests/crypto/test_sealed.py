"""crypto.sealed: the manifest, seal/verify/open_sealed, and the all-or-nothing file opener."""

from __future__ import annotations

import hashlib
import io
import json
import os
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from crypto import age, sealed
from crypto.dsse import Envelope, sign_envelope
from crypto.errors import (
    MalformedError,
    NoIdentityMatchError,
    VerificationError,
    VerificationUnavailableError,
)
from crypto.keys import SigningKey
from service import files
from tests.crypto.test_age_keys import counting_rng

NOW = datetime(2026, 3, 1, 9, 30, tzinfo=UTC)
ORIGIN_KEY = SigningKey(b"\x11" * 32)
OTHER_KEY = SigningKey(b"\x22" * 32)
TRUSTED = {ORIGIN_KEY.fingerprint: ORIGIN_KEY.public}
US = age.X25519Identity(b"\x01" * 32)
UK = age.X25519Identity(b"\x02" * 32)
CA = age.X25519Identity(b"\x03" * 32)
POLICY = {
    "decisions": [{"partner": "us-aisi", "policy": "us-uk", "version": 3, "sha256": "ab" * 32}]
}


def recipients(*pairs: tuple[str, age.X25519Identity | age.HybridIdentity]) -> list[Any]:
    return [sealed.ManifestRecipient(node, ident.recipient.to_string()) for node, ident in pairs]


def seal_bytes(data: bytes, **overrides: Any) -> tuple[sealed.Sealed, bytes]:
    kwargs: dict[str, Any] = {
        "artifact_id": "art-0001",
        "title": "Evaluation results, model X",
        "origin": "uk-aisi",
        "tlp": "TLP:AMBER",
        "topics": ["evaluations", "cyber"],
        "purposes": ["research/safety"],
        "recipients": recipients(("us-aisi", US), ("uk-aisi", UK)),
        "signer": ORIGIN_KEY,
        "policy": POLICY,
        "now": NOW,
        "embargo_until": NOW + timedelta(days=7),
        "expires_at": None,
    }
    kwargs.update(overrides)
    sink = io.BytesIO()
    result = sealed.seal(io.BytesIO(data), sink, **kwargs)
    return result, sink.getvalue()


def test_seal_then_open_round_trip() -> None:
    data = os.urandom(200_000)
    result, ciphertext = seal_bytes(data)
    assert result.sha256 == hashlib.sha256(data).hexdigest()
    assert result.size == len(data)
    assert result.ciphertext_size == len(ciphertext)
    header = age.read_header(io.BytesIO(ciphertext))
    assert result.header_sha256 == header.sha256 == result.manifest.age_header_sha256
    for identity in (US, UK):
        out = io.BytesIO()
        manifest = sealed.open_sealed(
            io.BytesIO(ciphertext),
            out,
            envelope=result.envelope,
            identities=[identity],
            trusted=TRUSTED,
        )
        assert out.getvalue() == data
        assert manifest == result.manifest


def test_the_manifest_is_an_in_toto_statement_signed_with_dsse() -> None:
    result, _ = seal_bytes(b"finding")
    assert result.envelope.payload_type == "application/vnd.in-toto+json"
    assert result.envelope.signatures[0][0] == ORIGIN_KEY.fingerprint
    statement = json.loads(result.envelope.payload)
    assert statement["_type"] == "https://in-toto.io/Statement/v1"
    assert statement["subject"] == [
        {"name": "art-0001", "digest": {"sha256": hashlib.sha256(b"finding").hexdigest()}}
    ]
    assert statement["predicateType"] == "https://entente.dev/artifact-manifest/v1"
    predicate = statement["predicate"]
    assert predicate["created"] == "2026-03-01T09:30:00Z"
    assert predicate["embargo_until"] == "2026-03-08T09:30:00Z"
    assert predicate["expires_at"] is None
    assert predicate["tlp"] == "TLP:AMBER"
    assert predicate["policy"] == POLICY
    assert predicate["size"] == len(b"finding")
    assert predicate["chain"] == []
    assert predicate["recipients"][0] == {
        "node_id": "us-aisi",
        "recipient": US.recipient.to_string(),
    }


def test_seal_is_deterministic_given_now_and_rng() -> None:
    one = seal_bytes(b"same" * 1000, rng=counting_rng())
    two = seal_bytes(b"same" * 1000, rng=counting_rng())
    assert one[1] == two[1]
    assert one[0].envelope == two[0].envelope
    assert seal_bytes(b"same" * 1000)[1] != one[1]


def test_progress_is_reported_up_to_the_size() -> None:
    seen: list[int] = []
    data = os.urandom(3 * 1024 * 1024 + 5)
    result, _ = seal_bytes(data, on_progress=seen.append)
    assert seen == sorted(seen)
    assert seen[-1] == len(data) == result.size


def test_hybrid_recipients_seal_and_open() -> None:
    pq_us, pq_uk = age.HybridIdentity.generate(), age.HybridIdentity.generate()
    result, ciphertext = seal_bytes(
        b"pq finding", recipients=recipients(("us-aisi", pq_us), ("uk-aisi", pq_uk))
    )
    out = io.BytesIO()
    sealed.open_sealed(
        io.BytesIO(ciphertext), out, envelope=result.envelope, identities=[pq_us], trusted=TRUSTED
    )
    assert out.getvalue() == b"pq finding"


def test_verify_checks_signature_and_header_digest_without_keys() -> None:
    result, ciphertext = seal_bytes(b"x" * 5000)
    assert sealed.verify(result.envelope, trusted=TRUSTED, ciphertext=ciphertext) == result.manifest
    header_only = ciphertext[: len(age.read_header(io.BytesIO(ciphertext)).raw)]
    assert sealed.verify(result.envelope, trusted=TRUSTED, ciphertext=header_only).size == 5000
    assert sealed.verify(
        result.envelope, trusted=TRUSTED, ciphertext=io.BytesIO(ciphertext), origin="uk-aisi"
    )


def test_verify_refuses_another_ciphertext_of_the_same_plaintext() -> None:
    result, _ = seal_bytes(b"same plaintext")
    _, other = seal_bytes(b"same plaintext")
    with pytest.raises(VerificationError, match="does not match the manifest's header digest"):
        sealed.verify(result.envelope, trusted=TRUSTED, ciphertext=other)
    with pytest.raises(VerificationError, match="header digest"):
        sealed.open_sealed(
            io.BytesIO(other),
            io.BytesIO(),
            envelope=result.envelope,
            identities=[US],
            trusted=TRUSTED,
        )


def test_verify_refuses_a_non_age_ciphertext() -> None:
    result, _ = seal_bytes(b"x")
    with pytest.raises(VerificationError, match="not a valid age file"):
        sealed.verify(result.envelope, trusted=TRUSTED, ciphertext=b"not age at all\n")


def test_untrusted_and_forged_signatures() -> None:
    result, ciphertext = seal_bytes(b"x")
    with pytest.raises(VerificationUnavailableError):
        sealed.verify(
            result.envelope,
            trusted={OTHER_KEY.fingerprint: OTHER_KEY.public},
            ciphertext=ciphertext,
        )
    forged = Envelope(
        result.envelope.payload_type,
        result.envelope.payload,
        ((ORIGIN_KEY.fingerprint, OTHER_KEY.sign(b"anything")),),
    )
    with pytest.raises(VerificationError, match="the manifest signature does not verify"):
        sealed.verify(forged, trusted=TRUSTED, ciphertext=ciphertext)


def test_origin_must_match_when_given() -> None:
    result, ciphertext = seal_bytes(b"x")
    with pytest.raises(VerificationError, match="another origin"):
        sealed.verify(result.envelope, trusted=TRUSTED, ciphertext=ciphertext, origin="us-aisi")


def test_open_with_an_identity_that_is_not_a_recipient() -> None:
    result, ciphertext = seal_bytes(b"not for canada")
    with pytest.raises(NoIdentityMatchError):
        sealed.open_sealed(
            io.BytesIO(ciphertext),
            io.BytesIO(),
            envelope=result.envelope,
            identities=[CA],
            trusted=TRUSTED,
        )


def test_plaintext_digest_mismatch_is_detected_at_the_end(tmp_path: Path) -> None:
    data = os.urandom(3 * 1024 * 1024)
    result, ciphertext = seal_bytes(data)
    # A manifest signed by the right key, with the right header digest, but another plaintext
    # digest: only the final check can catch it.
    lying = replace(result.manifest, sha256=hashlib.sha256(b"other").hexdigest())
    envelope = sealed.sign_manifest(lying, ORIGIN_KEY)
    with pytest.raises(VerificationError, match="the plaintext digest does not match the manifest"):
        sealed.open_sealed(
            io.BytesIO(ciphertext),
            io.BytesIO(),
            envelope=envelope,
            identities=[US],
            trusted=TRUSTED,
        )
    src = tmp_path / "artifact.age"
    src.write_bytes(ciphertext)
    out = tmp_path / "out" / "plain.bin"
    out.parent.mkdir()
    with pytest.raises(VerificationError, match="plaintext digest"):
        files.open_sealed_file(src, out, envelope=envelope, identities=[US], trusted=TRUSTED)
    assert list(out.parent.iterdir()) == []
    wrong_size = sealed.sign_manifest(replace(result.manifest, size=len(data) - 1), ORIGIN_KEY)
    with pytest.raises(VerificationError, match="plaintext digest"):
        files.open_sealed_file(src, out, envelope=wrong_size, identities=[US], trusted=TRUSTED)
    assert list(out.parent.iterdir()) == []


def test_open_sealed_file_writes_only_on_success(tmp_path: Path) -> None:
    data = os.urandom(100_000)
    result, ciphertext = seal_bytes(data)
    src = tmp_path / "a.age"
    src.write_bytes(ciphertext)
    out = tmp_path / "plain"
    manifest = files.open_sealed_file(
        src, out, envelope=result.envelope, identities=[UK], trusted=TRUSTED
    )
    assert manifest.artifact_id == "art-0001"
    assert out.read_bytes() == data
    assert out.stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.age", "plain"]
    with pytest.raises(FileExistsError):
        files.open_sealed_file(src, out, envelope=result.envelope, identities=[UK], trusted=TRUSTED)
    out.write_bytes(b"old")
    files.open_sealed_file(
        src, out, envelope=result.envelope, identities=[UK], trusted=TRUSTED, overwrite=True
    )
    assert out.read_bytes() == data


def test_seal_file_and_open_sealed_file(tmp_path: Path) -> None:
    plain = tmp_path / "report.pdf"
    plain.write_bytes(os.urandom(70_000))
    result = files.seal_file(
        plain,
        tmp_path / "report.age",
        artifact_id="r-1",
        title="Report",
        origin="uk-aisi",
        tlp="TLP:GREEN",
        recipients=recipients(("us-aisi", US)),
        signer=ORIGIN_KEY,
        policy={},
        now=NOW,
    )
    assert (tmp_path / "report.age").stat().st_size == result.ciphertext_size
    files.open_sealed_file(
        tmp_path / "report.age",
        tmp_path / "back.pdf",
        envelope=result.envelope,
        identities=[US],
        trusted=TRUSTED,
    )
    assert (tmp_path / "back.pdf").read_bytes() == plain.read_bytes()


def test_seal_file_leaves_nothing_when_metadata_is_bad(tmp_path: Path) -> None:
    plain = tmp_path / "p"
    plain.write_bytes(b"x")
    with pytest.raises(MalformedError):
        files.seal_file(
            plain,
            tmp_path / "c.age",
            artifact_id="r-1",
            title="T",
            origin="uk-aisi",
            tlp="TLP:PURPLE",
            recipients=recipients(("us-aisi", US)),
            signer=ORIGIN_KEY,
            policy={},
            now=NOW,
        )
    assert [p.name for p in tmp_path.iterdir()] == ["p"]


def test_load_envelope_round_trips_and_refuses_non_canonical_base64() -> None:
    result, _ = seal_bytes(b"x")
    raw = result.envelope.to_bytes()
    assert sealed.load_envelope(raw) == result.envelope
    data = json.loads(raw)
    sig = data["signatures"][0]["sig"]
    assert sig.endswith("==")
    # 'A' and 'B' differ only in bits that '==' padding makes unused: same bytes, other text.
    last = sig[-3]
    twin = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    index = twin.index(last)
    data["signatures"][0]["sig"] = sig[:-3] + twin[index ^ 1] + "=="
    with pytest.raises(MalformedError, match="non-canonical"):
        sealed.load_envelope(json.dumps(data).encode())


# --- the Manifest type ----------------------------------------------------------------------


def manifest(**changes: Any) -> sealed.Manifest:
    result, _ = seal_bytes(b"m")
    return replace(result.manifest, **changes)


def test_manifest_statement_round_trip() -> None:
    m = manifest(
        expires_at=datetime(2027, 1, 1, 0, 0, 0, 123456, tzinfo=UTC),
        created=datetime(2026, 3, 1, 10, 30, tzinfo=timezone(timedelta(hours=1))),
        chain=(sealed.sign_manifest(manifest(), OTHER_KEY).to_json(),),
    )
    again = sealed.Manifest.from_statement(json.loads(m.to_payload()))
    assert again == m
    assert again.created == NOW
    assert m.to_statement()["predicate"]["expires_at"] == "2027-01-01T00:00:00.123456Z"


def test_filename_and_evaluation_are_signed_only_when_given() -> None:
    plain = manifest()
    assert not {"filename", "evaluation"} & set(plain.to_statement()["predicate"])
    summary = {"task": "t", "model": "m", "scorers": [{"name": "s", "metrics": []}]}
    given = manifest(filename="2026_t_x.eval", evaluation=summary)
    predicate = given.to_statement()["predicate"]
    assert predicate["filename"] == "2026_t_x.eval" and predicate["evaluation"] == summary
    again = sealed.Manifest.from_statement(json.loads(given.to_payload()))
    assert again == given and again.evaluation == summary
    result, _ = seal_bytes(b"log", filename="a.eval", evaluation=summary)
    assert result.manifest.filename == "a.eval" and result.manifest.evaluation == summary
    with pytest.raises(MalformedError, match="base name"):
        seal_bytes(b"log", filename="..")


def statement(**predicate_changes: Any) -> dict[str, Any]:
    data = manifest().to_statement()
    data["predicate"].update(predicate_changes)
    return data


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda s: s.update(extra=1), "expected form"),
        (lambda s: s.pop("subject"), "expected form"),
        (lambda s: s.update(_type="https://in-toto.io/Statement/v0.1"), "Statement v1"),
        (lambda s: s.update(predicateType="https://slsa.dev/provenance/v1"), "predicateType"),
        (lambda s: s["predicate"].update(unknown=True), "missing or unknown"),
        (lambda s: s["predicate"].pop("chain"), "missing or unknown"),
        (lambda s: s.update(subject=[]), "one artifact"),
        (lambda s: s["subject"][0]["digest"].update(sha512="00"), "one artifact"),
        (lambda s: s["subject"][0].update(name="other"), "does not name"),
        (lambda s: s["subject"][0]["digest"].update(sha256="AB" * 32), "hexadecimal"),
        (lambda s: s["predicate"].update(tlp="TLP:WHITE"), "TLP"),
        (lambda s: s["predicate"].update(title=""), "title"),
        (lambda s: s["predicate"].update(origin="UK AISI"), "origin"),
        (
            lambda s: (
                s["predicate"].update(artifact_id="../etc"),
                s["subject"][0].update(name="../etc"),
            ),
            "artifact id",
        ),
        (lambda s: s["predicate"].update(topics="evals"), "topics"),
        (lambda s: s["predicate"].update(topics=[""]), "topics"),
        # one vocabulary (crypto.vocab): a term the API and a policy could never carry
        (lambda s: s["predicate"].update(topics=["eval.v2"]), "topics"),
        (lambda s: s["predicate"].update(purposes=["Red_Team"]), "purposes"),
        (lambda s: s["predicate"].update(topics=["a" * 121]), "topics"),
        (lambda s: s["predicate"].update(origin="uk.aisi"), "origin"),
        (lambda s: s["predicate"].update(purposes=[1]), "purposes"),
        (lambda s: s["predicate"].update(created="2026-03-01 09:30:00"), "RFC 3339"),
        (lambda s: s["predicate"].update(created="2026-03-01T09:30:00+01:00"), "RFC 3339"),
        (lambda s: s["predicate"].update(created="2026-02-30T09:30:00Z"), "not a valid time"),
        (lambda s: s["predicate"].update(expires_at=12), "RFC 3339"),
        (lambda s: s["predicate"].update(recipients=[]), "recipients"),
        (lambda s: s["predicate"].update(recipients=[{"node_id": "x"}]), "recipients"),
        (
            lambda s: s["predicate"].update(recipients=[{"node_id": "x", "recipient": "age1bad"}]),
            "recipient",
        ),
        (lambda s: s["predicate"].update(policy=[]), "policy"),
        (lambda s: s["predicate"].update(size=True), "size"),
        (lambda s: s["predicate"].update(size=-1), "size"),
        (lambda s: s["predicate"].update(age_header_sha256="00"), "hexadecimal"),
        (lambda s: s["predicate"].update(chain=[{"not": "an envelope"}]), "DSSE"),
        (lambda s: s["predicate"].update(chain={}), "chain"),
        (lambda s: s["predicate"].update(filename=None), "never null"),
        (lambda s: s["predicate"].update(evaluation=None), "never null"),
        (lambda s: s["predicate"].update(filename="../x.eval"), "base name"),
        (lambda s: s["predicate"].update(filename="a\nb"), "base name"),
        # shown as "invoiceexe.jpg": a right-to-left override hides the real extension
        (lambda s: s["predicate"].update(filename="invoice\u202egpj.exe"), "base name"),
        (lambda s: s["predicate"].update(filename="report\u2066.pdf"), "base name"),
        (lambda s: s["predicate"].update(filename="a\x85b"), "base name"),  # a C1 control
        (lambda s: s["predicate"].update(filename="x" * 256), "base name"),
        (lambda s: s["predicate"].update(evaluation=["task"]), "JSON object"),
        (lambda s: s["predicate"].update(evaluation={"t": "x" * 17000}), "bytes of JSON"),
        (lambda s: s["predicate"].update(evaluation={"a": [[[[[[[1]]]]]]]}), "levels deep"),
    ],
)
def test_from_statement_is_strict(mutate: Any, message: str) -> None:
    data = statement()
    mutate(data)
    with pytest.raises(MalformedError, match=message):
        sealed.Manifest.from_statement(data)


def test_manifest_refuses_naive_times_and_non_json_policy() -> None:
    with pytest.raises(MalformedError, match="timezone-aware"):
        manifest(created=datetime(2026, 1, 1))
    with pytest.raises(MalformedError, match="JSON values"):
        manifest(policy={"when": NOW})
    with pytest.raises(MalformedError, match="recipients"):
        manifest(recipients=())


def test_manifest_recipients_are_canonical_age_strings() -> None:
    text = US.recipient.to_string()
    assert sealed.ManifestRecipient("us-aisi", text).to_age() == US.recipient
    with pytest.raises(MalformedError, match="canonical"):
        sealed.ManifestRecipient("us-aisi", f" {text}\n")
    with pytest.raises(MalformedError, match="node id"):
        sealed.ManifestRecipient("US_AISI", text)


def test_manifest_payload_that_is_not_json_is_malformed() -> None:
    envelope = sign_envelope("application/vnd.in-toto+json", b"\xff not json", [ORIGIN_KEY])
    with pytest.raises(MalformedError, match="not valid JSON"):
        sealed.verify_manifest(envelope, trusted=TRUSTED)


def test_wrong_payload_type_does_not_verify() -> None:
    result, _ = seal_bytes(b"x")
    envelope = sign_envelope("application/json", result.envelope.payload, [ORIGIN_KEY])
    with pytest.raises(VerificationError):
        sealed.verify_manifest(envelope, trusted=TRUSTED)


def test_mixing_classic_and_post_quantum_recipients_is_refused_before_writing() -> None:
    sink = io.BytesIO()
    with pytest.raises(ValueError, match="cannot be mixed"):
        sealed.seal(
            io.BytesIO(b"x"),
            sink,
            artifact_id="a",
            title="t",
            origin="uk-aisi",
            tlp="TLP:RED",
            recipients=recipients(("us-aisi", US), ("uk-aisi", age.HybridIdentity.generate())),
            signer=ORIGIN_KEY,
            policy={},
            now=NOW,
        )
    assert sink.getvalue() == b""


def test_error_messages_carry_no_secrets_or_plaintext(tmp_path: Path) -> None:
    secret = b"TOP-SECRET-FINDING " * 100
    result, ciphertext = seal_bytes(secret)
    lying = sealed.sign_manifest(replace(result.manifest, size=1), ORIGIN_KEY)
    with pytest.raises(VerificationError) as info:
        sealed.open_sealed(
            io.BytesIO(ciphertext), io.BytesIO(), envelope=lying, identities=[US], trusted=TRUSTED
        )
    text = str(info.value) + repr(info.value)
    assert "TOP-SECRET" not in text
    assert US.to_string() not in text
    assert ORIGIN_KEY.seed.hex() not in text
