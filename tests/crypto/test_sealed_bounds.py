"""crypto.sealed: decryption stops once the plaintext is longer than the manifest says.

Whoever holds an artifact's file key (its origin: a partner that turned hostile) can append
valid STREAM chunks without end under the signed header. The manifest's size was compared only
once the payload had ended, so a receiver read and decrypted (and, behind it, stored) whatever
came. Now the decryption stops with :class:`VerificationError` as soon as the plaintext passes
the size, having read at most two blocks past it, and the sink never sees a byte beyond it.
"""

from __future__ import annotations

import io

import pytest
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from crypto import age, sealed
from crypto.errors import VerificationError
from tests.crypto.test_sealed import US, seal_bytes

SIZE = 1000  # plaintext bytes the manifest signs
STOP = 32 << 20  # bytes the endless source gives before it ends (so the old code ends too)
BLOCK = 16 * (age.CHUNK_SIZE + 16)  # ciphertext bytes decrypted at a time (crypto.age._stream)


class EndlessChunks:
    """The signed header and payload nonce, then valid non-final STREAM chunks without end
    (until ``STOP``): what the holder of the file key can send."""

    def __init__(self, prefix: bytes, key: bytes) -> None:
        self._pending = prefix
        self._aead = ChaCha20Poly1305(key)
        self._counter = 0
        self.read_bytes = 0

    def read(self, n: int = -1, /) -> bytes:
        n = n if n >= 0 else STOP  # the age reader always asks for a count
        while len(self._pending) < n and self.read_bytes + len(self._pending) < STOP:
            nonce = self._counter.to_bytes(11, "big") + b"\x00"
            self._pending += self._aead.encrypt(nonce, bytes(age.CHUNK_SIZE), None)
            self._counter += 1
        data, self._pending = self._pending[:n], self._pending[n:]
        self.read_bytes += len(data)
        return data


class Sink:
    def __init__(self) -> None:
        self.received = 0

    def write(self, data: bytes | bytearray | memoryview, /) -> int:
        self.received += len(data)
        return len(data)


def endless_after(ciphertext: bytes) -> EndlessChunks:
    """``ciphertext``'s header and nonce (a one-chunk payload of ``SIZE`` bytes follows them),
    then chunks under the same payload key."""
    decryptor = age.Decryptor.parse(io.BytesIO(ciphertext), armor=False)
    decryptor.unlock([US])
    prefix = ciphertext[: len(ciphertext) - (SIZE + 16)]
    return EndlessChunks(prefix, decryptor._key)


@pytest.mark.parametrize("to_sink", [True, False], ids=["sink", "no-sink"])
def test_a_plaintext_longer_than_the_manifest_stops_the_decryption(to_sink: bool) -> None:
    result, ciphertext = seal_bytes(b"x" * SIZE)
    source = endless_after(ciphertext)
    sink = Sink()
    with pytest.raises(VerificationError, match="longer than the manifest's size"):
        sealed.decrypt_verified(result.manifest, source, sink if to_sink else None, identities=[US])
    assert source.read_bytes <= len(ciphertext) + 2 * BLOCK + 1  # not the 32 MiB offered
    assert sink.received <= SIZE  # nothing past the signed size reaches the caller


@pytest.mark.parametrize("size", [age.CHUNK_SIZE, 3 * age.CHUNK_SIZE, 17 * age.CHUNK_SIZE + 5])
def test_a_plaintext_of_exactly_the_size_still_opens(size: int) -> None:
    data = bytes(range(256)) * (size // 256) + b"y" * (size % 256)
    result, ciphertext = seal_bytes(data)
    out = io.BytesIO()
    sealed.decrypt_verified(result.manifest, io.BytesIO(ciphertext), out, identities=[US])
    assert out.getvalue() == data
