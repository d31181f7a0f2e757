"""Reading an upload's stored body back, decrypted segment after segment on a helper thread
(``service.uploads``)."""

from __future__ import annotations

import hashlib
from collections.abc import Generator
from typing import Any

import sqlalchemy as sa

from crypto import age
from crypto.errors import CryptoError
from service.errors import StoredArtifactCorruptError
from service.handoff import Handoff, produced
from service.node import Node
from service.uploads.store import SEGMENTS, label

__all__ = ["plaintext"]


class _Unlabelled:
    """A sink for a segment's plaintext: checks its first line is ``label`` (age authenticates
    each block before writing it, so nothing of another segment is passed on), then passes the
    rest to ``sink``."""

    def __init__(self, label: bytes, sink: Handoff, upload_id: str) -> None:
        self._label = label
        self._seen = b""
        self._sink = sink
        self._upload_id = upload_id

    def write(self, data: bytes | bytearray | memoryview, /) -> int:
        given = len(data)
        if len(self._seen) < len(self._label):
            take = len(self._label) - len(self._seen)
            self._seen += bytes(data[:take])
            data = data[take:]
            if len(self._seen) == len(self._label) and self._seen != self._label:
                raise StoredArtifactCorruptError(
                    f"a segment of upload {self._upload_id} is not the one recorded there"
                )
        if data:
            self._sink.write(data)
        return given

    def check_whole(self) -> None:
        if self._seen != self._label:
            raise StoredArtifactCorruptError(
                f"a segment of upload {self._upload_id} is not the one recorded there"
            )


class _Hashing:
    """A reader that hashes (SHA-256) every byte read through it."""

    def __init__(self, raw: Any) -> None:
        self._raw = raw
        self._hash = hashlib.sha256()

    def read(self, n: int = -1, /) -> bytes:
        data: bytes = self._raw.read(n)
        self._hash.update(data)
        return data

    def readinto(self, buffer: Any, /) -> int:
        n: int = self._raw.readinto(buffer)
        self._hash.update(memoryview(buffer)[:n])
        return n

    def drain(self) -> None:
        while self.read(1 << 16):
            pass

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


def plaintext(node: Node, upload_id: str) -> Generator[bytes, None, None]:
    """The stored body of ``upload_id``, decrypted segment after segment on a helper thread
    (a few chunks ahead, no more). Each segment's length and authenticity are checked;
    :class:`StoredArtifactCorruptError` when one fails."""
    with node.db.engine.connect() as conn:
        segments = conn.execute(
            sa.select(SEGMENTS.c.start, SEGMENTS.c.size, SEGMENTS.c.digest)
            .where(SEGMENTS.c.upload_id == upload_id)
            .order_by(SEGMENTS.c.start)
        ).all()
    identities = node.keys.all_identities

    def work(feed: Handoff) -> None:
        at = 0
        for start, size, digest in segments:
            if start != at:
                raise StoredArtifactCorruptError(f"upload {upload_id} misses bytes at {at}")
            tag = label(upload_id, start)
            sink = _Unlabelled(tag, feed, upload_id)
            with node.blobs.open(digest) as source:
                hashed = _Hashing(source)
                try:
                    got = age.Decryptor.open(hashed, identities).decrypt_to(sink) - len(tag)
                except CryptoError:
                    raise StoredArtifactCorruptError(
                        f"a segment of upload {upload_id} failed to open"
                    ) from None
                hashed.drain()
            sink.check_whole()
            if got != size:
                raise StoredArtifactCorruptError(f"a segment of upload {upload_id} is short")
            # The store holds what the database recorded, not another segment of this node
            # (each is an age file to the node, so only its digest tells them apart).
            if hashed.hexdigest() != digest:
                raise StoredArtifactCorruptError(
                    f"a segment of upload {upload_id} is not the one recorded (its digest)"
                )
            at += size

    return produced(work, name=f"upload-{upload_id[:12]}")
