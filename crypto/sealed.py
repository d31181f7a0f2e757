"""Sealed artifacts: an age v1 file plus a DSSE-signed in-toto manifest that binds it.

A sealed artifact is two things:

* the *ciphertext*, a plain age v1 file encrypted to every recipient (the permitted partners'
  keys and the origin node's own key); any age implementation decrypts it;
* the *manifest*, a DSSE envelope (payloadType ``application/vnd.in-toto+json``) signed by the
  origin's Ed25519 key and, once the origin has one, its ML-DSA-65 key too (a hybrid envelope:
  ``crypto.keyset``), whose payload is an in-toto Statement v1::

      {"_type": "https://in-toto.io/Statement/v1",
       "subject": [{"name": <artifact id>, "digest": {"sha256": <plaintext SHA-256>}}],
       "predicateType": "https://entente.dev/artifact-manifest/v1",
       "predicate": {"artifact_id", "title", "origin", "tlp", "topics", "purposes", "created",
                     "embargo_until", "expires_at", "recipients": [{"node_id", "recipient"}],
                     "policy", "size", "age_header_sha256", "chain", "sealing",
                     "filename"?, "evaluation"?}}

``sealing`` names the kind of age recipients the file is sealed to (``crypto.sealing``):
``"x25519"`` or ``"mlkem768x25519"`` (hybrid post-quantum). It is checked on parse against the
recipients listed: every one must be of that kind. A manifest written before the field existed
has no ``sealing`` and parses as ``"x25519"``.

Two optional fields are present only when the publisher gave them (a manifest without them is
the same bytes as before they existed): ``filename``, the plaintext's original file name (a base
name: no path, no control characters, at most 255 characters), under which a recipient writes
it; and ``evaluation``, a JSON object of at most ``MAX_EVALUATION_BYTES`` (canonical JSON) that
summarises an evaluation log for a partner deciding whether to open it (its shape is the
shell's: ``service.evaluations``; here it is only bounded).

``age_header_sha256`` is the SHA-256 of the age header bytes, from the version line through the
newline ending the MAC line. The header MAC is keyed by the file key, so this digest binds the
recipient stanzas *and* the file key: nobody can re-encrypt the same plaintext under the same
manifest, and a verifier without any key can check that a ciphertext is the one signed.
``policy`` is a JSON object from the caller (the policy decision reference). So that recipients
of one artifact do not read each other's decisions and MOU clauses, Entente's manifests commit to
each recipient's decision without showing it: ``policy.decisions`` lists ``{"partner", "sha256"}``,
the SHA-256 of that recipient's *disclosure* (:func:`disclosure`: its decision, a random salt),
which travels with its delivery only and is checked with :func:`verify_disclosure`. ``chain``
holds upstream manifests (DSSE envelopes as JSON objects) for onward sharing; it is empty for
an original share. Times are RFC 3339 UTC (``...Z``).

Recipes:

* :func:`seal` streams the source once: SHA-256 and age encryption in the same pass (the hash on
  a helper thread), then signs the manifest. Constant memory.
* :func:`verify` checks the signature, the statement's shape, and the ciphertext's header digest.
  No key is needed and nothing is decrypted.
* :func:`open_sealed` verifies the signature and the header digest *before* any identity touches
  the header, decrypts, and checks the plaintext digest and size at the end. Plaintext streams
  to the caller's writer. :func:`decrypt_verified` is its second half, for a caller that has
  verified the manifest itself (the node's receiver).

Failures are :class:`~crypto.errors.VerificationError` (signature, digests),
:class:`~crypto.errors.VerificationUnavailableError` (no trusted key signed it),
:class:`~crypto.errors.MalformedError` (the manifest is not of this shape), and the
:class:`~crypto.errors.DecryptionError` family (the age file itself). Messages never include key
material or plaintext.

This module does not decide whom to encrypt to, which keys to trust, or whether an embargo or
expiry allows a read: that is the policy engine's job, with the manifest's fields as input. It
opens no file: writing a plaintext or a sealed file all or nothing (temporary file, fsync,
rename) is the shell's (``service.files``).
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import io
import json
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from crypto import age, strict_json
from crypto.age import CHUNK_SIZE, Identity, Reader, Rng, Writer
from crypto.dsse import Envelope, sign_envelope, verify_envelope
from crypto.errors import DecryptionError, MalformedError, SealingKindError, VerificationError
from crypto.keys import SigningKey, Verifier
from crypto.keyset import KeySet, SignerSet, signers_of
from crypto.names import MAX_FILENAME_CHARS, is_base_name
from crypto.sealing import SEALING_KINDS, SEALING_X25519, kind_of, sealing_kind
from crypto.vocab import MAX_TERM_CHARS, TLP_LABELS, is_node_id, is_term

__all__ = [
    "DISCLOSURE_KEYS",
    "MANIFEST_PAYLOAD_TYPE",
    "PREDICATE_TYPE",
    "STATEMENT_TYPE",
    "Manifest",
    "ManifestRecipient",
    "Sealed",
    "committed_decisions",
    "decrypt_verified",
    "disclosure",
    "disclosure_digest",
    "load_envelope",
    "open_sealed",
    "seal",
    "sign_manifest",
    "verify",
    "verify_disclosure",
    "verify_manifest",
]

MANIFEST_PAYLOAD_TYPE = "application/vnd.in-toto+json"
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://entente.dev/artifact-manifest/v1"

MAX_TITLE_CHARS = 500
MAX_LABELS = 64  # topics, purposes: entries each, each a term of crypto.vocab
MAX_RECIPIENTS = 64
MAX_CHAIN = 16  # upstream manifests
MAX_EVALUATION_BYTES = 16 * 1024  # canonical JSON of the ``evaluation`` summary
MAX_EVALUATION_DEPTH = 6  # nesting of its objects and lists

_ARTIFACT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_SALT_HEX = re.compile(r"[0-9a-f]{32,128}")
_TIMESTAMP = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?Z")
_STATEMENT_KEYS = frozenset({"_type", "subject", "predicateType", "predicate"})
_PREDICATE_KEYS = frozenset(
    {
        "artifact_id",
        "title",
        "origin",
        "tlp",
        "topics",
        "purposes",
        "created",
        "embargo_until",
        "expires_at",
        "recipients",
        "policy",
        "size",
        "age_header_sha256",
        "chain",
        "sealing",
    }
)
_PREDICATE_KEYS_V1_0 = _PREDICATE_KEYS - {"sealing"}  # before the sealing kind was recorded
_OPTIONAL_KEYS = frozenset({"filename", "evaluation"})  # present only when given

ProgressCallback = Callable[[int], None]  # called with the plaintext bytes processed so far


# --- the manifest -----------------------------------------------------------------------------


def _format_time(value: datetime) -> str:
    utc = value.astimezone(UTC)
    # isoformat, not strftime: glibc's %Y does not pad years before 1000 ("500-01-01"), which
    # _parse_time (rightly) refuses, so such a manifest could never be verified again.
    text = utc.replace(tzinfo=None).isoformat(timespec="seconds")
    if utc.microsecond:
        text += f".{utc.microsecond:06d}"
    return text + "Z"


def _parse_time(value: object, name: str) -> datetime:
    if not isinstance(value, str) or not _TIMESTAMP.fullmatch(value):
        raise MalformedError(f"manifest field {name!r} must be an RFC 3339 UTC time (…Z)")
    try:
        return datetime.fromisoformat(value[:-1] + "+00:00")
    except ValueError:
        raise MalformedError(f"manifest field {name!r} is not a valid time") from None


def _parse_optional_time(value: object, name: str) -> datetime | None:
    return None if value is None else _parse_time(value, name)


def _check_aware(value: datetime | None, name: str, *, optional: bool) -> None:
    if value is None and optional:
        return
    if not isinstance(value, datetime) or value.tzinfo is None or value.utcoffset() is None:
        raise MalformedError(f"manifest field {name!r} must be a timezone-aware datetime")


def _check_labels(values: object, name: str) -> None:
    if not isinstance(values, tuple) or len(values) > MAX_LABELS:
        raise MalformedError(f"manifest field {name!r} is a list of at most {MAX_LABELS} strings")
    for value in values:
        if not is_term(value):
            raise MalformedError(
                f"each entry of {name!r} is a term: lowercase segments separated by '/', "
                f"at most {MAX_TERM_CHARS} characters"
            )


def _check_json_object(value: object, name: str) -> dict[str, Any]:
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise MalformedError(f"manifest field {name!r} must be a JSON object")
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        raise MalformedError(f"manifest field {name!r} must hold JSON values only") from None
    return value


def _check_filename(value: object) -> None:
    if value is None:
        return
    if not isinstance(value, str) or not is_base_name(value):
        raise MalformedError(
            f"manifest field 'filename' is a base name of 1 to {MAX_FILENAME_CHARS} characters: "
            "no path, no control or bidi characters"
        )


def _depth(value: object) -> int:
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    return 0


def _check_evaluation(value: object) -> None:
    if value is None:
        return
    _check_json_object(value, "evaluation")
    if _depth(value) > MAX_EVALUATION_DEPTH:
        raise MalformedError(
            f"manifest field 'evaluation' nests at most {MAX_EVALUATION_DEPTH} levels deep"
        )
    if len(_canonical(value)) > MAX_EVALUATION_BYTES:
        raise MalformedError(
            f"manifest field 'evaluation' is at most {MAX_EVALUATION_BYTES} bytes of JSON"
        )


@functools.lru_cache(maxsize=1024)
def _parse_recipient(text: str) -> age.X25519Recipient | age.HybridRecipient:
    """Parse once: Bech32 is costly in Python (a hybrid recipient is 1216 bytes, over a
    millisecond each), and the same strings recur on every share. Recipients are immutable."""
    return age.parse_recipient(text)


@functools.lru_cache(maxsize=1024)
def _is_canonical_recipient(text: str) -> bool:
    """Parse and re-encode: only the canonical spelling of a recipient is accepted."""
    return _parse_recipient(text).to_string() == text


@dataclass(frozen=True)
class ManifestRecipient:
    """A recipient of a sealed artifact: the node's id and the age recipient string used."""

    node_id: str
    recipient: str

    def __post_init__(self) -> None:
        if not is_node_id(self.node_id):
            raise MalformedError("a recipient's node_id is not a valid node id")
        if not isinstance(self.recipient, str):
            raise MalformedError("a recipient's age recipient is a string")
        if not _is_canonical_recipient(self.recipient):
            raise MalformedError("a recipient's age recipient is not in its canonical form")

    def to_age(self) -> age.X25519Recipient | age.HybridRecipient:
        return _parse_recipient(self.recipient)


