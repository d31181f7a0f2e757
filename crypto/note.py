"""C2SP signed notes, transparency-log checkpoints and checkpoint cosignatures (Ed25519).

* c2sp.org/signed-note: a UTF-8 text ending in a newline, a blank line, and one or more lines
  ``— <key name> base64(key ID || signature)``. Key IDs are the first four bytes of
  ``SHA-256(name || 0x0A || type || public key)``; verifier keys are
  ``name+hexid+base64(type||key)`` and signer keys ``PRIVATE+KEY+name+hexid+base64(type||seed)``
  (the Go ``sumdb/note`` format).
  Signature type 0x01 is an Ed25519 signature over the note text.
* c2sp.org/tlog-checkpoint: the note text ``origin``, ``tree size``, ``base64 root hash`` and
  optional extension lines, parsed strictly by :class:`Checkpoint`.
* c2sp.org/tlog-cosignature (Ed25519, signature type 0x04): a witness signs
  ``cosignature/v1\\ntime <unix>\\n`` followed by the checkpoint text, and the signature carries
  the 8-byte big-endian timestamp before the 64-byte Ed25519 signature.
* c2sp.org/tlog-witness ``add-checkpoint`` request bodies and signature-line responses.

:func:`open_note` follows the spec's rules: signatures by unknown keys are ignored (and returned
as unverified), a bad signature by a known key rejects the whole note
(:class:`~crypto.errors.VerificationError`), and a note no known key signed is rejected with
:class:`~crypto.errors.VerificationUnavailableError`. Size, line and signature counts are bounded.

This module does not decide which keys to trust, keep witness state, check consistency between
checkpoints (see ``crypto.merkle``), nor read a clock: times are arguments. ML-DSA and ECDSA
signature types are not implemented; such signatures are treated as unknown and ignored.

One cohesive specification: the four C2SP documents above build on one another (a checkpoint is
a signed note; a cosignature signs a checkpoint; add-checkpoint carries both) and share one
strict parser.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

from crypto.errors import MalformedError, VerificationError, VerificationUnavailableError
from crypto.keys import SigningKey, VerifyKey
from crypto.merkle import EMPTY_ROOT, HASH_SIZE, MAX_TREE_SIZE

__all__ = [
    "COSIGNATURE_HEADER",
    "MAX_CHECKPOINT_EXTENSIONS",
    "MAX_NOTE_BYTES",
    "MAX_SIGNATURES",
    "MAX_WITNESS_PROOF_HASHES",
    "SIG_COSIGNATURE_V1",
    "SIG_ED25519",
    "AddCheckpointRequest",
    "Checkpoint",
    "Cosigner",
    "Note",
    "NoteSignature",
    "NoteSigner",
    "NoteVerifier",
    "OpenedNote",
    "VerifiedCheckpoint",
    "VerifiedSignature",
    "cosign_checkpoint",
    "key_id",
    "open_checkpoint",
    "open_note",
    "parse_signature_lines",
    "sign_checkpoint",
    "sign_note",
    "verify_cosignature",
]

SIG_ED25519 = 0x01  # c2sp.org/signed-note: Ed25519 over the note text
SIG_COSIGNATURE_V1 = 0x04  # c2sp.org/tlog-cosignature: timestamped Ed25519 cosignature

MAX_NOTE_BYTES = 128 * 1024  # bytes; the spec asks for 16 signatures of up to ~5 kB at least
MAX_SIGNATURES = 100  # signature lines per note (the Go reference's limit)
MAX_CHECKPOINT_EXTENSIONS = 16  # extension lines after the root hash
MAX_WITNESS_PROOF_HASHES = 63  # c2sp.org/tlog-witness: at most 63 consistency proof lines
MAX_TIMESTAMP = (1 << 63) - 1  # c2sp.org/tlog-cosignature: timestamps fit in 63 bits

COSIGNATURE_HEADER = b"cosignature/v1\n"  # tlog-cosignature: the domain separation line

_SIG_PREFIX = "\u2014 "  # em dash, space
_SIGNER_KEY_PREFIX = "PRIVATE+KEY+"
_MAX_KEY_STRING = 1024  # characters in a verifier or signer key string
_ED25519_SIG_LEN = 64
_DECIMAL = re.compile(r"0|[1-9][0-9]{0,18}")
_HEX_ID = re.compile(r"[0-9a-f]{8}")


def key_id(name: str, sig_type: int, public_key: bytes) -> int:
    """``SHA-256(name || 0x0A || type || public key)[:4]`` as a big-endian uint32."""
    digest = hashlib.sha256(name.encode("utf-8") + b"\n" + bytes([sig_type]) + public_key).digest()
    return int.from_bytes(digest[:4], "big")


def _check_name(name: str) -> None:
    # signed-note "Format": key names are non-empty, with no Unicode spaces and no "+".
    if not name or "+" in name or any(ch.isspace() or ch < " " for ch in name):
        raise MalformedError("a key name is non-empty, without spaces or '+'")
    try:
        name.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise MalformedError("a key name is valid UTF-8") from exc


def _b64decode(text: str, what: str) -> bytes:
    """Standard, padded, canonical base64 (RFC 4648 section 4) or MalformedError."""
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError) as exc:
        raise MalformedError(f"{what} is not valid base64") from exc
    if base64.b64encode(raw).decode("ascii") != text:
        raise MalformedError(f"{what} is not canonical base64")
    return raw


def _short(name: str) -> str:
    """A key name as quoted in an error message: untrusted, so bounded."""
    return name if len(name) <= 64 else name[:61] + "..."


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _check_text(text: str, what: str) -> None:
    # signed-note "Format": valid UTF-8, no ASCII control characters other than newline.
    if any(ch < " " and ch != "\n" for ch in text):
        raise MalformedError(f"{what} contains a control character")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise MalformedError(f"{what} is not valid UTF-8") from exc


def _parse_key_string(text: str, what: str) -> tuple[str, int, int, bytes]:
    """``name+hexid+base64(type||material)`` -> (name, key ID, type, material)."""
    if len(text) > _MAX_KEY_STRING:
        raise MalformedError(f"{what} is too long")
    # The name cannot contain "+", and base64 can: split only the first two.
    parts = text.split("+", 2)
    if len(parts) != 3:
        raise MalformedError(f"{what} is name+keyid+key")
    name, hex_id, b64 = parts
    _check_name(name)
    if not _HEX_ID.fullmatch(hex_id):
        raise MalformedError(f"{what}: the key ID is 8 lowercase hex digits")
    raw = _b64decode(b64, what)
    if len(raw) < 2:
        raise MalformedError(f"{what} has no key material")
    return name, int(hex_id, 16), raw[0], raw[1:]


def _check_sig_type(sig_type: int) -> None:
    if sig_type not in (SIG_ED25519, SIG_COSIGNATURE_V1):
        raise VerificationUnavailableError(f"unsupported note signature type 0x{sig_type:02x}")


def _check_timestamp(timestamp: int) -> None:
    if not 0 < timestamp <= MAX_TIMESTAMP:
        raise MalformedError("a cosignature timestamp is a positive 63-bit POSIX time")


def _cosigned_message(text: bytes, timestamp: int) -> bytes:
    # tlog-cosignature "Ed25519 signed message": header line, timestamp line, checkpoint body.
    return COSIGNATURE_HEADER + b"time %d\n" % timestamp + text


@dataclass(frozen=True)
class NoteSignature:
    """One signature line: key name, key ID and the signature bytes after the key ID."""

    name: str
    key_id: int
    signature: bytes

    def line(self) -> str:
        """``— <name> base64(key ID || signature)`` with its newline."""
        blob = self.key_id.to_bytes(4, "big") + self.signature
        return f"{_SIG_PREFIX}{self.name} {_b64(blob)}\n"

    @property
    def timestamp(self) -> int | None:
        """The (unverified) timestamp, if the signature has the shape of a cosignature."""
        if len(self.signature) != 8 + _ED25519_SIG_LEN:
            return None
        return int.from_bytes(self.signature[:8], "big")


@dataclass(frozen=True)
class NoteVerifier:
    """A trusted public key for notes: a key name, a signature type and an Ed25519 key."""

    name: str
    key: VerifyKey
    sig_type: int = SIG_ED25519
    key_id: int = field(init=False)

    def __post_init__(self) -> None:
        _check_name(self.name)
        _check_sig_type(self.sig_type)
        object.__setattr__(self, "key_id", key_id(self.name, self.sig_type, self.key.raw))

    @classmethod
    def parse(cls, vkey: str) -> NoteVerifier:
        """Parse a verifier key ``name+hexid+base64(type||key)``; the ID must match the key."""
        name, kid, sig_type, material = _parse_key_string(vkey, "a verifier key")
        _check_sig_type(sig_type)
        verifier = cls(name, VerifyKey(material), sig_type)
        if verifier.key_id != kid:
            raise MalformedError("the verifier key's ID does not match its name and key")
        return verifier

    @property
    def vkey(self) -> str:
        return f"{self.name}+{self.key_id:08x}+{_b64(bytes([self.sig_type]) + self.key.raw)}"

    def _verify(self, text: bytes, signature: bytes) -> int | None:
        """Verify a signature over note ``text``; return the cosignature timestamp, if any."""
        if self.sig_type == SIG_ED25519:
            if len(signature) != _ED25519_SIG_LEN:
                raise VerificationError(f"signature by {self.name} has the wrong length")
            self.key.verify(signature, text)
            return None
        # tlog-cosignature: timestamped_signature = u64 timestamp || ed25519_signature[64].
        if len(signature) != 8 + _ED25519_SIG_LEN:
            raise VerificationError(f"cosignature by {self.name} has the wrong length")
        timestamp = int.from_bytes(signature[:8], "big")
        if timestamp > MAX_TIMESTAMP:
            raise VerificationError(f"cosignature by {self.name} has an invalid timestamp")
        self.key.verify(signature[8:], _cosigned_message(text, timestamp))
        return timestamp

    def __str__(self) -> str:
        return self.vkey


class _Signer:
    __slots__ = ("_key", "_name", "_verifier")
    _sig_type: ClassVar[int]

    def __init__(self, name: str, key: SigningKey) -> None:
        self._name = name
        self._key = key
        self._verifier = NoteVerifier(name, key.public, self._sig_type)

    @property
    def name(self) -> str:
        return self._name

    @property
    def verifier(self) -> NoteVerifier:
        return self._verifier

    @property
    def key_id(self) -> int:
        return self._verifier.key_id

    def export_signer_key(self) -> str:
        """The secret signer key string ``PRIVATE+KEY+name+hexid+base64(type||seed)``."""
        blob = _b64(bytes([self._sig_type]) + self._key.seed)
        return f"{_SIGNER_KEY_PREFIX}{self._name}+{self.key_id:08x}+{blob}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._verifier.vkey})"


def _parse_signer_key(skey: str, accepted_types: tuple[int, ...]) -> tuple[str, SigningKey]:
    if not skey.startswith(_SIGNER_KEY_PREFIX):
        raise MalformedError("a signer key starts with PRIVATE+KEY+")
    try:
        name, kid, sig_type, seed = _parse_key_string(
            skey.removeprefix(_SIGNER_KEY_PREFIX), "a signer key"
        )
    except MalformedError:
        # Never echo any part of a secret key in an error.
        raise MalformedError("the signer key is malformed") from None
    if sig_type not in accepted_types:
        raise VerificationUnavailableError(f"unsupported signer key type 0x{sig_type:02x}")
    if len(seed) != 32:
        raise MalformedError("the signer key is malformed")
    key = SigningKey(seed)
    if key_id(name, sig_type, key.public.raw) != kid:
        raise MalformedError("the signer key's ID does not match its name and key")
    return name, key


class NoteSigner(_Signer):
    """Signs note text with Ed25519 (signature type 0x01). Its repr shows only the vkey."""

    __slots__ = ()
    _sig_type = SIG_ED25519

    @classmethod
    def from_signer_key(cls, skey: str) -> NoteSigner:
        name, key = _parse_signer_key(skey, (SIG_ED25519,))
        return cls(name, key)

    def sign(self, text: bytes) -> NoteSignature:
        return NoteSignature(self._name, self.key_id, self._key.sign(text))


class Cosigner(_Signer):
    """A witness key: timestamped Ed25519 checkpoint cosignatures (signature type 0x04).

    The tlog-cosignature v1 message does not name the cosigner, so a key must never serve two
    cosigner names (or a log and a witness).
    """

    __slots__ = ()
    _sig_type = SIG_COSIGNATURE_V1

    @classmethod
    def from_signer_key(cls, skey: str) -> Cosigner:
        """Accepts type 0x04 keys, and plain Ed25519 (0x01) keys as Go witness tooling does."""
        name, key = _parse_signer_key(skey, (SIG_COSIGNATURE_V1, SIG_ED25519))
        return cls(name, key)

    def cosign(self, text: bytes, *, timestamp: int) -> NoteSignature:
        _check_timestamp(timestamp)
        signature = self._key.sign(_cosigned_message(text, timestamp))
        return NoteSignature(self._name, self.key_id, timestamp.to_bytes(8, "big") + signature)


@dataclass(frozen=True)
class Note:
    """A parsed, unverified note: its text (with the final newline) and signature lines."""

    text: str
    signatures: tuple[NoteSignature, ...]

    def to_bytes(self) -> bytes:
        if not self.text.endswith("\n"):
            raise MalformedError("note text ends with a newline")
        if not self.signatures:
            raise MalformedError("a note has at least one signature")
        _check_text(self.text, "the note text")
        for sig in self.signatures:
            _check_name(sig.name)
        out = (self.text + "\n" + "".join(sig.line() for sig in self.signatures)).encode("utf-8")
        if len(out) > MAX_NOTE_BYTES:
            raise MalformedError("the note is too large")
        return out


def parse_signature_lines(block: str) -> tuple[NoteSignature, ...]:
    """Parse newline-terminated signature lines (a note's signature block, or a witness's
    add-checkpoint response body)."""
    if not block or not block.endswith("\n"):
        raise MalformedError("signature lines end with a newline")
    lines = block[:-1].split("\n")
    if len(lines) > MAX_SIGNATURES:
        raise MalformedError(f"at most {MAX_SIGNATURES} signatures")
    out = []
    for line in lines:
        # signed-note "Format": em dash, space, key name, space, base64 signature.
        if not line.startswith(_SIG_PREFIX):
            raise MalformedError("a signature line starts with an em dash and a space")
        name, sep, b64 = line[len(_SIG_PREFIX) :].partition(" ")
        if not sep or not b64:
            raise MalformedError("a signature line is '— <name> <base64>'")
        _check_name(name)
        blob = _b64decode(b64, "a signature")
        # "Signatures are the base64 encoding of 4+n bytes" (n > 0).
        if len(blob) < 5:
            raise MalformedError("a signature is a key ID and at least one byte")
        out.append(NoteSignature(name, int.from_bytes(blob[:4], "big"), blob[4:]))
    return tuple(out)


def parse_note(data: bytes) -> Note:
    """Split a signed note into text and signature lines, strictly; nothing is verified."""
    if len(data) > MAX_NOTE_BYTES:
        raise MalformedError("the note is too large")
    try:
        message = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MalformedError("a note is valid UTF-8") from exc
    _check_text(message, "the note")
    # "The text is separated from the signatures by the last empty line in the note."
    split = message.rfind("\n\n")
    if split < 0:
        raise MalformedError("a note has a blank line before its signatures")
    return Note(message[: split + 1], parse_signature_lines(message[split + 2 :]))


@dataclass(frozen=True)
class VerifiedSignature:
    """A signature that verified: who made it and, for a cosignature, when."""

    name: str
    key_id: int
    sig_type: int
    timestamp: int | None


@dataclass(frozen=True)
class OpenedNote:
    """A note whose signatures by known keys all verified."""

    text: str
    verified: tuple[VerifiedSignature, ...]
    unverified: tuple[NoteSignature, ...]

    def signed_by(self, verifier: NoteVerifier) -> VerifiedSignature | None:
        for sig in self.verified:
            if (sig.name, sig.key_id) == (verifier.name, verifier.key_id):
                return sig
        return None


def _index(verifiers: Iterable[NoteVerifier]) -> dict[tuple[str, int], NoteVerifier]:
    known: dict[tuple[str, int], NoteVerifier] = {}
    for v in verifiers:
        if known.setdefault((v.name, v.key_id), v) != v:
            raise MalformedError(f"two trusted keys share the name and key ID {v.name}")
    if not known:
        raise MalformedError("opening a note needs at least one trusted key")
    return known


def open_note(data: bytes, *, verifiers: Iterable[NoteVerifier]) -> OpenedNote:
    """Parse a note and verify every signature by a known key.

    Unknown signatures (name or key ID not matching a verifier) are ignored and returned as
    ``unverified``. Raises :class:`VerificationError` if a signature by a known key fails, and
    :class:`VerificationUnavailableError` if no known key signed the note.
    """
    known = _index(verifiers)
    note = parse_note(data)
    text = note.text.encode("utf-8")
    verified: dict[tuple[str, int], VerifiedSignature] = {}
    unverified: list[NoteSignature] = []
    for sig in note.signatures:
        verifier = known.get((sig.name, sig.key_id))
        # signed-note "Signatures": signatures from unknown keys MUST be ignored, even if they
        # share a name or an ID (but not both) with a known key.
        if verifier is None:
            if sig not in unverified:
                unverified.append(sig)
            continue
        # A known key's signature MUST be verified; a failure rejects the whole note. Every
        # repeat is verified too, and only the first is recorded.
        try:
            timestamp = verifier._verify(text, sig.signature)
        except VerificationError:
            raise VerificationError(
                f"the signature by {_short(sig.name)}+{sig.key_id:08x} does not verify"
            ) from None
        verified.setdefault(
            (sig.name, sig.key_id),
            VerifiedSignature(sig.name, sig.key_id, verifier.sig_type, timestamp),
        )
    # "If no signature from a known key verifies successfully, clients MUST reject the note."
    if not verified:
        raise VerificationUnavailableError("the note carries no signature by a trusted key")
    return OpenedNote(note.text, tuple(verified.values()), tuple(unverified))


def sign_note(
    text: str,
    signers: Sequence[NoteSigner | Cosigner],
    *,
    timestamp: int | None = None,
) -> bytes:
    """Sign ``text`` (which ends with a newline) with every signer; cosigners need ``timestamp``."""
    if not signers:
        raise MalformedError("a note needs at least one signer")
    if not text.endswith("\n"):
        raise MalformedError("note text ends with a newline")
    _check_text(text, "the note text")
    raw = text.encode("utf-8")
    signatures: list[NoteSignature] = []
    for signer in signers:
        if isinstance(signer, Cosigner):
            if timestamp is None:
                raise MalformedError("a cosignature needs a timestamp")
            signatures.append(signer.cosign(raw, timestamp=timestamp))
        else:
            signatures.append(signer.sign(raw))
    return Note(text, tuple(signatures)).to_bytes()


@dataclass(frozen=True)
class Checkpoint:
    """A c2sp.org/tlog-checkpoint note text: origin, tree size, root hash, extension lines."""

    origin: str
    size: int
    root_hash: bytes
    extensions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        # tlog-checkpoint "Note text" (1): the origin is non-empty (and one line).
        if not self.origin or "\n" in self.origin:
            raise MalformedError("a checkpoint origin is one non-empty line")
        _check_text(self.origin, "the checkpoint origin")
        # (2) the tree size; (3) the RFC 6962 root hash.
        if not 0 <= self.size <= MAX_TREE_SIZE:
            raise MalformedError("a checkpoint tree size is between 0 and 2**63 - 1")
        if len(self.root_hash) != HASH_SIZE:
            raise MalformedError("a checkpoint root hash is 32 bytes")
        # tlog-witness: "A checkpoint of size zero MUST have the root hash of the empty tree".
        if self.size == 0 and self.root_hash != EMPTY_ROOT:
            raise MalformedError("an empty checkpoint has the empty tree's root hash")
        # (4) extension lines, if any, are non-empty.
        if len(self.extensions) > MAX_CHECKPOINT_EXTENSIONS:
            raise MalformedError(f"at most {MAX_CHECKPOINT_EXTENSIONS} checkpoint extension lines")
        for line in self.extensions:
            if not line or "\n" in line:
                raise MalformedError("a checkpoint extension is one non-empty line")
            _check_text(line, "a checkpoint extension line")

    @classmethod
    def parse(cls, text: str) -> Checkpoint:
        """Parse a checkpoint note text strictly (the final newline included)."""
        if len(text) > MAX_NOTE_BYTES:
            raise MalformedError("the checkpoint is too large")
        if not text.endswith("\n"):
            raise MalformedError("a checkpoint ends with a newline")
        lines = text[:-1].split("\n")
        if len(lines) < 3:
            raise MalformedError("a checkpoint has an origin, a tree size and a root hash")
        origin, size, root, *extensions = lines
        # (2) "ASCII decimal ... with no leading zeroes (unless the tree is empty)".
        if not _DECIMAL.fullmatch(size):
            raise MalformedError("a checkpoint tree size is a decimal number without leading zeros")
        return cls(origin, int(size), _b64decode(root, "the root hash"), tuple(extensions))

    def to_text(self) -> str:
        lines = [self.origin, str(self.size), _b64(self.root_hash), *self.extensions]
        return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class VerifiedCheckpoint:
    """A checkpoint signed by its log, with the cosignatures that verified."""

    checkpoint: Checkpoint
    log_signature: VerifiedSignature
    cosignatures: tuple[VerifiedSignature, ...]


def sign_checkpoint(checkpoint: Checkpoint, *, signer: NoteSigner) -> bytes:
    """The log's signed note for ``checkpoint``; the key name must be the origin."""
    if signer.name != checkpoint.origin:
        raise MalformedError("the log's key name must be the checkpoint origin")
    return sign_note(checkpoint.to_text(), [signer])


