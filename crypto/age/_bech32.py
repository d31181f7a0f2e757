"""Bech32 (BIP 173) without the 90-character length limit, as age uses it.

age encodes recipients (``age1...``, ``age1pq1...``) and identities (``AGE-SECRET-KEY-1...``,
``AGE-SECRET-KEY-PQ-1...``) in Bech32, not Bech32m. A string is all lowercase or all uppercase; the
checksum is always computed over the lowercase form. This module only encodes and decodes: it does
not know which human-readable parts (HRPs) are meaningful.
"""

from __future__ import annotations

__all__ = ["Bech32Error", "decode", "encode"]

_CHARSET = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
_VALUES = {ch: i for i, ch in enumerate(_CHARSET)}
_GENERATOR = (0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3)
_CHECKSUM_CONST = 1  # Bech32; Bech32m would be 0x2BC830A3


class Bech32Error(ValueError):
    """The string is not valid Bech32. Callers turn this into their own error."""


def _polymod(values: list[int]) -> int:
    chk = 1
    for value in values:
        top = chk >> 25
        chk = (chk & 0x1FFFFFF) << 5 ^ value
        for i, gen in enumerate(_GENERATOR):
            if (top >> i) & 1:
                chk ^= gen
    return chk


def _hrp_expand(hrp: str) -> list[int]:
    return [ord(ch) >> 5 for ch in hrp] + [0] + [ord(ch) & 31 for ch in hrp]


def _convert_bits(data: bytes | list[int], from_bits: int, to_bits: int, *, pad: bool) -> list[int]:
    acc = 0
    bits = 0
    out: list[int] = []
    maxv = (1 << to_bits) - 1
    for value in data:
        acc = (acc << from_bits) | value
        bits += from_bits
        while bits >= to_bits:
            bits -= to_bits
            out.append((acc >> bits) & maxv)
    if pad:
        if bits:
            out.append((acc << (to_bits - bits)) & maxv)
    elif bits >= from_bits or (acc << (to_bits - bits)) & maxv:
        raise Bech32Error("invalid padding in the data part")
    return out


def encode(hrp: str, data: bytes) -> str:
    """Encode ``data`` under ``hrp`` (given in lowercase); the result is lowercase."""
    if not hrp or any(not 33 <= ord(ch) <= 126 for ch in hrp) or hrp != hrp.lower():
        raise Bech32Error("the human-readable part must be lowercase printable ASCII")
    values = _convert_bits(data, 8, 5, pad=True)
    polymod = _polymod([*_hrp_expand(hrp), *values, 0, 0, 0, 0, 0, 0]) ^ _CHECKSUM_CONST
    checksum = [(polymod >> 5 * (5 - i)) & 31 for i in range(6)]
    return hrp + "1" + "".join(_CHARSET[v] for v in values + checksum)


def decode(text: str) -> tuple[str, bytes]:
    """Decode ``text``; returns the human-readable part in lowercase and the data bytes."""
    if not text.isascii():
        raise Bech32Error("Bech32 strings are ASCII")
    lower = text.lower()
    if text != lower and text != text.upper():
        raise Bech32Error("Bech32 strings are all lowercase or all uppercase")
    pos = lower.rfind("1")
    if pos < 1 or pos + 7 > len(lower):
        raise Bech32Error("the separator is missing or misplaced")
    hrp = lower[:pos]
    if any(not 33 <= ord(ch) <= 126 for ch in hrp):
        raise Bech32Error("invalid character in the human-readable part")
    try:
        values = [_VALUES[ch] for ch in lower[pos + 1 :]]
    except KeyError:
        raise Bech32Error("invalid character in the data part") from None
    if _polymod([*_hrp_expand(hrp), *values]) != _CHECKSUM_CONST:
        raise Bech32Error("invalid checksum")
    return hrp, bytes(_convert_bits(values[:-6], 5, 8, pad=False))
