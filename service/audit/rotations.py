"""A log's keys across key rotations, followed from the rotation records in the log itself.

``entente keys rotate`` logs a ``key.rotated`` entry whose detail carries the rotation record:
the new node descriptor (a DSSE envelope signed by the new key AND the retired one), the
retired key's public key (``previous_key``) and the descriptor it retires
(``previous_descriptor``, signed by that key). The signing keys form the chain of trust; the
key that signs the log's checkpoints in each period is the one that period's descriptor
advertises as its ``checkpoint_key`` (a key that signs checkpoints and nothing else, C2SP
signed-note), or its signing key when it advertises none (homes made before checkpoint keys,
and records logged before ``previous_descriptor``). The node is stopped while it rotates, so every
checkpoint signed with the retired key has a size at most the entry's ``seq`` (it does not cover
its own retirement), and every checkpoint after it is signed with the new key.

:func:`follow_rotations` turns those entries into :class:`LogKeys`: the chain of keys, oldest
first, each linked to the next by a descriptor both signed, ending at the node's current key,
and the size up to which each retired key may sign. So a verifier pinned to any key of the
chain (given out of band, or remembered from an earlier run) follows the node's rotations
without being handed old keys, and a retired key (stolen from an old backup, say) verifies no
checkpoint beyond its retirement.

Nothing here is trusted on its own: the verifier also checks that each record is the entry the
log holds at its seq (its leaf hash, :attr:`LogKeys.records`). This module reads no clock and
does no I/O.
"""

from __future__ import annotations

import base64
import binascii
import json
from bisect import bisect_left
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from crypto import strict_json
from crypto.descriptor import NodeDescriptor, verify_descriptor
from crypto.dsse import Envelope
from crypto.errors import CryptoError, MalformedError
from crypto.keys import VerifyKey
from crypto.note import NoteVerifier, parse_note
from service.audit.errors import RotationError
from service.audit.leaves import entry_leaf

__all__ = ["ROTATION_KIND", "LogKeys", "follow_rotations", "log_key", "rotation_record"]

ROTATION_KIND = "key.rotated"


@dataclass(frozen=True)
class LogKeys:
    """Which key signs the log's checkpoints at each size.

    ``keys[i]`` signs checkpoints of sizes ``(retired_at[i - 1], retired_at[i]]`` (unbounded at
    either end), where ``retired_at[i]`` is the seq of the entry that logs ``keys[i]``'s
    retirement."""

    origin: str
    keys: tuple[VerifyKey, ...]  # the checkpoint keys, oldest first; the last is current
    retired_at: tuple[int, ...] = ()  # len(keys) - 1 seqs, increasing
    records: tuple[tuple[int, bytes], ...] = ()  # (seq, leaf hash) of each rotation record
    # the node's signing keys (the chain of trust operators pin), in step with ``keys``
    identities: tuple[str, ...] = ()

    @classmethod
    def single(cls, verifier: NoteVerifier) -> LogKeys:
        return cls(verifier.name, (verifier.key,))

    def verifier(self, index: int) -> NoteVerifier:
        return NoteVerifier(self.origin, self.keys[index])

    def for_size(self, size: int) -> NoteVerifier:
        """The key that may sign a checkpoint of ``size`` entries."""
        return self.verifier(bisect_left(self.retired_at, size))

    @property
    def fingerprints(self) -> tuple[str, ...]:
        """The node's signing keys over the log's life (what an operator pins), oldest first."""
        return self.identities or tuple(k.fingerprint for k in self.keys)

    def explain_failure(self, note: bytes) -> str:
        """Why a checkpoint did not verify, when it is signed by a key of the chain that was
        not valid at its size (a retired key past its retirement); else ''."""
        try:
            parsed = parse_note(note)
        except (CryptoError, ValueError):
            return ""
        ids = {sig.key_id for sig in parsed.signatures}
        for i, _key in enumerate(self.keys):
            if self.verifier(i).key_id in ids and i < len(self.retired_at):
                return (
                    f" (it is signed by key {self.keys[i].fingerprint[:16]}…, retired at seq "
                    f"{self.retired_at[i]}: a retired key verifies only checkpoints up to size "
                    f"{self.retired_at[i]})"
                )
        return ""


def rotation_record(
    envelope: Envelope, previous_key: VerifyKey, previous_descriptor: Envelope | None = None
) -> dict[str, Any]:
    """The detail fields of a ``key.rotated`` entry that let verifiers follow the rotation."""
    record: dict[str, Any] = {
        "descriptor": json.loads(envelope.to_bytes()),
        "previous_key": base64.b64encode(previous_key.raw).decode("ascii"),
    }
    if previous_descriptor is not None:
        record["previous_descriptor"] = json.loads(previous_descriptor.to_bytes())
    return record


def log_key(descriptor: NodeDescriptor) -> VerifyKey:
    """The key that signs a node's checkpoints while ``descriptor`` is current."""
    return descriptor.checkpoint_key or descriptor.signing_key


