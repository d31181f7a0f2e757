"""Unit tests for ``crypto.note``: signed notes, checkpoints, cosignatures, witness bodies."""

from __future__ import annotations

import base64
import hashlib

import pytest

from crypto.errors import MalformedError, VerificationError, VerificationUnavailableError
from crypto.keys import SigningKey, VerifyKey
from crypto.merkle import EMPTY_ROOT
from crypto.note import (
    MAX_NOTE_BYTES,
    MAX_SIGNATURES,
    SIG_COSIGNATURE_V1,
    SIG_ED25519,
    AddCheckpointRequest,
    Checkpoint,
    Cosigner,
    Note,
    NoteSignature,
    NoteSigner,
    NoteVerifier,
    cosign_checkpoint,
    key_id,
    open_checkpoint,
    open_note,
    parse_note,
    parse_signature_lines,
    sign_checkpoint,
    sign_note,
    verify_cosignature,
)

ORIGIN = "log.example/entente"
ROOT = hashlib.sha256(b"some root").digest()
NOW = 1_700_000_000


def seed(n: int) -> bytes:
    return bytes([n]) * 32


@pytest.fixture
def log() -> NoteSigner:
    return NoteSigner(ORIGIN, SigningKey(seed(1)))


@pytest.fixture
def witness() -> Cosigner:
    return Cosigner("witness.example/w1", SigningKey(seed(2)))


@pytest.fixture
def checkpoint() -> Checkpoint:
    return Checkpoint(ORIGIN, 20852163, ROOT)


# --- Keys.


def test_key_id_and_vkey_by_hand() -> None:
    key = SigningKey(seed(7))
    signer = NoteSigner("example.com/a", key)
    raw = key.public.raw
    want = int.from_bytes(hashlib.sha256(b"example.com/a\n\x01" + raw).digest()[:4], "big")
    assert signer.key_id == key_id("example.com/a", SIG_ED25519, raw) == want
    vkey = f"example.com/a+{want:08x}+" + base64.b64encode(b"\x01" + raw).decode()
    assert signer.verifier.vkey == vkey
    assert str(NoteVerifier.parse(vkey)) == vkey
    cosigner = Cosigner("example.com/a", key)
    want4 = int.from_bytes(hashlib.sha256(b"example.com/a\n\x04" + raw).digest()[:4], "big")
    assert cosigner.key_id == want4
    assert NoteVerifier.parse(cosigner.verifier.vkey).sig_type == SIG_COSIGNATURE_V1


def test_signer_keys_round_trip_and_hide_the_seed(log: NoteSigner, witness: Cosigner) -> None:
    skey = log.export_signer_key()
    assert skey.startswith(f"PRIVATE+KEY+{ORIGIN}+{log.key_id:08x}+")
    assert NoteSigner.from_signer_key(skey).verifier == log.verifier
    assert base64.b64encode(b"\x01" + seed(1)).decode() not in repr(log)
    wkey = witness.export_signer_key()
    assert Cosigner.from_signer_key(wkey).verifier == witness.verifier
    # Go witness tooling configures a cosigner with a plain Ed25519 (0x01) signer key.
    plain = NoteSigner(witness.name, SigningKey(seed(2))).export_signer_key()
    assert Cosigner.from_signer_key(plain).verifier == witness.verifier
    with pytest.raises(VerificationUnavailableError):
        NoteSigner.from_signer_key(wkey)


@pytest.mark.parametrize(
    ("mangle", "error"),
    [
        (lambda s: s.removeprefix("PRIVATE+KEY+"), MalformedError),
        (lambda s: s[:-4], MalformedError),
        (lambda s: s.replace(s.split("+")[3], "00000000"), MalformedError),
        (
            lambda s: s.rsplit("+", 1)[0] + "+" + base64.b64encode(b"\x01" + seed(9)).decode(),
            MalformedError,
        ),
        (
            lambda s: s.rsplit("+", 1)[0] + "+" + base64.b64encode(b"\x02" + seed(1)).decode(),
            VerificationUnavailableError,
        ),
    ],
)
def test_malformed_signer_keys_do_not_echo_secrets(
    log: NoteSigner, mangle: object, error: type[Exception]
) -> None:
    skey = log.export_signer_key()
    assert callable(mangle)
    bad = mangle(skey)
    with pytest.raises(error) as info:
        NoteSigner.from_signer_key(bad)
    assert skey.rsplit("+", 1)[1][:8] not in str(info.value)


