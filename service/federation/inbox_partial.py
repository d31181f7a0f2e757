"""Resumable pushes: the inbox keeps what a cut delivery brought, and verifies the whole again.

A large delivery (a ciphertext above the batch threshold, ``outbox.BATCH_ITEM_MAX_BYTES``) is
streamed into ``POST /federation/v1/inbox`` in one request; a connection cut at 3 GB used to
cost the sender the whole transfer again. Now:

1. while the inbox streams such a delivery's ciphertext through :class:`Receiver`, it also
   appends every byte to ``<home>/partial-in/<sender>/<key>.part``, where ``key`` is the SHA-256
   of the delivery's first line (the signed manifest, with its disclosure: the same for every
   attempt of one delivery, and a manifest commits to its plaintext's and age header's digests,
   not to the ciphertext's). One folder per sender: a partner names only its own files, and
   can neither see nor touch another's. A file is written by one request at a time (``flock``);
   a second push of the same delivery meanwhile is told the node is busy (503, retried);
2. the sender, retrying, asks how much is held (``GET /federation/v1/inbox/partial/{key}``,
   signed: ``{"offset": N}``), and sends the manifest line and the ciphertext from byte N on,
   saying so in a signed ``Entente-Resume-Offset: N`` header (``Content-Digest`` covers the bytes
   sent). A receiver that does not hold N bytes refuses (416, the file removed) and the sender
   starts from zero next time;
3. a resumed delivery is verified exactly as a whole one: the file's first N bytes followed by
   the request's ciphertext go through the same :class:`Receiver` steps (the manifest's
   signature, the age header, every STREAM chunk, the plaintext digest and size, the inbound
   policy); nothing is accepted on the prefix's say-so. A whole that does not verify is
   refused (audited as ``receive.rejected``) and its file removed: the next attempt starts from
   zero.

The file is removed once the delivery is stored, found to be a repeat, or refused; a cut
connection (or a body that stalled) keeps it. Files not written to for longer than
``blob_orphan_grace_seconds`` are swept (:func:`service.federation.partial.sweep`, as the
pull's), and a sender's files together stay under ``2 * max_artifact_bytes`` (its oldest are
removed to make room), so a partner cannot fill the disk with deliveries it never finishes.
One file never holds more than the largest ciphertext its manifest's size allows
(``crypto.age.largest_file``, and never more than that per-sender bound): the per-request body
limit counts one request only, and a sender resuming again and again from all it sent, with
more STREAM chunks each time (it holds the file key), would otherwise grow the file forever.
A request that would pass it is refused (413) and the file removed.
The files hold age ciphertext only, never plaintext.

What it does not do: decide whether to resume (the sender's client does), or verify anything
itself (``service.federation.receive``).
"""

from __future__ import annotations

import fcntl
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from crypto.age import largest_file
from crypto.vocab import is_node_id
from service.audit.refusals import mark_audited
from service.errors import (
    BusyError,
    EntenteError,
    InvalidInputError,
    RangeNotSatisfiableError,
    RequestTimeoutError,
    TooLargeError,
)
from service.federation.client import RESUME_HEADER, head_key
from service.federation.partial import make_room, sweep
from service.federation.receive import Received, Receiver
from service.node import Node

__all__ = [
    "RESUME_HEADER",
    "InboxPartials",
    "head_key",
    "inbox_partials",
    "receive_push",
    "resume_offset",
]

_KEY_RE = re.compile(r"[0-9a-f]{64}")
_MAX_OFFSET = 1 << 62


def resume_offset(value: str | None) -> int:
    """The ``Entente-Resume-Offset`` header's value (0 when absent); refuses a malformed one."""
    if value is None:
        return 0
    value = value.strip()
    if not (value.isascii() and value.isdigit() and len(value) <= 19 and int(value) < _MAX_OFFSET):
        raise InvalidInputError(f"{RESUME_HEADER} is a byte offset in decimal", reason="resume")
    return int(value)


def _too_large(most: int) -> TooLargeError:
    return TooLargeError(
        f"the delivery's ciphertext, with what this node holds of it, would pass {most} bytes:"
        " more than its manifest's size (or its declared length) allows",
        reason="resume",
    )


