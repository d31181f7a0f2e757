"""Reading an upload's stored body back, decrypted segment after segment on a helper thread
(``service.uploads``)."""

from __future__ import annotations

import contextlib
import hashlib
import queue
import threading
from collections.abc import Generator
from typing import Any

import sqlalchemy as sa

from crypto import age
from crypto.errors import CryptoError
from service.errors import StoredArtifactCorruptError
from service.node import Node
from service.uploads.store import SEGMENTS, label

__all__ = ["plaintext"]


class _Unlabelled:
    """A sink for a segment's plaintext: checks its first line is ``label`` (age authenticates
    each block before writing it, so nothing of another segment is passed on), then passes the
    rest to ``sink``."""

    def __init__(self, label: bytes, sink: _QueueSink, upload_id: str) -> None:
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


class _QueueSink:
    def __init__(self, q: queue.Queue[bytes | BaseException | None], stop: threading.Event):
        self._q = q
        self._stop = stop

    def write(self, data: bytes | bytearray | memoryview, /) -> int:
        chunk = bytes(data)
        self.put(chunk)
        return len(chunk)

    def put(self, item: bytes | BaseException | None) -> None:
        """Hand ``item`` to the reader, or give up (:class:`_Stopped`) once it has stopped
        reading: a reader that stops early (a refusal, the body's end reached before the last
        segment) must never leave this thread blocked on a full queue."""
        while not self._stop.is_set():
            try:
                self._q.put(item, timeout=0.5)
                return
            except queue.Full:
                continue
        raise _Stopped


class _Stopped(Exception):
    pass


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
    q: queue.Queue[bytes | BaseException | None] = queue.Queue(maxsize=4)
    stop = threading.Event()
    identities = node.keys.all_identities

    feed = _QueueSink(q, stop)

    def work() -> None:
        at = 0
        end: BaseException | None = None  # None: every segment was handed over
        try:
            for start, size, digest in segments:
                if start != at:
                    raise StoredArtifactCorruptError(f"upload {upload_id} misses bytes at {at}")
                tag = label(upload_id, start)
                sink = _Unlabelled(tag, feed, upload_id)
                with node.blobs.open(digest) as source:
                    hashed = _Hashing(source)
                    got = age.Decryptor.open(hashed, identities).decrypt_to(sink) - len(tag)
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
        except _Stopped:
            return
        except CryptoError:
            end = StoredArtifactCorruptError(f"a segment of upload {upload_id} failed to open")
        except BaseException as exc:  # handed to the reader
            end = exc
        with contextlib.suppress(_Stopped):
            feed.put(end)

    thread = threading.Thread(target=work, name=f"upload-{upload_id[:12]}", daemon=True)
    thread.start()
    try:
        while (item := q.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