@dataclass(frozen=True)
class Manifest:
    """The signed facts about one sealed artifact. Construction validates every field."""

    artifact_id: str
    title: str
    origin: str
    tlp: str
    topics: tuple[str, ...]
    purposes: tuple[str, ...]
    created: datetime
    embargo_until: datetime | None
    expires_at: datetime | None
    recipients: tuple[ManifestRecipient, ...]
    policy: dict[str, Any] = field(hash=False)
    size: int
    sha256: str
    age_header_sha256: str
    chain: tuple[dict[str, Any], ...] = field(default=(), hash=False)
    sealing: str = SEALING_X25519
    filename: str | None = None
    evaluation: dict[str, Any] | None = field(default=None, hash=False)

    def __post_init__(self) -> None:
        if not isinstance(self.artifact_id, str) or not _ARTIFACT_ID.fullmatch(self.artifact_id):
            raise MalformedError(
                "an artifact id is 1 to 64 characters: letters, digits, '.', '_', ':' or '-'"
            )
        if not isinstance(self.title, str) or not 0 < len(self.title) <= MAX_TITLE_CHARS:
            raise MalformedError(f"the title is 1 to {MAX_TITLE_CHARS} characters")
        if not is_node_id(self.origin):
            raise MalformedError("the origin is not a valid node id")
        if self.tlp not in TLP_LABELS:
            raise MalformedError(f"the TLP label must be one of {', '.join(TLP_LABELS)}")
        _check_labels(self.topics, "topics")
        _check_labels(self.purposes, "purposes")
        _check_aware(self.created, "created", optional=False)
        _check_aware(self.embargo_until, "embargo_until", optional=True)
        _check_aware(self.expires_at, "expires_at", optional=True)
        if (
            not isinstance(self.recipients, tuple)
            or not 0 < len(self.recipients) <= MAX_RECIPIENTS
            or not all(isinstance(r, ManifestRecipient) for r in self.recipients)
        ):
            raise MalformedError(f"a manifest names 1 to {MAX_RECIPIENTS} recipients")
        _check_json_object(self.policy, "policy")
        if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 0:
            raise MalformedError("the size is a non-negative integer")
        for name in ("sha256", "age_header_sha256"):
            value = getattr(self, name)
            if not isinstance(value, str) or not _SHA256_HEX.fullmatch(value):
                raise MalformedError(f"{name} must be 64 lowercase hexadecimal digits")
        if not isinstance(self.chain, tuple) or len(self.chain) > MAX_CHAIN:
            raise MalformedError(f"the chain holds at most {MAX_CHAIN} upstream manifests")
        for upstream in self.chain:
            Envelope.from_json(_check_json_object(upstream, "chain"))
        if self.sealing not in SEALING_KINDS:
            raise MalformedError(f"the sealing kind must be one of {', '.join(SEALING_KINDS)}")
        if any(kind_of(r.recipient) != self.sealing for r in self.recipients):
            raise SealingKindError(
                f"the manifest says it is sealed with {self.sealing} but lists a recipient "
                "of another kind"
            )
        _check_filename(self.filename)
        _check_evaluation(self.evaluation)

    def to_statement(self) -> dict[str, Any]:
        """The in-toto Statement v1 (a JSON object) this manifest is."""
        predicate: dict[str, Any] = {
            "artifact_id": self.artifact_id,
            "title": self.title,
            "origin": self.origin,
            "tlp": self.tlp,
            "topics": list(self.topics),
            "purposes": list(self.purposes),
            "created": _format_time(self.created),
            "embargo_until": (
                None if self.embargo_until is None else _format_time(self.embargo_until)
            ),
            "expires_at": None if self.expires_at is None else _format_time(self.expires_at),
            "recipients": [
                {"node_id": r.node_id, "recipient": r.recipient} for r in self.recipients
            ],
            "policy": self.policy,
            "size": self.size,
            "age_header_sha256": self.age_header_sha256,
            "chain": list(self.chain),
            "sealing": self.sealing,
        }
        if self.filename is not None:
            predicate["filename"] = self.filename
        if self.evaluation is not None:
            predicate["evaluation"] = self.evaluation
        return {
            "_type": STATEMENT_TYPE,
            "subject": [{"name": self.artifact_id, "digest": {"sha256": self.sha256}}],
            "predicateType": PREDICATE_TYPE,
            "predicate": predicate,
        }

    def to_payload(self) -> bytes:
        """The statement as compact JSON with sorted keys: the bytes the envelope signs."""
        return json.dumps(
            self.to_statement(), sort_keys=True, separators=(",", ":"), ensure_ascii=False
        ).encode("utf-8")

    @classmethod
    def from_statement(cls, data: object) -> Manifest:
        """Parse a statement strictly: unknown, missing or mistyped fields are malformed."""
        if not isinstance(data, dict) or set(data) != _STATEMENT_KEYS:
            raise MalformedError("the manifest is not an in-toto Statement v1 of the expected form")
        if data["_type"] != STATEMENT_TYPE:
            raise MalformedError("the manifest is not an in-toto Statement v1")
        if data["predicateType"] != PREDICATE_TYPE:
            raise MalformedError("the manifest's predicateType is not an Entente artifact manifest")
        pred = data["predicate"]
        if not isinstance(pred, dict) or set(pred) - _OPTIONAL_KEYS not in (
            _PREDICATE_KEYS,
            _PREDICATE_KEYS_V1_0,
        ):
            raise MalformedError("the manifest predicate has missing or unknown fields")
        if any(k in pred and pred[k] is None for k in _OPTIONAL_KEYS):
            raise MalformedError("an optional manifest field is left out, never null")
        subject = data["subject"]
        if (
            not isinstance(subject, list)
            or len(subject) != 1
            or not isinstance(subject[0], dict)
            or set(subject[0]) != {"name", "digest"}
            or not isinstance(subject[0]["digest"], dict)
            or set(subject[0]["digest"]) != {"sha256"}
        ):
            raise MalformedError("the manifest subject must be one artifact with a sha256 digest")
        if subject[0]["name"] != pred["artifact_id"]:
            raise MalformedError("the manifest subject does not name the artifact")
        recipients = pred["recipients"]
        if not isinstance(recipients, list) or not all(
            isinstance(r, dict) and set(r) == {"node_id", "recipient"} for r in recipients
        ):
            raise MalformedError("manifest recipients are objects with node_id and recipient")
        for name in ("topics", "purposes", "chain"):
            if not isinstance(pred[name], list):
                raise MalformedError(f"manifest field {name!r} must be a list")
        return cls(
            artifact_id=pred["artifact_id"],
            title=pred["title"],
            origin=pred["origin"],
            tlp=pred["tlp"],
            topics=tuple(pred["topics"]),
            purposes=tuple(pred["purposes"]),
            created=_parse_time(pred["created"], "created"),
            embargo_until=_parse_optional_time(pred["embargo_until"], "embargo_until"),
            expires_at=_parse_optional_time(pred["expires_at"], "expires_at"),
            recipients=tuple(ManifestRecipient(r["node_id"], r["recipient"]) for r in recipients),
            policy=pred["policy"],
            size=pred["size"],
            sha256=subject[0]["digest"]["sha256"],
            age_header_sha256=pred["age_header_sha256"],
            chain=tuple(pred["chain"]),
            sealing=pred.get("sealing", SEALING_X25519),
            filename=pred.get("filename"),
            evaluation=pred.get("evaluation"),
        )

    @classmethod
    def from_payload(cls, payload: bytes) -> Manifest:
        try:
            data = strict_json.loads(payload)
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise MalformedError("the manifest payload is not valid JSON") from None
        return cls.from_statement(data)


