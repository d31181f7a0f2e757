"""crypto.age keys: X25519 and hybrid identities and recipients, Bech32, passphrase key files."""

from __future__ import annotations

import io
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crypto import age
from crypto.age import _bech32
from crypto.errors import DecryptionError, HeaderError, KeyLoadError, MalformedError

# c2sp.org/age, "The X25519 recipient type": the example identity and its recipient.
SPEC_X25519_IDENTITY = "AGE-SECRET-KEY-1GFPYYSJZGFPYYSJZGFPYYSJZGFPYYSJZGFPYYSJZGFPYYSJZGFPQ4EGAEX"
SPEC_X25519_RECIPIENT = "age1zvkyg2lqzraa2lnjvqej32nkuu0ues2s82hzrye869xeexvn73equnujwj"
# c2sp.org/age, the MLKEM768-X25519 example identity; its recipient is 1959 characters, of which
# the spec's first and last characters are checked here.
SPEC_PQ_IDENTITY = "AGE-SECRET-KEY-PQ-1XX76JRALNLXDMEW0CRK45QMCCH4X06SE84UN3VPM33W6HWDX0H3SK3ZQFR"
SPEC_PQ_RECIPIENT_HEAD = "age1pq1x34nzsvr0rxjsgdn8zgyhfe8j7ceq5r9rdelkjuh3y235jzxshfg87pzf5zrq"
SPEC_PQ_RECIPIENT_TAIL = "tlhl53k2ykx3qheyty7saeq0d3fzv49zc0k"


def counting_rng(start: int = 0) -> Callable[[int], bytes]:
    """A deterministic rng for tests: bytes start, start+1, ... (mod 256)."""
    state = [start]

    def rng(n: int) -> bytes:
        out = bytes((state[0] + i) % 256 for i in range(n))
        state[0] += n
        return out

    return rng


def test_x25519_spec_example_identity_gives_spec_recipient() -> None:
    identity = age.X25519Identity.from_string(SPEC_X25519_IDENTITY)
    assert identity.secret == b"B" * 32
    assert identity.recipient.to_string() == SPEC_X25519_RECIPIENT
    assert identity.to_string() == SPEC_X25519_IDENTITY


def test_hybrid_spec_example_identity_gives_spec_recipient() -> None:
    identity = age.HybridIdentity.from_string(SPEC_PQ_IDENTITY)
    text = identity.recipient.to_string()
    assert text.startswith(SPEC_PQ_RECIPIENT_HEAD)
    assert text.endswith(SPEC_PQ_RECIPIENT_TAIL)
    assert len(text) == 1959
    assert identity.to_string() == SPEC_PQ_IDENTITY
    assert age.HybridRecipient.from_string(text) == identity.recipient


def test_generate_is_deterministic_under_an_injected_rng() -> None:
    a = age.X25519Identity.generate(rng=counting_rng(7))
    b = age.X25519Identity.generate(rng=counting_rng(7))
    assert a.to_string() == b.to_string()
    assert a.recipient == b.recipient
    assert age.X25519Identity.generate().recipient != a.recipient


@pytest.mark.parametrize("cls", [age.X25519Identity, age.HybridIdentity])
def test_identity_string_round_trip(
    cls: type[age.X25519Identity] | type[age.HybridIdentity],
) -> None:
    identity = cls.generate()
    again = cls.from_string(identity.to_string())
    assert again.recipient == identity.recipient
    assert age.parse_identity(identity.to_string()).recipient == identity.recipient
    recipient_text = identity.recipient.to_string()
    assert age.parse_recipient(recipient_text) == identity.recipient
    assert str(identity.recipient) == recipient_text


def test_parse_recipient_picks_the_type_from_the_prefix() -> None:
    assert isinstance(age.parse_recipient(SPEC_X25519_RECIPIENT), age.X25519Recipient)
    pq = age.HybridIdentity.generate().recipient.to_string()
    assert isinstance(age.parse_recipient(pq), age.HybridRecipient)
    assert isinstance(age.parse_identity(SPEC_PQ_IDENTITY), age.HybridIdentity)
    assert isinstance(age.parse_identity(SPEC_X25519_IDENTITY), age.X25519Identity)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "age1",
        SPEC_X25519_RECIPIENT.upper(),  # recipients are lowercase
        SPEC_X25519_RECIPIENT[:-1] + "q",  # bad checksum
        SPEC_X25519_RECIPIENT[:10] + "B" + SPEC_X25519_RECIPIENT[11:],  # mixed case
        "age1qqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqq",
        _bech32.encode("age", b"\x01" * 31),  # wrong length
        _bech32.encode("age1pq", b"\x01" * 32),  # wrong length for a hybrid key
        "ssh-ed25519 AAAA",
        SPEC_X25519_IDENTITY,
    ],
)
def test_parse_recipient_rejects_malformed_strings(text: str) -> None:
    with pytest.raises(MalformedError):
        age.parse_recipient(text)


