"""Verifying an audit log without trusting the node that keeps it.

:func:`verify_log` reads a log through a :class:`LogSource` (the node's API, or its database
read directly) and trusts only signatures:

1. every checkpoint must be signed by the log key valid at its size (:class:`LogKeys`: a node's
   keys follow its rotations, and a retired key signs only checkpoints that do not cover its
   retirement); cosignatures by the given witness keys must verify (and are counted); sizes
   must increase;
2. a checkpoint remembered from an earlier run (``remembered``) must be consistent with the log:
   the log may only have grown, and its first ``size`` entries must hash to the remembered root;
   so must the latest checkpoint each witness holds (``witnessed``, fetched from the witnesses
   themselves): a log behind one of them, or inconsistent with it, fails, naming the gap;
3. the entries must have consecutive log indexes ``0 .. size - 1``; each entry's leaf hash is
   recomputed from its fields (:func:`service.audit.entries.encode_leaf`), never read from storage;
   the rotation records :class:`LogKeys` was built from must be the entries logged at their seqs;
4. the RFC 6962 tree over the recomputed leaves must have each checkpoint's root at its size;
5. (database only) no entry may carry a log index no signed checkpoint covers;
6. with ``min_cosignatures``, that many trusted witnesses must vouch for the LATEST checkpoint:
   by cosigning it, or by holding, when asked now, a checkpoint that the log is consistent with
   (an old cosigned checkpoint of a log that has since been cut and re-signed does not count).

Time matters twice. A witness asked for what it holds cosigns its answer when it answers
(``service.audit.witness.held_checkpoint``), so an answer whose cosignature is more than
:data:`WITNESS_VIEW_MAX_AGE` seconds old was not made now: a note the node kept and serves again
from wherever it says the witness is (it was cosigned then, for a log that may since have been
cut and re-signed). Such an answer still proves what it says (a log behind it, or inconsistent
with it, fails) but vouches for nothing. And a cosignature dated more than
:data:`COSIGNATURE_MAX_FUTURE` seconds ahead of ``now`` is not counted, with a note, without
failing the checkpoint it is on (the node accepts a witness's clock as far ahead, and one skewed
witness must not make an honest log fail).

On a mismatch the first bad entry is located by bisection with consistency proofs from the source
(untrusted: a proof only helps if it verifies against the signed root), and named by seq and id.

This module reads no clock and prints nothing; the CLI does.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from crypto import merkle
from crypto.errors import CryptoError
from crypto.note import Checkpoint, NoteVerifier, open_checkpoint, parse_note
from service.audit.leaves import LeafBatch, batches_from_entries, entry_leaf
from service.audit.rotations import LogKeys
from service.audit.verdicts import CheckpointInfo, LogSource, Remembered, Verdict, WitnessView

__all__ = [
    "COSIGNATURE_MAX_FUTURE",
    "WITNESS_VIEW_MAX_AGE",
    "CheckpointInfo",
    "LogKeys",
    "LogSource",
    "Remembered",
    "Verdict",
    "WitnessView",
    "verify_log",
]


WITNESS_VIEW_MAX_AGE = 300  # seconds: a witness asked now cosigns its answer now (clocks differ)
COSIGNATURE_MAX_FUTURE = 300  # seconds a cosignature may be dated ahead (the node's clock skew)


class _Stop(Exception):
    pass


def _entry_id(entry: Mapping[str, Any]) -> int | None:
    value = entry.get("id")
    return value if type(value) is int else None


def _size_of(note: bytes) -> int:
    """The tree size a checkpoint note claims (unverified: it picks the key to verify with)."""
    return Checkpoint.parse(parse_note(note).text).size


def _open(note: bytes, *, keys: LogKeys, witnesses: Sequence[NoteVerifier]) -> tuple[int, Any]:
    size = _size_of(note)
    return size, open_checkpoint(note, log=keys.for_size(size), witnesses=witnesses)


def _counted(opened: Any, *, now: int, verdict: Verdict) -> tuple[str, ...]:
    """The names of the witnesses whose cosignature on ``opened`` counts: not dated more than
    :data:`COSIGNATURE_MAX_FUTURE` seconds ahead of ``now`` (the others are noted)."""
    names = []
    for sig in opened.cosignatures:
        if sig.timestamp is not None and sig.timestamp > now + COSIGNATURE_MAX_FUTURE:
            verdict.notes.append(
                f"the cosignature by {sig.name} on the checkpoint of size "
                f"{opened.checkpoint.size} is dated {sig.timestamp - now} s ahead of this "
                "clock: not counted"
            )
            continue
        names.append(sig.name)
    return tuple(names)


def _open_checkpoints(
    notes: Iterable[bytes],
    *,
    keys: LogKeys,
    witnesses: Sequence[NoteVerifier],
    now: int,
    verdict: Verdict,
) -> list[CheckpointInfo]:
    out: list[CheckpointInfo] = []
    for note in notes:
        try:
            _size, opened = _open(note, keys=keys, witnesses=witnesses)
        except CryptoError as exc:
            after = f" (after size {out[-1].size})" if out else ""
            verdict.fail(f"a checkpoint{after} does not verify: {exc}{keys.explain_failure(note)}")
            raise _Stop from None
        cp = opened.checkpoint
        if out and cp.size <= out[-1].size:
            verdict.fail(f"checkpoints are not in increasing size order at size {cp.size}")
            raise _Stop
        out.append(
            CheckpointInfo(cp.size, cp.root_hash, note, _counted(opened, now=now, verdict=verdict))
        )
    return out


def _locate(
    source: LogSource,
    *,
    good: merkle.CompactRange,
    target: CheckpointInfo,
    verdict: Verdict,
) -> Verdict:
    """Name the first entry in ``[good.size, target.size)`` that breaks ``target``'s root."""
    lo, hi = good.size, target.size
    leaves: list[bytes] = []
    ids: list[int | None] = []
    for entry in source.entries(lo, hi):
        leaves.append(entry_leaf(entry))
        ids.append(_entry_id(entry))
    if len(leaves) != hi - lo:
        return verdict.fail(
            f"the entries between seq {lo} and {hi - 1} changed while verifying; run it again"
        )

    def matches(m: int) -> bool:
        # Is the recomputed prefix [0, m) the prefix of the signed tree of target.size leaves?
        prefix = good.copy()
        prefix.extend(leaves[: m - good.size])
        try:
            proof = source.consistency_proof(m, target.size)
            merkle.verify_consistency(
                size1=m, size2=target.size, root1=prefix.root(), root2=target.root, proof=proof
            )
        except Exception:  # an unusable proof (unreachable, malformed) proves nothing
            return False
        return True

    # Invariant: the prefix of lo entries matches (a verified checkpoint), hi does not.
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if matches(mid):
            lo = mid
        else:
            hi = mid
    entry_id = ids[lo - good.size]
    return verdict.fail(
        f"entry seq {lo} (id {entry_id}) does not match the log signed in checkpoint "
        f"{target.size}: it was changed, replaced or reordered after it was logged",
        seq=lo,
        entry_id=entry_id,
    )