def open_checkpoint(
    data: bytes,
    *,
    log: NoteVerifier,
    witnesses: Sequence[NoteVerifier] = (),
    now: int | None = None,
    max_future_skew: int = 60,  # seconds a cosignature timestamp may run ahead of ``now``
) -> VerifiedCheckpoint:
    """Open a checkpoint note signed by ``log`` and return the witnesses' cosignatures.

    The origin must be the log key's name. A bad signature by the log or by any listed witness
    rejects the note. With ``now``, a cosignature dated more than ``max_future_skew`` seconds
    ahead is rejected. Counting cosignatures against a quorum is the caller's policy.
    """
    if log.sig_type != SIG_ED25519:
        raise MalformedError("a log key is an Ed25519 note key (type 0x01)")
    if any(w.sig_type != SIG_COSIGNATURE_V1 for w in witnesses):
        raise MalformedError("a witness key is a cosignature key (type 0x04)")
    opened = open_note(data, verifiers=[log, *witnesses])
    log_sig = opened.signed_by(log)
    if log_sig is None:
        raise VerificationUnavailableError("the checkpoint carries no signature by the log key")
    checkpoint = Checkpoint.parse(opened.text)
    if checkpoint.origin != log.name:
        raise VerificationError("the checkpoint origin is not the log's name")
    cosignatures = tuple(s for s in opened.verified if s.sig_type == SIG_COSIGNATURE_V1)
    if now is not None:
        for sig in cosignatures:
            _check_not_future(sig, now=now, max_future_skew=max_future_skew)
    return VerifiedCheckpoint(checkpoint, log_sig, cosignatures)