@pytest.mark.parametrize(
    "text",
    [
        SPEC_X25519_IDENTITY.lower(),  # identities are uppercase
        SPEC_X25519_IDENTITY[:-1] + "Q",
        _bech32.encode("age-secret-key-", b"\x01" * 31).upper(),
        _bech32.encode("age-secret-key-pq-", b"\x01" * 33).upper(),
        SPEC_X25519_RECIPIENT,
        "AGE-PLUGIN-YUBIKEY-1QQQQQQ",
    ],
)
def test_parse_identity_rejects_malformed_strings(text: str) -> None:
    with pytest.raises(MalformedError):
        age.parse_identity(text)


def test_reprs_never_show_secret_key_material() -> None:
    for identity in (age.X25519Identity.generate(), age.HybridIdentity.generate()):
        secret = identity.to_string()
        shown = repr(identity)
        assert secret not in shown
        assert secret[20:40] not in shown
    assert "hunter2" not in repr(age.ScryptIdentity("hunter2"))
    assert "hunter2" not in repr(age.ScryptRecipient("hunter2", work_factor=10))


@pytest.mark.parametrize(
    ("text", "hrp", "data"),
    [
        # BIP 173 valid strings.
        ("A12UEL5L", "a", b""),
        ("a12uel5l", "a", b""),
        (
            "abcdef1qpzry9x8gf2tvdw0s3jn54khce6mua7lmqqqxw",
            "abcdef",
            bytes.fromhex("00443214c74254b635cf84653a56d7c675be77df"),
        ),
    ],
)
def test_bech32_bip173_examples(text: str, hrp: str, data: bytes) -> None:
    assert _bech32.decode(text) == (hrp, data)
    assert _bech32.encode(hrp, data) == text.lower()


@pytest.mark.parametrize(
    "text",
    ["A1G7SGD8", "10a06t8", "1qzzfhee", "a1b2c3d4", "abc1\x7fqqqqqq", "li1dgmt3", "A12uEL5L"],
)
def test_bech32_rejects_bip173_invalid_examples(text: str) -> None:
    with pytest.raises(_bech32.Bech32Error):
        _bech32.decode(text)


@given(hrp=st.sampled_from(["age", "age1pq", "age-secret-key-"]), data=st.binary(max_size=200))
def test_bech32_round_trip_property(hrp: str, data: bytes) -> None:
    text = _bech32.encode(hrp, data)
    assert _bech32.decode(text) == (hrp, data)
    assert _bech32.decode(text.upper()) == (hrp, data)


_REFERENCE_GENERATORS = (0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3)


def _reference_string(hrp: str, values: list[int]) -> str:
    """BIP 173's reference checksum, one generator at a time, over ``values`` (5-bit groups,
    whatever they mean); the Bech32 string with it."""
    chk = 1
    expanded = [ord(c) >> 5 for c in hrp] + [0] + [ord(c) & 31 for c in hrp]
    for value in [*expanded, *values, 0, 0, 0, 0, 0, 0]:
        top = chk >> 25
        chk = (chk & 0x1FFFFFF) << 5 ^ value
        for i, gen in enumerate(_REFERENCE_GENERATORS):
            chk ^= gen if (top >> i) & 1 else 0
    chk ^= 1
    full = values + [(chk >> 5 * (5 - i)) & 31 for i in range(6)]
    return hrp + "1" + "".join("qpzry9x8gf2tvdw0s3jn54khce6mua7l"[v] for v in full)


def _reference_encode(hrp: str, data: bytes) -> str:
    """BIP 173's reference conversion, one bit group at a time (what crypto.age._bech32 did
    before it used base64's C conversion and a step table)."""
    acc = bits = 0
    values: list[int] = []
    for byte in data:
        acc, bits = (acc << 8) | byte, bits + 8
        while bits >= 5:
            bits -= 5
            values.append((acc >> bits) & 31)
    if bits:
        values.append((acc << (5 - bits)) & 31)
    return _reference_string(hrp, values)