def load_envelope(raw: bytes) -> Envelope:
    """Parse a manifest envelope file strictly: also refuse non-canonical base64.

    DSSE readers accept several base64 spellings of the same bytes; a manifest file whose bytes
    were altered that way would still verify. Entente writes standard padded base64 and accepts
    only that, so any change to the file's encoded fields is an error.
    """
    envelope = Envelope.from_bytes(raw)
    data = strict_json.loads(raw)
    canonical = envelope.to_json()
    if data.get("payload") != canonical["payload"] or [
        s.get("sig") for s in data.get("signatures", [])
    ] != [s["sig"] for s in canonical["signatures"]]:
        raise MalformedError("the manifest envelope uses non-canonical base64")
    return envelope


def sign_manifest(manifest: Manifest, signer: SigningKey | SignerSet) -> Envelope:
    """The manifest as a DSSE envelope signed by ``signer`` (the origin's key, or its set of
    keys: Ed25519 and ML-DSA-65 signatures in one envelope)."""
    return sign_envelope(MANIFEST_PAYLOAD_TYPE, manifest.to_payload(), signers_of(signer))


def verify_manifest(
    envelope: Envelope,
    *,
    trusted: Mapping[str, Verifier] | None = None,
    keysets: Sequence[KeySet] | None = None,
    origin: str | None = None,
    retired: Mapping[str, datetime] | None = None,
) -> Manifest:
    """Check the envelope's signature against ``keysets`` or ``trusted`` and parse the manifest.

    ``keysets`` are the key sets of the node the manifest claims as its origin (its current and
    retired ones): the envelope must be signed by every key of one of them (Ed25519 and, once the
    origin has advertised one, ML-DSA-65). ``trusted``, the older form, maps fingerprints to keys
    and accepts a signature by any one of them. ``origin``, when given, must be the manifest's
    origin. ``retired`` maps the fingerprints of retired keys (with ``keysets``: of retired sets,
    named by their Ed25519 key) to when they were retired: such a key verifies only a manifest it
    signed before then (its signed ``created``), never a new one. Raises
    :class:`VerificationUnavailableError` when no trusted key signed it, and
    :class:`VerificationError` when the signature does not verify or only a key retired before
    the manifest's creation signed it.
    """
    if (keysets is None) == (trusted is None):
        raise ValueError("verify_manifest takes either keysets= or trusted=")
    try:
        if keysets is not None:
            payload, sets = verify_envelope(
                envelope, keysets=keysets, payload_type=MANIFEST_PAYLOAD_TYPE
            )
            good = frozenset(ks.fingerprint for ks in sets)
        else:
            payload, good = verify_envelope(
                envelope, trusted=trusted or {}, payload_type=MANIFEST_PAYLOAD_TYPE
            )
    except VerificationError:
        raise VerificationError("the manifest signature does not verify") from None
    manifest = Manifest.from_payload(payload)
    if origin is not None and manifest.origin != origin:
        raise VerificationError("the manifest names another origin than the node that signed it")
    if retired and all(k in retired and manifest.created >= retired[k] for k in good):
        raise VerificationError(
            "the manifest is signed by a key its origin retired before the manifest was created"
        )
    return manifest