def verify_log(
    source: LogSource,
    *,
    log: NoteVerifier | LogKeys,
    witnesses: Sequence[NoteVerifier] = (),
    remembered: Remembered | None = None,
    witnessed: Sequence[WitnessView] = (),
    min_cosignatures: int = 0,
    upto: int | None = None,
    now: int,
    progress: Callable[[int, int], None] | None = None,
) -> Verdict:
    """Verify the log of ``source`` signed by ``log`` (one key, or its keys across rotations);
    see the module docstring for the checks.

    ``upto`` bounds the checkpoints considered (a live node keeps appending while we read).
    ``witnessed`` must have been fetched from the witnesses BEFORE the log is read, so that an
    honest, growing log is never behind them.
    """
    keys = log if isinstance(log, LogKeys) else LogKeys.single(log)
    verdict = Verdict(ok=True, origin=keys.origin, keys=keys.fingerprints)
    try:
        return _verify(
            source,
            keys=keys,
            witnesses=witnesses,
            remembered=remembered,
            witnessed=witnessed,
            min_cosignatures=min_cosignatures,
            upto=upto,
            now=now,
            progress=progress,
            verdict=verdict,
        )
    except _Stop:
        return verdict


def _add_target(targets: dict[int, CheckpointInfo], cp: CheckpointInfo, verdict: Verdict) -> None:
    """Add a root to check at ``cp.size``; two different roots at one size are a fork."""
    other = targets.get(cp.size)
    if other is None:
        targets[cp.size] = cp
        return
    if other.root == cp.root:
        return

    def who(c: CheckpointInfo) -> str:
        if c.witness is not None:
            return f"the one witness {c.witness} cosigned"
        if c.remembered:
            return "the one remembered from the last verification"
        return "the one the node serves now"

    verdict.fail(
        f"the log was forked: two different checkpoints of size {cp.size} are signed by the "
        f"log key: {who(other)} and {who(cp)}"
    )
    raise _Stop