@given(
    hrp=st.sampled_from(["a", "age", "age1pq", "age-secret-key-pq-"]), data=st.binary(max_size=1300)
)
def test_bech32_matches_the_reference_conversion(hrp: str, data: bytes) -> None:
    text = _reference_encode(hrp, data)
    assert _bech32.encode(hrp, data) == text
    assert _bech32.decode(text) == (hrp, data)


def test_a_hybrid_recipient_encodes_as_the_reference_does() -> None:
    recipient = age.HybridIdentity.generate().recipient
    text = recipient.to_string()
    assert len(text) == 1959
    _, data = _bech32.decode(text)
    assert _reference_encode("age1pq", data) == text


@pytest.mark.parametrize("groups", [1, 3, 6, 9])  # 5, 15, 30, 45 bits: 5 or more left over
def test_bech32_rejects_a_data_part_with_too_many_padding_bits(groups: int) -> None:
    text = _reference_string("age", [0] * groups)
    with pytest.raises(_bech32.Bech32Error, match="padding"):
        _bech32.decode(text)


@pytest.mark.parametrize(("groups", "last"), [(2, 1), (4, 8), (5, 1), (7, 4), (8 + 2, 2)])
def test_bech32_rejects_nonzero_padding_bits(groups: int, last: int) -> None:
    values = [0] * (groups - 1) + [last]
    text = _reference_string("age", values)
    with pytest.raises(_bech32.Bech32Error, match="padding"):
        _bech32.decode(text)


def test_passphrase_round_trip() -> None:
    data = b"AGE-SECRET-KEY-1...\n"
    sealed = age.encrypt_with_passphrase(data, "correct horse", work_factor=10)
    assert sealed.startswith(b"age-encryption.org/v1\n-> scrypt ")
    assert b" 10\n" in sealed.split(b"\n---", 1)[0]
    assert age.decrypt_with_passphrase(sealed, "correct horse") == data


def test_passphrase_encryption_is_deterministic_under_an_injected_rng() -> None:
    one = age.encrypt_with_passphrase(b"k", "pw", work_factor=10, rng=counting_rng())
    two = age.encrypt_with_passphrase(b"k", "pw", work_factor=10, rng=counting_rng())
    assert one == two
    assert age.encrypt_with_passphrase(b"k", "pw", work_factor=10) != one


def test_wrong_passphrase_is_a_key_load_error() -> None:
    sealed = age.encrypt_with_passphrase(b"secret", "right", work_factor=10)
    with pytest.raises(KeyLoadError) as info:
        age.decrypt_with_passphrase(sealed, "wrong")
    assert "secret" not in str(info.value)


def test_file_not_encrypted_to_a_passphrase_is_a_key_load_error() -> None:
    out = io.BytesIO()
    age.encrypt(io.BytesIO(b"x"), out, [age.X25519Identity.generate().recipient])
    with pytest.raises(KeyLoadError):
        age.decrypt_with_passphrase(out.getvalue(), "pw")


def test_passphrase_work_factor_above_the_limit_is_refused_before_scrypt_runs() -> None:
    sealed = age.encrypt_with_passphrase(b"secret", "pw", work_factor=12)
    with pytest.raises(HeaderError, match="above the limit"):
        age.decrypt_with_passphrase(sealed, "pw", max_work_factor=11)
    assert age.decrypt_with_passphrase(sealed, "pw", max_work_factor=12) == b"secret"


def test_tampered_passphrase_file_is_a_decryption_error_not_a_key_error() -> None:
    sealed = bytearray(age.encrypt_with_passphrase(b"secret" * 10, "pw", work_factor=10))
    sealed[-5] ^= 1
    with pytest.raises(DecryptionError):
        age.decrypt_with_passphrase(bytes(sealed), "pw")


def test_passphrase_file_reads_armored_too() -> None:
    sealed = age.encrypt_with_passphrase(b"secret", "pw", work_factor=10)
    assert age.decrypt_with_passphrase(age.armor(sealed), "pw") == b"secret"


@pytest.mark.parametrize("work_factor", [0, 31, -1])
def test_passphrase_work_factor_must_be_sane(work_factor: int) -> None:
    with pytest.raises(ValueError, match="work factor"):
        age.encrypt_with_passphrase(b"x", "pw", work_factor=work_factor)


def test_empty_passphrase_is_refused() -> None:
    with pytest.raises(ValueError, match="empty"):
        age.encrypt_with_passphrase(b"x", "")