# --- per-recipient decisions (committed in the manifest, disclosed to each recipient) -----------

DISCLOSURE_KEYS = frozenset({"partner", "salt", "decision", "onward"})
MAX_DISCLOSURE_BYTES = 64 * 1024  # bytes of one recipient's disclosed decision


def _canonical(value: object) -> bytes:
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def disclosure(
    partner: str,
    decision: Mapping[str, Any],
    *,
    onward: Mapping[str, Any] | None = None,
    salt: bytes,
) -> dict[str, Any]:
    """What one recipient is told of the policy decisions behind a share: its own decision
    (and, on an onward share, the sharer's onward decision for it), with a random ``salt``
    (at least 16 bytes) that keeps the manifest's commitment to it from being guessed."""
    if len(salt) < 16:
        raise MalformedError("a disclosure's salt is at least 16 bytes")
    return {
        "partner": partner,
        "salt": salt.hex(),
        "decision": dict(decision),
        "onward": None if onward is None else dict(onward),
    }


def disclosure_digest(disclosed: Mapping[str, Any]) -> str:
    """The SHA-256 (hex) the manifest commits to for one recipient's disclosure: of its
    canonical JSON (sorted keys, no spaces, UTF-8), salt included."""
    try:
        return hashlib.sha256(_canonical(disclosed)).hexdigest()
    except (TypeError, ValueError):
        raise MalformedError("a disclosure holds JSON values only") from None


