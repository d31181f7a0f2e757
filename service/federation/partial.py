"""Resumable payload downloads for the catch-up pull: keep what a broken download brought.

A feed item names its ciphertext's SHA-256 and size (``service.federation.feed``). The pull
downloads a payload through :meth:`PartialPayloads.fetch` into
``<home>/partial/<partner>/<sha256>.part``, one folder per partner (:meth:`PartialPayloads.of`):
a partner that names another's ciphertext digest in its own feed reaches a file of its own only,
and can neither hold the other's download (its lock), write into it, nor have it removed.

1. what the file already holds from an earlier attempt is kept, and only the rest is asked for
   (``Range: bytes=N-``, signed; the origin answers 206 with a signed ``Content-Range`` and a
   ``Content-Digest`` of those bytes); an origin that sends the whole (200) starts the file over,
   and one that finds the range unsatisfiable (416) has the file discarded and fetched again;
2. every byte received is appended as it arrives, so a connection cut mid-body leaves the file
   for the next attempt (the pull keeps its cursor: :class:`PartnerUnavailableError`); an answer
   that goes on past the size the feed item names is cut there and its file removed (a partner
   could otherwise stream to our disk without end: the read timeout is per read);
3. once the file is whole, its SHA-256 and size are checked against the feed item's; a file
   that does not match (a corrupted prefix, a changed payload) is discarded and the next
   attempt restarts from zero. Only a matching file is handed to the receiver, which verifies
   and decrypts it as any delivery (``service.federation.receive``).

The pull removes a file once its artifact is stored, held already, or refused (a revocation
among the reasons), and :meth:`PartialPayloads.clean` removes files not written to for longer
than the grace period (``blob_orphan_grace_seconds``), every partner's folder included: an
artifact revoked at its origin leaves the feed, and its file with it. A partner's files together
stay under ``max_bytes`` (``2 * max_artifact_bytes``, as the inbox's partial pushes): before a
download starts, that partner's oldest other files are removed until the one being fetched fits
at its full size, so a partner whose downloads break round after round, each naming a new
payload, churns its own folder instead of filling our disk. A file is written by one
download at a time (``flock``): a second pull of the same payload meanwhile is told the partner
is busy, and tries again later.

This module does not decide what a payload means; it only brings its bytes, checked whole.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import re
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

from crypto.vocab import is_node_id
from service.errors import PartnerRefusedError, PartnerUnavailableError
from service.federation.client import PartnerClient
from service.models import Partner

__all__ = ["PartialPayloads", "make_room", "sweep"]

log = logging.getLogger("entente.pull")

_DIGEST_RE = re.compile(r"[0-9a-f]{64}")
_CHUNK = 1 << 20  # bytes read from the answer per write to the file


class PartialPayloads:
    """Partial payloads in ``folder``: the node's (``<home>/partial``) holds one folder per
    partner, :meth:`of`, and a partner's pull reads and writes its own folder only, whose files
    together stay under ``max_bytes``."""

    def __init__(self, folder: Path, *, max_bytes: int) -> None:
        self.folder = folder
        self.max_bytes = max_bytes

    def of(self, partner: str) -> PartialPayloads:
        """``partner``'s own folder of partial payloads."""
        if not is_node_id(partner):  # pinned partners' ids are node ids: never a path
            raise ValueError(f"{partner!r} is not a node id")
        return PartialPayloads(self.folder / partner, max_bytes=self.max_bytes)

    def path_for(self, digest: str) -> Path | None:
        """The file of a payload, or None for a name that is not a SHA-256 (never a path)."""
        return self.folder / f"{digest}.part" if _DIGEST_RE.fullmatch(digest) else None

    @contextlib.contextmanager
    def fetch(
        self, client: PartnerClient, partner: Partner, *, path: str, digest: str, size: int
    ) -> Iterator[BinaryIO]:
        """The whole payload, checked against ``digest`` and ``size``, as a file read from its
        start; downloads only what an earlier attempt did not bring."""
        target = self.path_for(digest)
        if target is None or size < 0:
            raise PartnerUnavailableError(f"{partner.node_id} named a malformed ciphertext digest")
        if size > self.max_bytes:  # the pull refuses such an item before, by its manifest
            raise PartnerUnavailableError(
                f"{partner.node_id} named a payload of {size} bytes, more than the "
                f"{self.max_bytes} its partial downloads may hold"
            )
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        with open(target, "ab+") as fh:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise PartnerUnavailableError(
                    f"the payload {digest[:12]}… from {partner.node_id} is being fetched already"
                ) from None
            make_room(self.folder, keep=target, need=size, max_bytes=self.max_bytes)
            try:
                self._complete(client, partner, fh, path=path, size=size)
            except _TooLong:
                target.unlink(missing_ok=True)
                raise PartnerUnavailableError(
                    f"{partner.node_id} sent more than the {size} bytes its feed names for the "
                    f"payload {digest[:12]}…; it is fetched again from the start"
                ) from None
            if not _matches(fh, digest, size):
                target.unlink(missing_ok=True)
                raise PartnerUnavailableError(
                    f"the payload {digest[:12]}… from {partner.node_id} does not match its "
                    "digest once whole; it is fetched again from the start"
                )
            fh.seek(0)
            yield fh

    def _complete(
        self, client: PartnerClient, partner: Partner, fh: BinaryIO, *, path: str, size: int
    ) -> None:
        """Append to ``fh`` what it lacks of the payload (all of it, if need be), never more
        than ``size`` bytes in all (:class:`_TooLong` before a byte past them is written)."""
        have = fh.seek(0, os.SEEK_END)
        if have > size:
            fh.truncate(0)
            have = 0
        if have == size and size > 0:
            return
        try:
            with client.download(partner, path, offset=have) as stream:
                if stream.offset != have:  # the whole, from the start
                    fh.truncate(0)
                    fh.seek(0)
                    have = 0
                for data in stream.chunks():
                    have += len(data)
                    if have > size:
                        raise _TooLong
                    fh.write(data)
                    fh.flush()  # kept if the process dies next
        except PartnerRefusedError as exc:
            if exc.status_code == 416:  # the file is longer than the payload is: start over
                fh.truncate(0)
            raise

    def remove(self, digests: Iterable[str]) -> None:
        """Remove the files of payloads stored, held or refused."""
        for digest in digests:
            target = self.path_for(digest)
            if target is not None:
                target.unlink(missing_ok=True)

    def clean(self, *, older_than_seconds: float, now: float | None = None) -> int:
        """Remove the files not written to for longer than ``older_than_seconds``."""
        return sweep(self.folder, older_than_seconds=older_than_seconds, now=now)