def _witness_targets(
    witnessed: Sequence[WitnessView], *, keys: LogKeys, size: int, now: int, verdict: Verdict
) -> list[CheckpointInfo]:
    """The checkpoints the witnesses hold, each checked against the log key of its size and the
    witness's own key; a log behind any of them fails here."""
    out = []
    for view in witnessed:
        name = view.verifier.name
        if view.note is None:
            verdict.notes.append(f"witness {name} was not asked: {view.error}")
            continue
        try:
            held, opened = _open(view.note, keys=keys, witnesses=[view.verifier])
        except CryptoError as exc:
            verdict.notes.append(f"witness {name} served a checkpoint that does not verify: {exc}")
            continue
        mine = next((c for c in opened.cosignatures if c.name == name), None)
        if mine is None:
            verdict.notes.append(f"witness {name} served a checkpoint it did not cosign")
            continue
        if held > size:
            verdict.fail(
                f"the log is behind witness {name}: it cosigned size {held}, the log's latest "
                f"checkpoint has {size}: entries {size} to {held - 1} are missing (deleted, "
                "or the log was rolled back)"
            )
            raise _Stop
        age = now - mine.timestamp if mine.timestamp is not None else None
        fresh = age is not None and -COSIGNATURE_MAX_FUTURE <= age <= WITNESS_VIEW_MAX_AGE
        if not fresh:
            when = "undated" if age is None else f"dated {age} s before this clock"
            verdict.notes.append(
                f"witness {name} answered with a cosignature {when}, not made when asked: a "
                "kept answer served again (from where the node says the witness is?) vouches "
                "for nothing; the log is still checked against it"
            )
        cp = opened.checkpoint
        out.append(
            CheckpointInfo(held, cp.root_hash, view.note, (name,), witness=name, fresh=fresh)
        )
    return out