@pytest.mark.parametrize(
    ("vkey", "error"),
    [
        ("", MalformedError),
        ("name+0000000+AQ==", MalformedError),
        ("na me+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k", MalformedError),
        ("example.com/foo+530D903A+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k", MalformedError),
        ("example.com/foo+530d903b+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k", MalformedError),
        ("example.com/foo+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2", MalformedError),
        ("example.com/foo+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k+", MalformedError),
        (
            "example.com/foo+530d903a+AukyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k",
            VerificationUnavailableError,
        ),
        ("example.com/foo+530d903a+AQ==", MalformedError),
        ("x" * 2000 + "+530d903a+AQ==", MalformedError),
    ],
)
def test_malformed_verifier_keys(vkey: str, error: type[Exception]) -> None:
    with pytest.raises(error):
        NoteVerifier.parse(vkey)


@pytest.mark.parametrize("name", ["", "a b", "a+b", "a\u00a0b", "a\tb", "a\x01b", "\u2028"])
def test_invalid_key_names(name: str) -> None:
    with pytest.raises(MalformedError):
        NoteSigner(name, SigningKey(seed(1)))


# --- Notes.


def test_sign_and_open_round_trip(log: NoteSigner) -> None:
    other = NoteSigner("other.example/k", SigningKey(seed(3)))
    text = "hello\n\nworld, with an empty line \u2014 and UTF-8\n"
    note = sign_note(text, [log, other])
    opened = open_note(note, verifiers=[log.verifier])
    assert opened.text == text
    assert [s.name for s in opened.verified] == [ORIGIN]
    assert [s.name for s in opened.unverified] == ["other.example/k"]
    both = open_note(note, verifiers=[log.verifier, other.verifier])
    assert {s.name for s in both.verified} == {ORIGIN, "other.example/k"}
    assert both.signed_by(other.verifier) is not None
    assert parse_note(note).to_bytes() == note


def test_text_may_end_with_empty_lines_and_contain_signature_like_lines(log: NoteSigner) -> None:
    for text in ["a\n\n", "\n", "a\n\n\u2014 fake AAAA\n"]:
        assert open_note(sign_note(text, [log]), verifiers=[log.verifier]).text == text


def test_bad_signature_by_a_known_key_rejects_the_note(log: NoteSigner) -> None:
    other = NoteSigner("other.example/k", SigningKey(seed(3)))
    good = parse_note(sign_note("text\n", [log, other]))
    forged = NoteSignature(other.name, other.key_id, bytes(64))
    note = Note(good.text, (good.signatures[0], forged)).to_bytes()
    # Unknown to this verifier: ignored.
    assert open_note(note, verifiers=[log.verifier]).unverified == (forged,)
    with pytest.raises(VerificationError, match=r"other\.example/k"):
        open_note(note, verifiers=[log.verifier, other.verifier])
    # A repeated, bad signature by a known key also rejects the note.
    again = Note(good.text, (good.signatures[0], NoteSignature(log.name, log.key_id, bytes(64))))
    with pytest.raises(VerificationError):
        open_note(again.to_bytes(), verifiers=[log.verifier])


def test_same_name_other_key_is_ignored(log: NoteSigner) -> None:
    impostor = NoteSigner(ORIGIN, SigningKey(seed(9)))
    note = sign_note("text\n", [impostor])
    with pytest.raises(VerificationUnavailableError):
        open_note(note, verifiers=[log.verifier])


def test_verifier_configuration_is_checked(log: NoteSigner) -> None:
    note = sign_note("text\n", [log])
    with pytest.raises(MalformedError):
        open_note(note, verifiers=[])
    with pytest.raises(MalformedError):
        sign_note("text\n", [])
    with pytest.raises(MalformedError):
        sign_note("no newline", [log])
    with pytest.raises(MalformedError):
        sign_note("bell \x07\n", [log])


SIG = "\u2014 a.example/k " + base64.b64encode(b"\x00\x01\x02\x03" + bytes(64)).decode()

