"""The age payload: STREAM with 64 KiB ChaCha20-Poly1305 chunks (c2sp.org/age "Payload").

The nonce of chunk ``i`` is the 11-byte big-endian counter ``i`` followed by 0x01 for the final
chunk and 0x00 otherwise. The final chunk may be short, is never empty unless the whole payload
is, and must be followed by end of stream.

Memory is constant: two input and two output blocks of ``BLOCK_CHUNKS`` chunks, reused (a
payload of one chunk, either way, is handled in one chunk-sized buffer instead). The
optional plaintext ``hasher`` runs on one helper thread while the main thread encrypts or decrypts
(both ``hashlib`` and pyca release the GIL), which is how a seal costs little more than the
encryption alone. The helper thread only ever reads a block that the main thread will not touch
again until the hash of it has finished.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from crypto.age._io import Hasher, Source, Writer, write_all
from crypto.errors import PayloadError

__all__ = ["CHUNK_SIZE", "decrypt_payload", "encrypt_payload"]

CHUNK_SIZE = 64 * 1024  # bytes of plaintext per STREAM chunk
TAG_SIZE = 16
ENC_CHUNK_SIZE = CHUNK_SIZE + TAG_SIZE
BLOCK_CHUNKS = 16  # chunks read, hashed and written at a time: 1 MiB blocks
_INLINE_HASH_BELOW = 256 * 1024  # bytes; smaller blocks are hashed on the calling thread
_MAX_COUNTER = (1 << 88) - 1


def _nonce(counter: int, last: bool) -> bytes:
    if counter > _MAX_COUNTER:
        raise PayloadError("the payload has too many chunks")
    return counter.to_bytes(11, "big") + (b"\x01" if last else b"\x00")


class _HashPipe:
    """Feeds blocks to a hasher in order, on a helper thread for large blocks."""

    def __init__(self, hasher: Hasher | None) -> None:
        self._hasher = hasher
        self._pool: ThreadPoolExecutor | None = None
        self._pending: dict[int, Future[None]] = {}

    def submit(self, slot: int, data: memoryview) -> None:
        if self._hasher is None or not data:
            return
        if len(data) < _INLINE_HASH_BELOW:
            self.drain()  # keep the hasher's input in order
            self._hasher.update(data)
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="age-hash")
        self._pending[slot] = self._pool.submit(self._hasher.update, data)

    def wait(self, slot: int) -> None:
        """Block until the block in ``slot`` has been hashed, so that it may be reused."""
        future = self._pending.pop(slot, None)
        if future is not None:
            future.result()

    def drain(self) -> None:
        for slot in list(self._pending):
            self.wait(slot)

    def close(self) -> None:
        try:
            self.drain()
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=True)


def encrypt_payload(src: Source, dst: Writer, key: bytes, hasher: Hasher | None = None) -> int:
    """Encrypt everything ``src`` holds to ``dst``; returns the plaintext length."""
    aead = ChaCha20Poly1305(key)
    # Small payloads (under one chunk) are the common case for findings shared at a high rate:
    # they are one final chunk, encrypted without allocating the block buffers below.
    head = memoryview(bytearray(CHUNK_SIZE))
    n = src.readinto(head)
    if n < CHUNK_SIZE:
        if hasher is not None:
            hasher.update(head[:n])
        write_all(dst, memoryview(aead.encrypt(_nonce(0, True), head[:n].tobytes(), None)))
        return n
    block = CHUNK_SIZE * BLOCK_CHUNKS
    inputs = (memoryview(bytearray(block)), memoryview(bytearray(block)))
    out = memoryview(bytearray(ENC_CHUNK_SIZE * BLOCK_CHUNKS))
    pipe = _HashPipe(hasher)
    counter = 0
    total = 0
    try:
        slot = 0
        inputs[0][:CHUNK_SIZE] = head
        n = CHUNK_SIZE + src.readinto(inputs[0][CHUNK_SIZE:])
        pipe.submit(0, inputs[0][:n])
        while True:
            nxt = 1 - slot
            next_n = 0
            if n == block:
                pipe.wait(nxt)
                next_n = src.readinto(inputs[nxt])
                pipe.submit(nxt, inputs[nxt][:next_n])
            final_block = next_n == 0
            data = inputs[slot]
            o = 0
            start = 0
            while True:
                end = min(start + CHUNK_SIZE, n)
                last = final_block and end == n
                size = end - start + TAG_SIZE
                aead.encrypt_into(_nonce(counter, last), data[start:end], None, out[o : o + size])
                counter += 1
                o += size
                start = end
                if start >= n:
                    break
            write_all(dst, out[:o])
            total += n
            if final_block:
                return total
            slot, n = nxt, next_n
    finally:
        pipe.close()


def _unauthenticated() -> PayloadError:
    return PayloadError(
        "a payload chunk does not authenticate: the file is corrupted, truncated or tampered with"
    )


def decrypt_payload(src: Source, dst: Writer, key: bytes, hasher: Hasher | None = None) -> int:
    """Decrypt and authenticate the STREAM payload in ``src`` to ``dst``; returns its length.

    Raises :class:`PayloadError` on a bad chunk, a missing or empty final chunk, or trailing data.
    Chunks are written a block at a time, only after every chunk of the block authenticated; a
    payload of one chunk is written once that chunk authenticated.
    """
    aead = ChaCha20Poly1305(key)
    # A payload of one chunk (the common case for findings delivered at a high rate) is read
    # whole, one byte further to see its end, and decrypted without the block buffers below.
    head = memoryview(bytearray(ENC_CHUNK_SIZE + 1))
    n = src.readinto(head)
    if n == 0:
        raise PayloadError("the payload has no chunks")
    if n <= ENC_CHUNK_SIZE:
        if n < TAG_SIZE:
            raise PayloadError("the payload is truncated or its final chunk is empty")
        try:
            plain = aead.decrypt(_nonce(0, True), head[:n].tobytes(), None)
        except InvalidTag:
            raise _unauthenticated() from None
        if hasher is not None:
            hasher.update(plain)
        write_all(dst, memoryview(plain))
        return len(plain)
    block = ENC_CHUNK_SIZE * BLOCK_CHUNKS
    inputs = (memoryview(bytearray(block)), memoryview(bytearray(block)))
    outputs = (
        memoryview(bytearray(CHUNK_SIZE * BLOCK_CHUNKS)),
        memoryview(bytearray(CHUNK_SIZE * BLOCK_CHUNKS)),
    )
    pipe = _HashPipe(hasher)
    counter = 0
    total = 0
    try:
        slot = 0
        inputs[0][:n] = head[:n]
        n += src.readinto(inputs[0][n:])
        while True:
            nxt = 1 - slot
            next_n = src.readinto(inputs[nxt]) if n == block else 0
            final_block = next_n == 0
            data = inputs[slot]
            out = outputs[slot]
            pipe.wait(slot)
            o = 0
            start = 0
            while start < n:
                end = min(start + ENC_CHUNK_SIZE, n)
                last = final_block and end == n
                size = end - start - TAG_SIZE
                if size < 0 or (last and size == 0 and counter > 0):
                    raise PayloadError("the payload is truncated or its final chunk is empty")
                if size == 0 and not last:
                    raise PayloadError("the payload has an empty chunk")
                try:
                    aead.decrypt_into(
                        _nonce(counter, last), data[start:end], None, out[o : o + size]
                    )
                except InvalidTag:
                    raise _unauthenticated() from None
                counter += 1
                o += size
                start = end
            pipe.submit(slot, out[:o])
            write_all(dst, out[:o])
            total += o
            if final_block:
                return total
            slot, n = nxt, next_n
    finally:
        pipe.close()