def _verify(
    source: LogSource,
    *,
    keys: LogKeys,
    witnesses: Sequence[NoteVerifier],
    remembered: Remembered | None,
    witnessed: Sequence[WitnessView],
    min_cosignatures: int,
    upto: int | None,
    now: int,
    progress: Callable[[int, int], None] | None,
    verdict: Verdict,
) -> Verdict:
    # (1) Checkpoints, each against the key valid at its size.
    checkpoints = _open_checkpoints(
        source.checkpoints(upto), keys=keys, witnesses=witnesses, now=now, verdict=verdict
    )
    verdict.checkpoints = len(checkpoints)
    latest = checkpoints[-1] if checkpoints else None
    verdict.latest = latest
    size = latest.size if latest else 0
    for cp in reversed(checkpoints):
        if len(cp.cosigners) >= max(min_cosignatures, 1):
            verdict.latest_cosigned = cp
            break

    # (2) The checkpoint remembered from last time and those the witnesses hold join the list
    # of roots to check.
    targets: dict[int, CheckpointInfo] = {}
    for cp in checkpoints:
        targets[cp.size] = cp
    if remembered is not None:
        verdict.remembered_size = remembered.size
        try:
            _size, opened = _open(remembered.note, keys=keys, witnesses=witnesses)
        except CryptoError as exc:
            return verdict.fail(f"the remembered checkpoint does not verify: {exc}")
        mine = CheckpointInfo(
            opened.checkpoint.size, opened.checkpoint.root_hash, remembered.note, (), True
        )
        if mine.size > size:
            return verdict.fail(
                f"the log shrank: it had {mine.size} entries when last verified, "
                f"its latest checkpoint has {size}"
            )
        if mine.size > 0:
            _add_target(targets, mine, verdict)
    held = _witness_targets(witnessed, keys=keys, size=size, now=now, verdict=verdict)
    for cp in held:
        if cp.size > 0:
            _add_target(targets, cp, verdict)

    if latest is None:
        found = source.uncovered(0)
        if found is not None:
            return verdict.fail(
                f"entry seq {found[0]} (id {found[1]}) is not covered by any signed checkpoint",
                seq=found[0],
                entry_id=found[1],
            )
        if min_cosignatures > 0:
            return verdict.fail("the log has no checkpoint for witnesses to vouch for")
        verdict.notes.append("the log is empty: no checkpoint has been signed yet")
        return verdict

    # (3) + (4) Entries, recomputed leaf by leaf, against every target root; the rotation
    # records the keys came from must be the entries at their seqs.
    records = dict(keys.records)
    unseen = {seq for seq in records if seq < size}
    batched = getattr(source, "leaf_batches", None)
    batches: Iterable[LeafBatch] = (
        batched(size) if batched is not None else batches_from_entries(source.entries(None, size))
    )
    tree = merkle.CompactRange()
    good = merkle.CompactRange()  # the tree at the last target that matched
    stops = sorted((cp for cp in targets.values() if cp.size > 0), key=lambda cp: cp.size)
    stop = 0
    expected = 0
    for batch in batches:
        leaves = batch.leaves
        for seq in [q for q in unseen if batch.start <= q < batch.start + len(leaves)]:
            if leaves[seq - batch.start] != records[seq]:
                return verdict.fail(
                    f"the key rotation record served for seq {seq} is not the entry logged "
                    "there: the log's keys cannot be followed",
                    seq=seq,
                )
            unseen.discard(seq)
        i, n = 0, len(leaves)
        while i < n:
            target = stops[stop] if stop < len(stops) else None
            take = n - i if target is None else min(n - i, target.size - expected)
            tree.extend(leaves[i : i + take] if take != n else leaves)
            i += take
            expected += take
            if target is None or expected != target.size:
                continue
            if tree.root() != target.root:
                if target.remembered or target.witness is not None:
                    # The node's own checkpoints (and proofs) describe the rewritten log, so they
                    # cannot locate the change; only the remembered root proves it happened.
                    whose = (
                        "the checkpoint you verified last time"
                        if target.remembered
                        else f"the checkpoint witness {target.witness} cosigned"
                    )
                    return verdict.fail(
                        f"the log is not consistent with {whose} (size {target.size}): "
                        f"its first {target.size} entries were rewritten"
                    )
                return _locate(source, good=good, target=target, verdict=verdict)
            good = tree.copy()
            stop += 1
        if progress is not None:
            progress(expected, size)
        if batch.problem is not None:
            p = batch.problem
            return verdict.fail(p.message, seq=p.seq, entry_id=p.entry_id)
    if expected < size:
        return verdict.fail(
            f"entry seq {expected} is missing (deleted?): the log has {expected} entries "
            f"but its checkpoint signs {size}",
            seq=expected,
        )
    verdict.size = expected

    # (5) An entry beyond every checkpoint was not written by the sequencer.
    found = source.uncovered(size)
    if found is not None:
        return verdict.fail(
            f"entry seq {found[0]} (id {found[1]}) is not covered by any signed checkpoint "
            f"(the latest signs {size} entries): it was inserted into the table",
            seq=found[0],
            entry_id=found[1],
        )

    # (6) Who vouches for the latest checkpoint: its cosigners, and every witness whose own
    # checkpoint, cosigned when it was asked, the log was just shown to be consistent with.
    verdict.witnessed = {cp.witness: cp.size for cp in held if cp.witness and cp.fresh}
    for name, seen in sorted(verdict.witnessed.items()):
        if seen < size:
            verdict.notes.append(
                f"witness {name} holds size {seen}: entries {seen} to {size - 1} are signed by "
                "the log key alone until it cosigns a later checkpoint"
            )
    vouched = sorted(set(latest.cosigners) | set(verdict.witnessed))
    verdict.vouched = tuple(vouched)
    if len(vouched) < min_cosignatures:
        asked = [v.verifier.name for v in witnessed]
        return verdict.fail(
            f"the latest checkpoint (size {size}) is vouched for by {len(vouched)} trusted "
            f"witness(es), {min_cosignatures} required ({', '.join(vouched) or 'none'}; a "
            "witness vouches by cosigning it or by holding a checkpoint the log is consistent "
            f"with; witnesses asked: {', '.join(asked) or 'none'})"
        )
    return verdict