MALFORMED_NOTES = [
    ("no blank line", b"text\n" + SIG.encode() + b"\n", "blank line"),
    ("no signatures", b"text\n\n", "end with a newline"),
    ("no final newline", b"text\n\n" + SIG.encode(), "end with a newline"),
    ("hyphen not em dash", b"text\n\n- a.example/k AAAAAAA=\n", "em dash"),
    ("no space after name", b"text\n\n\xe2\x80\x94 a.example/k\n", "<name> <base64>"),
    ("empty name", b"text\n\n\xe2\x80\x94  AAAAAAA=\n", "key name"),
    ("bad base64", b"text\n\n\xe2\x80\x94 a.example/k AAAA!AA=\n", "base64"),
    ("unpadded base64", b"text\n\n\xe2\x80\x94 a.example/k AAAAAAA\n", "base64"),
    ("non-canonical base64", b"text\n\n\xe2\x80\x94 a.example/k AAAAAAB=\n", "canonical"),
    ("signature too short", b"text\n\n\xe2\x80\x94 a.example/k AAAAAA==\n", "at least one byte"),
    ("trailing space", b"text\n\n" + SIG.encode() + b" \n", "base64"),
    ("CRLF", b"text\r\n\r\n" + SIG.encode() + b"\r\n", "control character"),
    ("NUL", b"te\x00xt\n\n" + SIG.encode() + b"\n", "control character"),
    ("tab", b"te\txt\n\n" + SIG.encode() + b"\n", "control character"),
    ("invalid UTF-8", b"te\xffxt\n\n" + SIG.encode() + b"\n", "UTF-8"),
    ("blank line in signatures", b"text\n\n" + SIG.encode() + b"\n\n", "end with a newline"),
    ("too many signatures", b"text\n\n" + (SIG.encode() + b"\n") * (MAX_SIGNATURES + 1), "at most"),
    ("too large", b"t" * MAX_NOTE_BYTES + b"\n\n" + SIG.encode() + b"\n", "too large"),
]


@pytest.mark.parametrize(
    ("data", "match"), [pytest.param(d, m, id=i) for i, d, m in MALFORMED_NOTES]
)
def test_malformed_notes_are_rejected(data: bytes, match: str, log: NoteSigner) -> None:
    with pytest.raises(MalformedError, match=match):
        open_note(data, verifiers=[log.verifier])


def test_many_signatures_up_to_the_limit(log: NoteSigner) -> None:
    # The spec requires accepting at least 16; unknown ones are reported once.
    note = sign_note("text\n", [log]) + (SIG + "\n").encode() * (MAX_SIGNATURES - 1)
    opened = open_note(note, verifiers=[log.verifier])
    assert len(opened.unverified) == 1


# --- Checkpoints.


def test_checkpoint_round_trip(checkpoint: Checkpoint) -> None:
    text = f"{ORIGIN}\n20852163\n{base64.b64encode(ROOT).decode()}\n"
    assert checkpoint.to_text() == text
    assert Checkpoint.parse(text) == checkpoint
    ext = Checkpoint(ORIGIN, 1, ROOT, ("ext one", "ext two"))
    assert Checkpoint.parse(ext.to_text()) == ext
    empty = Checkpoint(ORIGIN, 0, EMPTY_ROOT)
    assert Checkpoint.parse(empty.to_text()) == empty


B64_ROOT = base64.b64encode(ROOT).decode()
URLSAFE_ROOT = base64.urlsafe_b64encode(b"\xff" * 32).decode()

MALFORMED_CHECKPOINTS = [
    ("two lines", f"{ORIGIN}\n5\n", "origin, a tree size"),
    ("no final newline", f"{ORIGIN}\n5\n{B64_ROOT}", "newline"),
    ("empty origin", f"\n5\n{B64_ROOT}\n", "origin"),
    ("leading zero", f"{ORIGIN}\n05\n{B64_ROOT}\n", "leading zeros"),
    ("plus sign", f"{ORIGIN}\n+5\n{B64_ROOT}\n", "decimal"),
    ("negative", f"{ORIGIN}\n-5\n{B64_ROOT}\n", "decimal"),
    ("spaces", f"{ORIGIN}\n 5\n{B64_ROOT}\n", "decimal"),
    ("underscore", f"{ORIGIN}\n1_000\n{B64_ROOT}\n", "decimal"),
    ("unicode digit", f"{ORIGIN}\n\u0665\n{B64_ROOT}\n", "decimal"),
    ("too big", f"{ORIGIN}\n9223372036854775808\n{B64_ROOT}\n", "2\\*\\*63"),
    ("short root", f"{ORIGIN}\n5\n{base64.b64encode(ROOT[:31]).decode()}\n", "32 bytes"),
    (
        "url-safe root",
        f"{ORIGIN}\n5\n{URLSAFE_ROOT}\n",
        "base64",
    ),
    ("empty extension", f"{ORIGIN}\n5\n{B64_ROOT}\n\n", "extension"),
    ("empty tree, wrong root", f"{ORIGIN}\n0\n{B64_ROOT}\n", "empty tree"),
    ("too many extensions", f"{ORIGIN}\n5\n{B64_ROOT}\n" + "x\n" * 17, "at most"),
]