class InboxPartials:
    """The partial pushes of one node, in ``folder`` (``<home>/partial-in``), a folder each
    sender; ``max_bytes`` bounds one sender's files together."""

    def __init__(self, folder: Path, *, max_bytes: int) -> None:
        self.folder = folder
        self.max_bytes = max_bytes

    def path_for(self, sender: str, key: str) -> Path | None:
        """A sender's file for ``key``, or None for a name that is not a SHA-256 (never a path)."""
        if not (is_node_id(sender) and _KEY_RE.fullmatch(key)):
            return None
        return self.folder / sender / f"{key}.part"

    def offset(self, sender: str, key: str) -> int:
        """How many bytes of ``key``'s ciphertext ``sender``'s earlier pushes left here."""
        target = self.path_for(sender, key)
        try:
            return target.stat().st_size if target is not None else 0
        except FileNotFoundError:
            return 0

    def remove(self, sender: str, key: str) -> None:
        target = self.path_for(sender, key)
        if target is not None:
            target.unlink(missing_ok=True)

    def clean(self, *, older_than_seconds: float, now: float | None = None) -> int:
        """Remove every sender's files not written to for longer than ``older_than_seconds``."""
        return sweep(self.folder, older_than_seconds=older_than_seconds, now=now)

    def open(
        self, sender: str, key: str, *, resume: int, expect: int, limit: int | None = None
    ) -> BinaryIO:
        """The file for ``key``, locked until closed, holding exactly its first ``resume``
        bytes, read from its start; room is made for ``expect`` bytes of ciphertext in all.
        More than ``limit`` bytes (by default, the sender's bound) is refused and the file
        removed: the sender starts from zero."""
        target = self.path_for(sender, key)
        if target is None:  # pragma: no cover - the inbox passes a SHA-256 and a pinned id
            raise InvalidInputError("a malformed partial delivery name", reason="resume")
        target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fh = open(target, "ab+")  # noqa: SIM115 - the caller closes it (and so unlocks it)
        try:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise BusyError(
                    "this delivery is being received already; try again later", retry_after=5
                ) from None
            held = fh.seek(0, os.SEEK_END)
            if resume > held:
                target.unlink(missing_ok=True)
                raise RangeNotSatisfiableError(
                    f"this node holds {held} bytes of the delivery, not {resume}; send it whole",
                    size=held,
                    reason="resume",
                )
            limit = self.max_bytes if limit is None else limit
            if max(expect, resume) > limit:
                target.unlink(missing_ok=True)
                raise _too_large(limit)
            fh.truncate(resume)
            make_room(
                target.parent, keep=target, need=max(expect, resume), max_bytes=self.max_bytes
            )
            fh.seek(0)
        except BaseException:
            fh.close()
            raise
        return fh


def inbox_partials(node: Node) -> InboxPartials:
    """The node's partial pushes (``<home>/partial-in``)."""
    return InboxPartials(
        node.home.path / "partial-in", max_bytes=2 * node.settings.max_artifact_bytes
    )


class _Resumed:
    """The ciphertext as the receiver reads it: the file's first ``held`` bytes, then the
    request's; every byte of the request's is appended to the file as it is read, until the
    file would hold more than ``most`` bytes (then :class:`TooLargeError`)."""

    def __init__(self, part: BinaryIO, held: int, body: Any, *, most: int) -> None:
        self._part = part
        self._left = held
        self._body = body
        self._size = held
        self._most = most

    def read(self, n: int = -1, /) -> bytes:
        if self._left > 0:
            data = self._part.read(self._left if n < 0 else min(n, self._left))
            self._left -= len(data)
            if data:
                return data
            self._left = 0  # the file is shorter than it was (never: it is locked)
        more: bytes = self._body.read(n)
        if more:
            self._size += len(more)
            if self._size > self._most:
                raise _too_large(self._most)
            self._part.write(more)
            self._part.flush()  # kept if the connection (or the process) dies next
        return more


def receive_push(
    node: Node,
    *,
    sender: str,
    line: bytes,
    body: Any,
    resume: int,
    expect: int | None,
    keep_above: int,
    before_commit: Callable[[], None],
) -> Received:
    """Receive one pushed delivery whose first line is ``line`` and whose ciphertext, from byte
    ``resume`` on, ``body`` reads; ``expect`` is the ciphertext's length the request declares
    (from ``resume`` on; None when it declares none). A ciphertext above ``keep_above`` bytes,
    or a resumed one, is kept under ``<home>/partial-in`` as it arrives."""
    receiver = Receiver(node, sender=sender, via="push")
    if resume == 0 and (expect is None or expect <= keep_above):
        return receiver.receive(line, body, before_commit=before_commit)
    partials, key = inbox_partials(node), head_key(line)
    try:
        checked = receiver.check(line)
    except EntenteError:
        partials.remove(sender, key)  # refused: what the file holds will never be accepted
        raise
    artifact_id = checked.manifest.artifact_id
    held = receiver.held([artifact_id])
    if held:
        partials.remove(sender, key)
        return receiver.repeat(held[artifact_id], checked.manifest)
    # The most the file may hold after this request: what the manifest allows (and the
    # sender's bound), or less when the request says how much it brings.
    limit = min(largest_file(checked.manifest.size), partials.max_bytes)
    most = limit if expect is None else resume + expect
    try:
        part = partials.open(sender, key, resume=resume, expect=most, limit=limit)
    except EntenteError as exc:
        receiver.reject(artifact_id=artifact_id, reason=exc.message)
        raise mark_audited(exc) from None
    with part:
        try:
            staged = receiver.stage(
                checked, _Resumed(part, resume, body, most=most), before_commit=before_commit
            )
        except RequestTimeoutError:
            raise  # the body stalled: like a cut connection, what came is kept
        except EntenteError:
            partials.remove(sender, key)  # the whole did not verify: start from zero
            raise
        received = receiver.commit([staged])[0]
        partials.remove(sender, key)
    if resume:
        node.metrics.resumed.labels("received").inc()
        node.metrics.resumed_bytes.labels("received").inc(resume)
    return received