def _check_not_future(sig: VerifiedSignature, *, now: int, max_future_skew: int) -> None:
    # tlog-cosignature: "verifiers MAY reject cosignatures with timestamps in the future".
    if sig.timestamp is not None and sig.timestamp > now + max_future_skew:
        raise VerificationError(f"the cosignature by {_short(sig.name)} is dated in the future")


def cosign_checkpoint(
    checkpoint: Checkpoint, *, cosigner: Cosigner, timestamp: int
) -> NoteSignature:
    """A witness's cosignature on ``checkpoint`` at ``timestamp`` (POSIX seconds).

    The caller (the witness) must first have verified the log's signature and the consistency
    proof from the last checkpoint it cosigned; this function only signs.
    """
    return cosigner.cosign(checkpoint.to_text().encode("utf-8"), timestamp=timestamp)


def verify_cosignature(
    checkpoint: Checkpoint,
    signature: NoteSignature,
    *,
    verifier: NoteVerifier,
    now: int | None = None,
    max_future_skew: int = 60,  # seconds
) -> int:
    """Verify one cosignature line on ``checkpoint``; return its timestamp."""
    if verifier.sig_type != SIG_COSIGNATURE_V1:
        raise MalformedError("a witness key is a cosignature key (type 0x04)")
    if (signature.name, signature.key_id) != (verifier.name, verifier.key_id):
        raise VerificationUnavailableError("the cosignature is not by this witness key")
    text = checkpoint.to_text().encode("utf-8")
    try:
        timestamp = verifier._verify(text, signature.signature)
    except VerificationError:
        raise VerificationError(
            f"the cosignature by {_short(signature.name)} does not verify"
        ) from None
    if timestamp is None:  # unreachable: a type 0x04 verifier always returns one
        raise VerificationError("the cosignature carries no timestamp")
    if now is not None:
        _check_not_future(
            VerifiedSignature(signature.name, signature.key_id, verifier.sig_type, timestamp),
            now=now,
            max_future_skew=max_future_skew,
        )
    return timestamp