def make_room(folder: Path, *, keep: Path, need: int, max_bytes: int) -> None:
    """Remove the oldest ``*.part`` files of ``folder`` (not ``keep``, whose ``need`` bytes in
    all are counted instead of what it holds) until they fit under ``max_bytes`` together."""
    files = []
    for path in folder.glob("*.part"):
        with contextlib.suppress(FileNotFoundError):
            if path != keep:
                stat = path.stat()
                files.append((stat.st_mtime, stat.st_size, path))
    used = sum(size for _, size, _ in files)
    for _, size, path in sorted(files, key=lambda f: f[0]):
        if used + need <= max_bytes:
            break
        path.unlink(missing_ok=True)
        used -= size


class _TooLong(Exception):
    """The answer went on past the payload's size."""


def sweep(folder: Path, *, older_than_seconds: float, now: float | None = None) -> int:
    """Remove the ``*.part`` files under ``folder`` (its subfolders too: the pull and the inbox
    keep one per partner) not written to for longer than
    ``older_than_seconds``; how many were removed."""
    if not folder.is_dir():
        return 0
    cutoff = (time.time() if now is None else now) - older_than_seconds
    removed = 0
    for target in folder.rglob("*.part"):
        try:
            if target.stat().st_mtime < cutoff:
                target.unlink()
                removed += 1
        except FileNotFoundError:
            continue
    if removed:
        log.info("removed %d abandoned partial payload(s) under %s", removed, folder.name)
    return removed


def _matches(fh: BinaryIO, digest: str, size: int) -> bool:
    fh.seek(0)
    hasher = hashlib.sha256()
    seen = 0
    while data := fh.read(_CHUNK):
        hasher.update(data)
        seen += len(data)
    return seen == size and hasher.hexdigest() == digest
