"""crypto.age streaming: boundaries, recipients, hashing, armor, tampering."""

from __future__ import annotations

import hashlib
import io
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crypto import age
from crypto.age._stream import BLOCK_CHUNKS, CHUNK_SIZE
from crypto.errors import (
    ArmorError,
    DecryptionError,
    HeaderError,
    HeaderMacError,
    NoIdentityMatchError,
    PayloadError,
)
from tests.crypto.test_age_keys import counting_rng

BLOCK = CHUNK_SIZE * BLOCK_CHUNKS
X = age.X25519Identity(b"\x01" * 32)
Y = age.X25519Identity(b"\x02" * 32)
PQ = age.HybridIdentity(b"\x03" * 32)


def seal(data: bytes, recipients: list[age.Recipient], **kwargs: object) -> bytes:
    out = io.BytesIO()
    age.encrypt(io.BytesIO(data), out, recipients, **kwargs)  # type: ignore[arg-type]
    return out.getvalue()


def unseal(blob: bytes, identities: list[age.Identity]) -> bytes:
    out = io.BytesIO()
    age.decrypt(io.BytesIO(blob), out, identities)
    return out.getvalue()


def expected_size(n: int) -> int:
    chunks = max(1, -(-n // CHUNK_SIZE))
    return n + 16 * chunks


@pytest.mark.parametrize(
    "size",
    [
        0,
        1,
        CHUNK_SIZE - 1,
        CHUNK_SIZE,
        CHUNK_SIZE + 1,
        3 * CHUNK_SIZE,
        BLOCK - 1,
        BLOCK,
        BLOCK + 1,
        BLOCK + CHUNK_SIZE,
        2 * BLOCK,
        2 * BLOCK + 17,
    ],
)
def test_round_trip_at_chunk_and_block_boundaries(size: int) -> None:
    data = os.urandom(size)
    hasher = hashlib.sha256()
    out = io.BytesIO()
    result = age.encrypt(io.BytesIO(data), out, [X.recipient], hasher=hasher)
    blob = out.getvalue()
    assert result.plaintext_size == size
    assert hasher.hexdigest() == hashlib.sha256(data).hexdigest()
    assert blob.startswith(result.header)
    assert len(blob) == len(result.header) + 16 + expected_size(size)
    back = hashlib.sha256()
    plain = io.BytesIO()
    header = age.decrypt(io.BytesIO(blob), plain, [X], hasher=back)
    assert plain.getvalue() == data
    assert back.hexdigest() == hashlib.sha256(data).hexdigest()
    assert header.raw == result.header


def test_multiple_recipients_each_decrypt() -> None:
    blob = seal(b"for both", [X.recipient, Y.recipient])
    assert unseal(blob, [X]) == b"for both"
    assert unseal(blob, [Y]) == b"for both"
    header = age.read_header(io.BytesIO(blob))
    assert [s.type for s in header.stanzas] == ["X25519", "X25519"]


def test_hybrid_recipients_round_trip() -> None:
    other = age.HybridIdentity.generate()
    blob = seal(b"post-quantum", [PQ.recipient, other.recipient])
    assert unseal(blob, [other]) == b"post-quantum"
    assert unseal(blob, [X, PQ]) == b"post-quantum"
    assert [s.type for s in age.read_header(io.BytesIO(blob)).stanzas] == ["mlkem768x25519"] * 2


def test_no_matching_identity() -> None:
    blob = seal(b"x", [X.recipient])
    with pytest.raises(NoIdentityMatchError):
        unseal(blob, [Y, PQ])


def test_mixing_post_quantum_and_classic_recipients_is_refused() -> None:
    with pytest.raises(ValueError, match="cannot be mixed"):
        seal(b"x", [X.recipient, PQ.recipient])


def test_passphrase_recipient_must_be_alone() -> None:
    with pytest.raises(ValueError, match="only recipient"):
        seal(b"x", [age.ScryptRecipient("pw", work_factor=10), X.recipient])


def test_no_recipients_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one recipient"):
        seal(b"x", [])


def test_no_identities_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one identity"):
        unseal(seal(b"x", [X.recipient]), [])


def test_encryption_is_deterministic_under_an_injected_rng() -> None:
    data = os.urandom(CHUNK_SIZE + 5)
    one = seal(data, [X.recipient, Y.recipient], rng=counting_rng(1))
    two = seal(data, [X.recipient, Y.recipient], rng=counting_rng(1))
    assert one == two
    assert seal(data, [X.recipient]) != seal(data, [X.recipient])


class ReadOnly:
    """A reader with ``read`` only (no ``readinto``), returning short reads."""

    def __init__(self, data: bytes) -> None:
        self._buf = io.BytesIO(data)

    def read(self, size: int = -1, /) -> bytes:
        return self._buf.read(min(size, 1000) if size >= 0 else 1000)


class ShortWriter:
    """A writer that accepts at most 777 bytes per call, like a raw file might."""

    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, data: bytes | bytearray | memoryview, /) -> int:
        taken = bytes(data[:777])
        self.data += taken
        return len(taken)


def test_readers_without_readinto_and_short_writes() -> None:
    data = os.urandom(BLOCK + 123)
    sink = ShortWriter()
    age.encrypt(ReadOnly(data), sink, [X.recipient])
    plain = ShortWriter()
    age.decrypt(ReadOnly(bytes(sink.data)), plain, [X])
    assert bytes(plain.data) == data


def test_decryptor_exposes_the_authenticated_header_before_any_plaintext() -> None:
    out = io.BytesIO()
    result = age.encrypt(io.BytesIO(b"payload"), out, [X.recipient])
    decryptor = age.Decryptor.open(io.BytesIO(out.getvalue()), [X])
    assert decryptor.header.raw == result.header
    assert decryptor.header.sha256 == hashlib.sha256(result.header).hexdigest()
    assert decryptor.header.mac_input == result.header[: result.header.rindex(b" ")]
    plain = io.BytesIO()
    assert decryptor.decrypt_to(plain) == len(b"payload")
    assert plain.getvalue() == b"payload"
    with pytest.raises(RuntimeError):
        decryptor.decrypt_to(plain)


def test_read_header_needs_no_key_and_reads_only_the_header() -> None:
    blob = seal(b"abc", [X.recipient])
    header = age.read_header(io.BytesIO(blob))
    assert blob.startswith(header.raw)
    assert header.raw.endswith(b"\n")
    assert header.raw.count(b"\n---") == 1


def test_armored_files_are_detected_and_decrypted() -> None:
    data = os.urandom(5000)
    blob = age.armor(seal(data, [X.recipient]))
    assert blob.startswith(b"-----BEGIN AGE ENCRYPTED FILE-----\n")
    assert unseal(blob, [X]) == data
    assert unseal(b"\n  \r\n" + blob + b"\n\n", [X]) == data
    with pytest.raises(ArmorError):
        unseal(blob.replace(b"\n", b" \n", 3), [X])
    with pytest.raises(HeaderError):
        age.decrypt(io.BytesIO(blob), io.BytesIO(), [X], armor=False)


def test_every_single_byte_flip_is_detected_and_releases_nothing() -> None:
    blob = seal(os.urandom(300), [X.recipient, Y.recipient], rng=counting_rng())
    for i in range(len(blob)):
        for bit in (0x01, 0x80):
            tampered = bytearray(blob)
            tampered[i] ^= bit
            out = io.BytesIO()
            with pytest.raises(DecryptionError):
                age.decrypt(io.BytesIO(bytes(tampered)), out, [X], armor=False)
            assert out.getvalue() == b""


def test_truncation_and_extension_are_payload_errors() -> None:
    blob = seal(os.urandom(2 * CHUNK_SIZE), [X.recipient])
    for cut in (1, 16, 17, CHUNK_SIZE, CHUNK_SIZE + 16):
        with pytest.raises(PayloadError):
            unseal(blob[:-cut], [X])
    with pytest.raises(PayloadError):
        unseal(blob + b"\x00", [X])


def test_header_mac_is_checked() -> None:
    blob = bytearray(seal(b"x", [X.recipient, Y.recipient]))
    header = age.read_header(io.BytesIO(bytes(blob)))
    # Swap the two stanzas: both still unwrap, but the MAC covers their order.
    first, second = header.stanzas
    swapped = (
        b"age-encryption.org/v1\n"
        + second.marshal()
        + first.marshal()
        + b"---"
        + header.raw[header.raw.rindex(b" ") :]
    )
    with pytest.raises(HeaderMacError):
        unseal(swapped + bytes(blob[len(header.raw) :]), [X])


def test_oversized_header_is_refused() -> None:
    stanza = age.Stanza("grease", ("x",), os.urandom(1 << 16)).marshal()
    blob = b"age-encryption.org/v1\n" + stanza * 20
    with pytest.raises(HeaderError, match="too large"):
        age.read_header(io.BytesIO(blob))


def test_stanza_marshal_refuses_invalid_arguments() -> None:
    with pytest.raises(ValueError, match="printable ASCII"):
        age.Stanza("bad type", (), b"").marshal()
    with pytest.raises(ValueError, match="printable ASCII"):
        age.Stanza("ok", ("",), b"").marshal()


@settings(max_examples=25, deadline=None)
@given(
    data=st.binary(max_size=3 * CHUNK_SIZE),
    extra=st.integers(min_value=0, max_value=2),
    short_reads=st.integers(min_value=1, max_value=70_000),
)
def test_round_trip_property(data: bytes, extra: int, short_reads: int) -> None:
    data = data + bytes(extra * CHUNK_SIZE)

    class Chunky:
        def __init__(self, blob: bytes) -> None:
            self._buf = io.BytesIO(blob)

        def read(self, size: int = -1, /) -> bytes:
            return self._buf.read(min(size, short_reads) if size >= 0 else short_reads)

    sink = io.BytesIO()
    age.encrypt(Chunky(data), sink, [Y.recipient])
    out = io.BytesIO()
    age.decrypt(Chunky(sink.getvalue()), out, [Y])
    assert out.getvalue() == data