@pytest.mark.parametrize(
    ("text", "match"), [pytest.param(t, m, id=i) for i, t, m in MALFORMED_CHECKPOINTS]
)
def test_malformed_checkpoints(text: str, match: str) -> None:
    with pytest.raises(MalformedError, match=match):
        Checkpoint.parse(text)


def test_signed_checkpoint_opens(log: NoteSigner, checkpoint: Checkpoint) -> None:
    note = sign_checkpoint(checkpoint, signer=log)
    verified = open_checkpoint(note, log=log.verifier)
    assert verified.checkpoint == checkpoint
    assert verified.cosignatures == ()
    with pytest.raises(MalformedError):
        sign_checkpoint(checkpoint, signer=NoteSigner("other.example", SigningKey(seed(1))))


def test_checkpoint_needs_the_log_signature_and_origin(log: NoteSigner, witness: Cosigner) -> None:
    other_origin = Checkpoint("other.example/log", 1, ROOT)
    with pytest.raises(VerificationError, match="origin"):
        open_checkpoint(sign_note(other_origin.to_text(), [log]), log=log.verifier)
    only_witness = sign_note(Checkpoint(ORIGIN, 1, ROOT).to_text(), [witness], timestamp=NOW)
    with pytest.raises(VerificationUnavailableError, match="log key"):
        open_checkpoint(only_witness, log=log.verifier, witnesses=[witness.verifier])
    with pytest.raises(MalformedError):
        open_checkpoint(only_witness, log=witness.verifier)
    with pytest.raises(MalformedError):
        open_checkpoint(only_witness, log=log.verifier, witnesses=[log.verifier])


# --- Cosignatures.


def test_cosignature_matches_the_spec_by_hand(witness: Cosigner, checkpoint: Checkpoint) -> None:
    sig = cosign_checkpoint(checkpoint, cosigner=witness, timestamp=1679315147)
    message = b"cosignature/v1\ntime 1679315147\n" + checkpoint.to_text().encode()
    raw = SigningKey(seed(2)).sign(message)  # Ed25519 is deterministic
    kid = hashlib.sha256(b"witness.example/w1\n\x04" + SigningKey(seed(2)).public.raw).digest()[:4]
    blob = kid + (1679315147).to_bytes(8, "big") + raw
    assert sig.line() == "\u2014 witness.example/w1 " + base64.b64encode(blob).decode() + "\n"
    assert sig.timestamp == 1679315147
    assert verify_cosignature(checkpoint, sig, verifier=witness.verifier, now=NOW) == 1679315147


def test_witness_flow(log: NoteSigner, witness: Cosigner, checkpoint: Checkpoint) -> None:
    note = sign_checkpoint(checkpoint, signer=log)
    request = AddCheckpointRequest(0, (), note)
    body = request.to_bytes()
    assert body.startswith(b"old 0\n\n")
    received = AddCheckpointRequest.parse(body)
    assert received == request
    # The witness verifies the log signature, then cosigns; the response is signature lines.
    seen = open_checkpoint(received.checkpoint, log=log.verifier)
    response = cosign_checkpoint(seen.checkpoint, cosigner=witness, timestamp=NOW).line()
    lines = parse_signature_lines(response)
    assert lines[0].name == witness.name
    # The log appends the response to its note and anyone can check both.
    cosigned = note + response.encode()
    verified = open_checkpoint(cosigned, log=log.verifier, witnesses=[witness.verifier], now=NOW)
    assert [(c.name, c.timestamp) for c in verified.cosignatures] == [(witness.name, NOW)]
    # Without the witness key, the cosignature is simply unknown.
    assert open_checkpoint(cosigned, log=log.verifier).cosignatures == ()


