"""The audit export bundle: a filtered range of one node's log, each entry with its RFC 6962
inclusion proof against one signed checkpoint, and the offline check of such a bundle.

A bundle is JSON Lines (``docs/audit-log.md``, "Export bundles"), each line one compact JSON
object:

1. the header: ``format``, ``node_id``, ``origin``, the signed ``checkpoint`` note (with the
   cosignatures it had), its ``size`` and ``root``, the ``filter`` (``from`` and ``to``, both
   included, ``kind``: a list, empty for any, ``artifact``: an id or null) and ``exported_at``;
2. one line per matching entry, in log order: ``seq``, ``leaf`` (base64 of the entry's exact
   canonical encoding, the bytes whose leaf hash is in the tree) and ``proof`` (base64 hashes);
3. the trailer ``{"end": true, "count": N}``, so that a bundle cut short does not verify.

:func:`verify_bundle` needs nothing but the bundle and the log's key (a C2SP note verifier
key, from the node's descriptor): the checkpoint's signature, every entry's proof against its
root, that every entry is what the filter says, that entries are in log order, and, for a range
without a kind or artifact filter, that no entry of the range is missing. With a kind or
artifact filter the bundle cannot prove that no matching entry was left out (only the whole
range can): the verdict says so.

This module reads no database and opens no file (``service.audit.export`` writes bundles).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import IO, Any

from crypto import merkle, strict_json
from crypto.errors import CryptoError, VerificationUnavailableError
from crypto.note import NoteVerifier, open_checkpoint
from service.audit.entries import encode_leaf
from service.audit.errors import BundleError

__all__ = [
    "FORMAT",
    "MAX_LINE_BYTES",
    "BundleVerdict",
    "ExportFilter",
    "bounded_lines",
    "entry_line",
    "header_line",
    "trailer_line",
    "verify_bundle",
]

FORMAT = "entente.dev/audit-export/v1"
MAX_LINE_BYTES = 8 << 20  # bytes of one bundle line (an entry's detail is at most a few KiB)
MAX_KINDS = 32


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _line(obj: Mapping[str, Any]) -> bytes:
    return (
        json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"
    )


@dataclass(frozen=True)
class ExportFilter:
    """Which entries a bundle holds: ``first`` to ``last`` (both included), of ``kinds`` (any
    when empty), about ``artifact`` (any when None)."""

    first: int
    last: int
    kinds: tuple[str, ...] = ()
    artifact: str | None = None

    def __post_init__(self) -> None:
        if type(self.first) is not int or type(self.last) is not int or self.first < 0:
            raise BundleError("the filter's from and to are log indexes")
        if self.last < self.first:
            raise BundleError("the filter's to is before its from")
        if len(self.kinds) > MAX_KINDS or list(self.kinds) != sorted(set(self.kinds)):
            raise BundleError(f"the filter's kinds are at most {MAX_KINDS}, sorted, distinct")

    @property
    def whole_range(self) -> bool:
        """No kind or artifact filter: every entry of the range belongs in the bundle."""
        return not self.kinds and self.artifact is None

    def matches(self, entry: Mapping[str, Any]) -> bool:
        seq = entry.get("seq")
        if not isinstance(seq, int) or not self.first <= seq <= self.last:
            return False
        if self.kinds and entry.get("kind") not in self.kinds:
            return False
        return self.artifact is None or entry.get("artifact_id") == self.artifact

    def to_json(self) -> dict[str, Any]:
        return {
            "from": self.first,
            "to": self.last,
            "kind": list(self.kinds),
            "artifact": self.artifact,
        }

    @classmethod
    def from_json(cls, data: object) -> ExportFilter:
        if not isinstance(data, dict) or set(data) != {"from", "to", "kind", "artifact"}:
            raise BundleError("the header's filter is not {from, to, kind, artifact}")
        kinds, artifact = data["kind"], data["artifact"]
        if not isinstance(kinds, list) or not all(isinstance(k, str) for k in kinds):
            raise BundleError("the filter's kind is a list of event kinds")
        if artifact is not None and not isinstance(artifact, str):
            raise BundleError("the filter's artifact is an id or null")
        return cls(data["from"], data["to"], tuple(kinds), artifact)


def header_line(
    *, node_id: str, origin: str, checkpoint: bytes, size: int, root: bytes,
    flt: ExportFilter, exported_at: str,
) -> bytes:  # fmt: skip
    return _line(
        {
            "format": FORMAT,
            "node_id": node_id,
            "origin": origin,
            "checkpoint": checkpoint.decode("utf-8"),
            "size": size,
            "root": _b64(root),
            "filter": flt.to_json(),
            "exported_at": exported_at,
        }
    )


def entry_line(*, seq: int, leaf: bytes, proof: Sequence[bytes]) -> bytes:
    return _line({"seq": seq, "leaf": _b64(leaf), "proof": [_b64(h) for h in proof]})


def trailer_line(count: int) -> bytes:
    return _line({"end": True, "count": count})


def bounded_lines(stream: IO[bytes], limit: int = MAX_LINE_BYTES) -> Iterator[bytes]:
    """The lines of ``stream`` (without their newline), refusing one longer than ``limit``
    before holding more than ``limit`` bytes of it."""
    number = 0
    while True:
        line = stream.readline(limit + 1)
        if not line:
            return
        number += 1
        if len(line) > limit and not line.endswith(b"\n"):
            raise BundleError(f"line {number} is longer than {limit} bytes")
        yield line.rstrip(b"\n")


@dataclass(frozen=True)
class BundleVerdict:
    """A bundle that verified: what it proves."""

    node_id: str
    origin: str
    size: int  # the checkpoint's tree size
    root: bytes
    filter: ExportFilter
    count: int  # entries in the bundle
    complete: bool  # no entry of the range is missing (a range without kind/artifact filter)
    cosigners: tuple[str, ...]  # witnesses whose cosignatures verified (of those given)
    exported_at: str


def _object(line: bytes, what: str) -> dict[str, Any]:
    try:
        data = strict_json.loads(line)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise BundleError(f"{what} is not JSON") from None
    if not isinstance(data, dict):
        raise BundleError(f"{what} is not a JSON object")
    return data


def _decode(value: object, what: str) -> bytes:
    if not isinstance(value, str):
        raise BundleError(f"{what} is not base64 text")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise BundleError(f"{what} is not base64") from None


def _int(value: object, what: str) -> int:
    if type(value) is not int or value < 0:
        raise BundleError(f"{what} is not a non-negative integer")
    return value


@dataclass
class _Header:
    node_id: str
    origin: str
    size: int
    root: bytes
    filter: ExportFilter
    exported_at: str
    cosigners: tuple[str, ...]


def _header(line: bytes, log: NoteVerifier, witnesses: Sequence[NoteVerifier]) -> _Header:
    data = _object(line, "the header (line 1)")
    if data.get("format") != FORMAT:
        raise BundleError(f"line 1 is not the header of an {FORMAT} bundle")
    note = data.get("checkpoint")
    if not isinstance(note, str):
        raise BundleError("the header carries no checkpoint")
    try:
        opened = open_checkpoint(note.encode("utf-8"), log=log, witnesses=witnesses)
    except VerificationUnavailableError:
        raise BundleError(
            f"the checkpoint is not signed by the log key {log.name}+{log.key_id:08x}: "
            "wrong key, or not this node's log"
        ) from None
    except CryptoError as exc:
        raise BundleError(f"the checkpoint does not verify with the log key: {exc}") from None
    cp = opened.checkpoint
    # The header's copies of the checkpoint's facts must say what the signed note says.
    if data.get("size") != cp.size or data.get("root") != _b64(cp.root_hash):
        raise BundleError("the header's size or root is not the signed checkpoint's")
    if data.get("origin") != cp.origin:
        raise BundleError("the header's origin is not the signed checkpoint's")
    flt = ExportFilter.from_json(data.get("filter"))
    if flt.last >= cp.size:
        raise BundleError(
            f"the filter reaches entry {flt.last}, beyond the checkpoint of {cp.size} entries"
        )
    node_id = data.get("node_id")
    exported_at = data.get("exported_at")
    if not isinstance(node_id, str) or not isinstance(exported_at, str):
        raise BundleError("the header's node_id and exported_at are strings")
    cosigners = tuple(s.name for s in opened.cosignatures)
    return _Header(node_id, cp.origin, cp.size, cp.root_hash, flt, exported_at, cosigners)


def _entry(data: dict[str, Any], number: int, head: _Header) -> int:
    """Check one entry line against the header; return its seq."""
    if set(data) != {"seq", "leaf", "proof"}:
        raise BundleError(f"line {number} is not an entry line (seq, leaf, proof)")
    seq = _int(data["seq"], f"line {number}: seq")
    where = f"entry {seq} (line {number})"
    leaf = _decode(data["leaf"], f"{where}: leaf")
    proofs = data["proof"]
    if not isinstance(proofs, list) or len(proofs) > 64:
        raise BundleError(f"{where}: the proof is a list of at most 64 hashes")
    proof = [_decode(h, f"{where}: a proof hash") for h in proofs]
    entry = _object(leaf, f"{where}: the leaf")
    try:
        canonical = encode_leaf(entry) == leaf
    except (CryptoError, TypeError, ValueError):
        canonical = False
    if not canonical:
        raise BundleError(f"{where}: the leaf is not an entry in the log's canonical encoding")
    if entry.get("seq") != seq:
        raise BundleError(f"{where}: the leaf says it is entry {entry.get('seq')}")
    try:
        merkle.verify_inclusion(
            leaf_hash=merkle.leaf_hash(leaf), index=seq, size=head.size, proof=proof,
            root=head.root,
        )  # fmt: skip
    except CryptoError as exc:
        raise BundleError(
            f"{where} is not in the log signed at size {head.size} ({exc}): the entry or its "
            "proof was altered"
        ) from None
    if not head.filter.matches(entry):
        raise BundleError(
            f"{where} ({entry.get('kind')}) is outside the bundle's filter "
            f"{json.dumps(head.filter.to_json(), sort_keys=True)}"
        )
    return seq


def verify_bundle(
    lines: Iterable[bytes],
    *,
    log: NoteVerifier,
    witnesses: Sequence[NoteVerifier] = (),
) -> BundleVerdict:
    """Verify a bundle's lines (without newlines) with the log's key; raise
    :class:`BundleError` naming the first line that fails."""
    it = iter(lines)
    first = next(it, None)
    if first is None:
        raise BundleError("the bundle is empty")
    head = _header(first, log, witnesses)
    flt = head.filter
    previous: int | None = None
    count = 0
    number = 1
    for line in it:
        number += 1
        data = _object(line, f"line {number}")
        if "end" in data:
            if data != {"end": True, "count": count}:
                raise BundleError(f"the trailer (line {number}) does not count {count} entries")
            if next(it, None) is not None:
                raise BundleError(f"there is more after the trailer (line {number})")
            break
        seq = _entry(data, number, head)
        if previous is not None and seq <= previous:
            raise BundleError(f"entry {seq} (line {number}) is not after entry {previous}")
        expected = flt.first if previous is None else previous + 1
        if flt.whole_range and seq != expected:
            raise BundleError(
                f"entry {expected} is missing (line {number} is entry {seq}): the range "
                f"{flt.first} to {flt.last} has no kind or artifact filter"
            )
        previous = seq
        count += 1
    else:
        raise BundleError(f"the bundle ends after line {number} without its trailer: cut short")
    if flt.whole_range and (previous if previous is not None else flt.first - 1) != flt.last:
        raise BundleError(f"the range ends at entry {flt.last}, the bundle at {previous}")
    return BundleVerdict(
        node_id=head.node_id,
        origin=head.origin,
        size=head.size,
        root=head.root,
        filter=flt,
        count=count,
        complete=flt.whole_range,
        cosigners=head.cosigners,
        exported_at=head.exported_at,
    )