def committed_decisions(manifest: Manifest) -> dict[str, str]:
    """Partner -> digest of the decisions the manifest commits to without showing them."""
    entries = manifest.policy.get("decisions")
    out: dict[str, str] = {}
    for entry in entries if isinstance(entries, list) else []:
        if (
            isinstance(entry, dict)
            and set(entry) == {"partner", "sha256"}
            and isinstance(entry["partner"], str)
            and isinstance(entry["sha256"], str)
        ):
            out[entry["partner"]] = entry["sha256"]
    return out


def verify_disclosure(manifest: Manifest, partner: str, disclosed: object) -> dict[str, Any]:
    """Check ``disclosed`` against the manifest's commitment for ``partner``; return it.

    Raises :class:`VerificationError` when the manifest commits to no decision for
    ``partner`` or the disclosure does not match it, :class:`MalformedError` when it is not a
    disclosure."""
    if (
        not isinstance(disclosed, dict)
        or set(disclosed) != DISCLOSURE_KEYS
        or disclosed["partner"] != partner
        or not isinstance(disclosed["salt"], str)
        or not _SALT_HEX.fullmatch(disclosed["salt"])
        or not isinstance(disclosed["decision"], dict)
        or not isinstance(disclosed["onward"], dict | None)
    ):
        raise MalformedError(f"not a disclosure of the decision for {partner}")
    if len(_canonical(disclosed)) > MAX_DISCLOSURE_BYTES:
        raise MalformedError("the disclosure is too large")
    committed = committed_decisions(manifest).get(partner)
    if committed is None:
        raise VerificationError(f"the manifest commits to no decision for {partner}")
    if not hmac.compare_digest(committed, disclosure_digest(disclosed)):
        raise VerificationError(f"the disclosed decision for {partner} is not the one signed")
    return disclosed