def test_cosignature_failures(log: NoteSigner, witness: Cosigner, checkpoint: Checkpoint) -> None:
    sig = cosign_checkpoint(checkpoint, cosigner=witness, timestamp=NOW)
    moved = Checkpoint(ORIGIN, checkpoint.size + 1, ROOT)
    with pytest.raises(VerificationError):
        verify_cosignature(moved, sig, verifier=witness.verifier)
    retimed = NoteSignature(sig.name, sig.key_id, (NOW + 1).to_bytes(8, "big") + sig.signature[8:])
    with pytest.raises(VerificationError):
        verify_cosignature(checkpoint, retimed, verifier=witness.verifier)
    other = Cosigner("witness.example/w2", SigningKey(seed(4)))
    with pytest.raises(VerificationUnavailableError):
        verify_cosignature(checkpoint, sig, verifier=other.verifier)
    with pytest.raises(MalformedError):
        verify_cosignature(checkpoint, sig, verifier=log.verifier)
    with pytest.raises(VerificationError, match="future"):
        verify_cosignature(checkpoint, sig, verifier=witness.verifier, now=NOW - 61)
    assert verify_cosignature(checkpoint, sig, verifier=witness.verifier, now=NOW - 60) == NOW
    note = sign_checkpoint(checkpoint, signer=log) + sig.line().encode()
    with pytest.raises(VerificationError, match="future"):
        open_checkpoint(note, log=log.verifier, witnesses=[witness.verifier], now=NOW - 3600)
    # A cosignature by a witness key does not pass as a log signature, nor the reverse.
    bad = (
        sign_checkpoint(checkpoint, signer=log)
        + NoteSignature(witness.name, witness.key_id, sig.signature[8:]).line().encode()
    )
    with pytest.raises(VerificationError):
        open_checkpoint(bad, log=log.verifier, witnesses=[witness.verifier])
    for timestamp in (0, -1, 1 << 63):
        with pytest.raises(MalformedError):
            cosign_checkpoint(checkpoint, cosigner=witness, timestamp=timestamp)
    with pytest.raises(MalformedError):
        sign_note("text\n", [witness])


def test_add_checkpoint_request_with_proof(log: NoteSigner, checkpoint: Checkpoint) -> None:
    note = sign_checkpoint(checkpoint, signer=log)
    proof = tuple(hashlib.sha256(bytes([i])).digest() for i in range(3))
    request = AddCheckpointRequest(20852014, proof, note)
    body = request.to_bytes()
    assert body.split(b"\n")[0] == b"old 20852014"
    assert AddCheckpointRequest.parse(body) == request


@pytest.mark.parametrize(
    ("body", "match"),
    [
        (b"old 5\n", "blank line"),
        (b"old 05\n\n", "old <size>"),
        (b"old  5\n\n", "old <size>"),
        (b"new 5\n\n", "old <size>"),
        (b"old 5\nAAAA\n\n", "32-byte"),
        (b"old 5\n" + (base64.b64encode(ROOT) + b"\n") * 64 + b"\n", "at most 63"),
        (b"old 5\n\xff\n\n", "ASCII"),
        (b"old 5\n\nnot a note", "blank line"),
    ],
)
def test_malformed_add_checkpoint_requests(body: bytes, match: str) -> None:
    with pytest.raises(MalformedError, match=match):
        AddCheckpointRequest.parse(body)


def test_verifier_equality_and_collisions() -> None:
    a = NoteVerifier("n.example", VerifyKey(SigningKey(seed(1)).public.raw))
    b = NoteVerifier("n.example", SigningKey(seed(1)).public)
    assert a == b
    assert hash(a) == hash(b)
    note = sign_note("x\n", [NoteSigner("n.example", SigningKey(seed(1)))])
    assert open_note(note, verifiers=[a, b]).verified[0].name == "n.example"
    # Two different trusted keys with the same name and key ID would make the choice ambiguous.
    c = NoteVerifier("n.example", SigningKey(seed(5)).public)
    object.__setattr__(c, "key_id", a.key_id)
    with pytest.raises(MalformedError, match="share"):
        open_note(note, verifiers=[a, c])