def _previous_log_key(
    entry: Mapping[str, Any], detail: Mapping[str, Any], old: VerifyKey, node_id: str
) -> VerifyKey:
    """The retired period's checkpoint key, from the retired descriptor the record carries
    (signed by the retired key, which the chain already trusts); the retired key itself for a
    record without one."""
    raw = detail.get("previous_descriptor")
    if raw is None:
        return old
    seq = entry.get("seq")
    try:
        envelope = Envelope.from_bytes(json.dumps(raw).encode("utf-8"))
        created = NodeDescriptor.from_json(strict_json.loads(envelope.payload)).created
        previous = verify_descriptor(envelope, now=created, expected_fingerprint=old.fingerprint)
    except (TypeError, ValueError, MalformedError):
        raise RotationError(
            f"the retired descriptor in the record at seq {seq} is malformed"
        ) from None
    except CryptoError as exc:
        raise RotationError(
            f"the retired descriptor in the record at seq {seq} does not verify: {exc}"
        ) from None
    if previous.node_id != node_id:
        raise RotationError(f"the retired descriptor at seq {seq} is for another node")
    return log_key(previous)


def _descriptor(
    entry: Mapping[str, Any], node_id: str
) -> tuple[VerifyKey, NodeDescriptor, VerifyKey]:
    seq = entry.get("seq")
    try:
        # The record is the node's (or a copy's) word: parsed strictly, bounded in depth.
        detail = strict_json.loads(str(entry["detail"]))
        envelope = Envelope.from_bytes(json.dumps(detail["descriptor"]).encode("utf-8"))
        old = VerifyKey(base64.b64decode(str(detail["previous_key"]), validate=True))
        created = NodeDescriptor.from_json(strict_json.loads(envelope.payload)).created
        # Signed by the new key and by the one it retires; an expired descriptor still names
        # the key of its time.
        descriptor = verify_descriptor(envelope, now=created, previous=old)
        old_log_key = _previous_log_key(entry, detail, old, node_id)
    except (KeyError, TypeError, ValueError, binascii.Error, MalformedError):
        raise RotationError(
            f"the key rotation logged at seq {seq} carries no usable rotation record (logged "
            "by an older version?): its keys cannot be followed"
        ) from None
    except CryptoError as exc:
        raise RotationError(f"the rotation record at seq {seq} does not verify: {exc}") from None
    if descriptor.node_id != node_id:
        raise RotationError(f"the rotation record at seq {seq} is for another node")
    return old, descriptor, old_log_key


def follow_rotations(
    origin: str,
    *,
    node_id: str,
    current: VerifyKey,
    entries: Sequence[Mapping[str, Any]],
    current_log_key: VerifyKey | None = None,
) -> LogKeys:
    """The log's keys from its ``key.rotated`` entries (in any order), ending at ``current``
    (the signing key of the node's descriptor) and ``current_log_key`` (its checkpoint key;
    ``None``: the signing key signs checkpoints). Raises :class:`RotationError`."""
    keys: list[VerifyKey] = []
    log_keys: list[VerifyKey] = []
    retired_at: list[int] = []
    records: list[tuple[int, bytes]] = []
    for entry in entries:
        if not isinstance(entry, Mapping) or type(entry.get("seq")) is not int:
            raise RotationError(
                "a key rotation the log lists is not an entry with a seq: its keys cannot be "
                "followed"
            )
    for entry in sorted(entries, key=lambda e: int(e["seq"])):
        seq = int(entry["seq"])
        old, descriptor, old_log_key = _descriptor(entry, node_id)
        if not keys:
            keys.append(old)
            log_keys.append(old_log_key)
        elif log_keys[-1].fingerprint != old_log_key.fingerprint:
            raise RotationError(
                f"the rotation at seq {seq} retires checkpoint key {old_log_key.fingerprint[:16]}…"
                f", but the key in use then was {log_keys[-1].fingerprint[:16]}…"
            )
        if keys[-1].fingerprint != old.fingerprint:
            raise RotationError(
                f"the rotation at seq {seq} retires key {old.fingerprint[:16]}…, but the key "
                f"in use then was {keys[-1].fingerprint[:16]}…"
            )
        keys.append(descriptor.signing_key)
        log_keys.append(log_key(descriptor))
        retired_at.append(seq)
        try:
            records.append((seq, entry_leaf(entry)))
        except (CryptoError, KeyError, TypeError) as exc:
            raise RotationError(f"the rotation entry at seq {seq} is malformed: {exc}") from None
    current_log = current_log_key or current
    if not keys:
        return LogKeys(origin, (current_log,), identities=(current.fingerprint,))
    if keys[-1].fingerprint != current.fingerprint:
        raise RotationError(
            f"the node's key {current.fingerprint[:16]}… is not the last key of its rotation "
            f"history ({keys[-1].fingerprint[:16]}…)"
        )
    if log_keys[-1].fingerprint != current_log.fingerprint:
        raise RotationError(
            f"the node's checkpoint key {current_log.fingerprint[:16]}… is not the one its last "
            f"rotation brought ({log_keys[-1].fingerprint[:16]}…)"
        )
    return LogKeys(
        origin,
        tuple(log_keys),
        tuple(retired_at),
        tuple(records),
        identities=tuple(k.fingerprint for k in keys),
    )