# --- seal -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sealed:
    """The result of :func:`seal`: the signed manifest and the facts it binds."""

    manifest: Manifest
    envelope: Envelope
    sha256: str  # of the plaintext
    size: int  # plaintext bytes
    header_sha256: str  # of the age header, through the MAC line
    ciphertext_size: int  # bytes written to the sink


class _CountingReader:
    """Passes reads through and reports progress (plaintext bytes read so far)."""

    def __init__(self, reader: Reader, on_progress: ProgressCallback) -> None:
        self._reader = reader
        self._readinto = getattr(reader, "readinto", None)
        self._on_progress = on_progress
        self._count = 0

    def _report(self, n: int) -> int:
        if n:
            self._count += n
            self._on_progress(self._count)
        return n

    def read(self, size: int = -1, /) -> bytes:
        data = self._reader.read(size)
        self._report(len(data))
        return data

    def readinto(self, buffer: memoryview, /) -> int:
        if self._readinto is None:
            data = self._reader.read(len(buffer))
            buffer[: len(data)] = data
            return self._report(len(data))
        n = self._readinto(buffer)
        return self._report(n or 0)


def _ciphertext_size(header: bytes, size: int) -> int:
    chunks = max(1, -(-size // CHUNK_SIZE))
    return len(header) + 16 + size + 16 * chunks


def seal(
    source: Reader,
    sink: Writer,
    *,
    artifact_id: str,
    title: str,
    origin: str,
    tlp: str,
    recipients: Sequence[ManifestRecipient],
    signer: SigningKey | SignerSet | Callable[[], SigningKey | SignerSet],
    policy: Mapping[str, Any],
    now: datetime,
    topics: Iterable[str] = (),
    purposes: Iterable[str] = (),
    embargo_until: datetime | None = None,
    expires_at: datetime | None = None,
    chain: Iterable[Mapping[str, Any]] = (),
    filename: str | None = None,
    evaluation: Mapping[str, Any] | None = None,
    rng: Rng = os.urandom,
    on_progress: ProgressCallback | None = None,
) -> Sealed:
    """Encrypt ``source`` to ``recipients`` into ``sink`` and sign a manifest, in one pass.

    The metadata is validated before a byte is read. ``now`` is the manifest's ``created`` time;
    ``rng`` supplies the file key, nonces and ephemeral keys. ``signer`` is the origin's Ed25519
    key or its :class:`~crypto.keyset.SignerSet` (then the manifest carries both signatures), or
    a callable returning one, called once the payload is sealed: a caller may still be unlocking
    the key (encryption needs only the recipients' public keys).
    The recipients must all be hybrid (the manifest then says ``"sealing": "mlkem768x25519"``)
    or all X25519 (``"x25519"``): ``crypto.sealing.choose_recipients`` picks them. Raises
    :class:`MalformedError` for bad metadata, and its :class:`SealingKindError` (also a
    ``ValueError``) for a mix of the two kinds.
    """
    recipient_list = tuple(recipients)
    if not recipient_list:
        raise MalformedError(f"a manifest names 1 to {MAX_RECIPIENTS} recipients")
    kind = sealing_kind(r.recipient for r in recipient_list)
    policy_obj = dict(policy)
    chain_list = tuple(dict(c) for c in chain)
    draft = Manifest(  # validates every field before any I/O; digests are placeholders
        artifact_id=artifact_id,
        title=title,
        origin=origin,
        tlp=tlp,
        topics=tuple(topics),
        purposes=tuple(purposes),
        created=now,
        embargo_until=embargo_until,
        expires_at=expires_at,
        recipients=recipient_list,
        policy=policy_obj,
        size=0,
        sha256="0" * 64,
        age_header_sha256="0" * 64,
        chain=chain_list,
        sealing=kind,
        filename=filename,
        evaluation=None if evaluation is None else dict(evaluation),
    )
    reader: Reader = source if on_progress is None else _CountingReader(source, on_progress)
    hasher = hashlib.sha256()
    result = age.encrypt(reader, sink, [r.to_age() for r in recipient_list], rng=rng, hasher=hasher)
    header_sha256 = hashlib.sha256(result.header).hexdigest()
    manifest = replace(
        draft,
        size=result.plaintext_size,
        sha256=hasher.hexdigest(),
        age_header_sha256=header_sha256,
    )
    return Sealed(
        manifest=manifest,
        envelope=sign_manifest(manifest, signer() if callable(signer) else signer),
        sha256=manifest.sha256,
        size=manifest.size,
        header_sha256=header_sha256,
        ciphertext_size=_ciphertext_size(result.header, result.plaintext_size),
    )


# --- verify and open --------------------------------------------------------------------------


def _header_mismatch() -> VerificationError:
    return VerificationError("the ciphertext does not match the manifest's header digest")


def _as_reader(ciphertext: Reader | bytes) -> Reader:
    if isinstance(ciphertext, bytes | bytearray | memoryview):
        return io.BytesIO(bytes(ciphertext))
    return ciphertext


def verify(
    envelope: Envelope,
    *,
    ciphertext: Reader | bytes,
    trusted: Mapping[str, Verifier] | None = None,
    keysets: Sequence[KeySet] | None = None,
    origin: str | None = None,
) -> Manifest:
    """Verify a manifest and that ``ciphertext`` (the age file, or just its header) is its file.

    Reads only the age header from ``ciphertext``; needs no decryption key. ``trusted`` and
    ``keysets`` are as for :func:`verify_manifest`.
    """
    manifest = verify_manifest(envelope, trusted=trusted, keysets=keysets, origin=origin)
    try:
        header = age.read_header(_as_reader(ciphertext), armor=False)
    except DecryptionError:
        raise VerificationError("the ciphertext is not a valid age file") from None
    if header.sha256 != manifest.age_header_sha256:
        raise _header_mismatch()
    return manifest


def open_sealed(
    source: Reader,
    sink: Writer,
    *,
    envelope: Envelope,
    identities: Iterable[Identity],
    trusted: Mapping[str, Verifier] | None = None,
    keysets: Sequence[KeySet] | None = None,
    origin: str | None = None,
    reader: str | None = None,
) -> Manifest:
    """Verify and decrypt a sealed artifact, streaming the plaintext to ``sink``.

    Order: the manifest signature; then :func:`decrypt_verified` (``reader``: see there).
    Plaintext reaches ``sink`` before the final check, so on any exception the caller must
    discard what ``sink`` received (the shell's ``service.files.open_sealed_file`` does that
    for files).
    """
    manifest = verify_manifest(envelope, trusted=trusted, keysets=keysets, origin=origin)
    decrypt_verified(manifest, source, sink, identities=identities, reader=reader)
    return manifest


class _Discard:
    def write(self, data: bytes | bytearray | memoryview, /) -> int:
        return len(data)


class _Bounded:
    """Passes the plaintext on to ``sink`` and stops the decryption as soon as it is longer
    than the manifest says: whoever holds the file key can add valid chunks without end, and
    the final size check would come only after all of them were read."""

    def __init__(self, sink: Writer, size: int) -> None:
        self._sink = sink
        self._left = size

    def write(self, data: bytes | bytearray | memoryview, /) -> object:
        if len(data) > self._left:  # checked before the sink sees a byte past the size
            raise VerificationError(  # the final check's words, and why it came early
                "the plaintext digest does not match the manifest: the plaintext is longer "
                "than the manifest's size"
            )
        written = self._sink.write(data)
        self._left -= written if isinstance(written, int) else len(data)
        return written


def decrypt_verified(
    manifest: Manifest,
    source: Reader,
    sink: Writer | None = None,
    *,
    identities: Iterable[Identity],
    reader: str | None = None,
) -> None:
    """Decrypt the age file of a manifest whose signature has been verified, checking it whole.

    The second half of :func:`open_sealed`, for a caller that verified the manifest already
    (:func:`verify_manifest`, with its own key rules): the header digest before any identity
    sees the header, the file key and header MAC, every STREAM chunk, then the plaintext's
    SHA-256 and size. The plaintext streams to ``sink``, or nowhere when it is ``None`` (a
    receiver that keeps the ciphertext and only needs to know it opens to the signed plaintext).
    A plaintext longer than the manifest's size stops the decryption as soon as it is (the
    ciphertext is read at most two blocks further), not at its end.

    ``reader``, the node id of the party decrypting: :func:`seal` writes one stanza per
    recipient in the manifest's order, so the stanza at the reader's place is tried first (at
    20 recipients this saved trying up to 19 others' stanzas, each a failed X25519 or hybrid
    decapsulation). A hint only: every stanza is still tried if that one does not open.
    """
    decryptor = age.Decryptor.parse(source, armor=False)
    if decryptor.header.sha256 != manifest.age_header_sha256:
        raise _header_mismatch()
    first = [i for i, r in enumerate(manifest.recipients) if r.node_id == reader]
    decryptor.unlock(identities, first=first)
    hasher = hashlib.sha256()
    bounded = _Bounded(_Discard() if sink is None else sink, manifest.size)
    size = decryptor.decrypt_to(bounded, hasher=hasher)
    if size != manifest.size or hasher.hexdigest() != manifest.sha256:
        raise VerificationError("the plaintext digest does not match the manifest")