@dataclass(frozen=True)
class AddCheckpointRequest:
    """The body of a c2sp.org/tlog-witness ``add-checkpoint`` request."""

    old_size: int
    proof: tuple[bytes, ...]
    checkpoint: bytes  # the signed checkpoint note

    def to_bytes(self) -> bytes:
        if not 0 <= self.old_size <= MAX_TREE_SIZE:
            raise MalformedError("old size out of range")
        if len(self.proof) > MAX_WITNESS_PROOF_HASHES:
            raise MalformedError("too many consistency proof lines")
        lines = [f"old {self.old_size}", *(_b64(h) for h in self.proof)]
        return ("\n".join(lines) + "\n\n").encode("ascii") + self.checkpoint

    @classmethod
    def parse(cls, body: bytes) -> AddCheckpointRequest:
        """Parse strictly: an old size line, up to 63 proof lines, a blank line, the note."""
        limit = MAX_NOTE_BYTES + 64 * (MAX_WITNESS_PROOF_HASHES + 1)
        if len(body) > limit:
            raise MalformedError("the add-checkpoint request is too large")
        split = body.find(b"\n\n")
        if split < 0:
            raise MalformedError("an add-checkpoint request has a blank line before the note")
        try:
            head = body[:split].decode("ascii")
        except UnicodeDecodeError as exc:
            raise MalformedError("the add-checkpoint header is ASCII") from exc
        old, *proof_lines = head.split("\n")
        # "old", a single space, and the size in decimal with no leading zeroes.
        keyword, _, size = old.partition(" ")
        if keyword != "old" or not _DECIMAL.fullmatch(size) or int(size) > MAX_TREE_SIZE:
            raise MalformedError("the first line is 'old <size>'")
        if len(proof_lines) > MAX_WITNESS_PROOF_HASHES:
            raise MalformedError("at most 63 consistency proof lines")
        proof = tuple(_b64decode(line, "a consistency proof line") for line in proof_lines)
        if any(len(h) != HASH_SIZE for h in proof):
            raise MalformedError("a consistency proof line is a 32-byte hash")
        note = body[split + 2 :]
        parse_note(note)  # well-formed; the witness verifies it against the log's key
        return cls(int(size), proof, note)
