"""Bech32 (BIP 173) without the 90-character length limit, as age uses it.

age encodes recipients (``age1...``, ``age1pq1...``) and identities (``AGE-SECRET-KEY-1...``,
``AGE-SECRET-KEY-PQ-1...``) in Bech32, not Bech32m. A string is all lowercase or all uppercase; the
checksum is always computed over the lowercase form. This module only encodes and decodes: it does
not know which human-readable parts (HRPs) are meaningful.
"""

from __future__ import annotations

import base64

__all__ = ["Bech32Error", "decode", "encode"]

_CHARSET = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
_VALUES = {ch: i for i, ch in enumerate(_CHARSET)}
_GENERATOR = (0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3)
_CHECKSUM_CONST = 1  # Bech32; Bech32m would be 0x2BC830A3


class Bech32Error(ValueError):
    """The string is not valid Bech32. Callers turn this into their own error."""


def _step_table() -> tuple[int, ...]:
    """For each value of the checksum's top 5 bits, the generators they fold in."""
    table = []
    for top in range(32):
        folded = 0
        for i, gen in enumerate(_GENERATOR):
            if (top >> i) & 1:
                folded ^= gen
        table.append(folded)
    return tuple(table)


_STEP = _step_table()


def _polymod(values: bytes) -> int:
    """BIP 173's checksum over 5-bit ``values``: one table look-up per value (the reference
    loops over the five generators for each; a hybrid recipient has 2,000 values)."""
    chk = 1
    step = _STEP
    for value in values:
        chk = ((chk & 0x1FFFFFF) << 5) ^ value ^ step[chk >> 25]
    return chk


def _hrp_expand(hrp: str) -> bytes:
    return bytes([ord(ch) >> 5 for ch in hrp] + [0] + [ord(ch) & 31 for ch in hrp])


# Bech32's data part is RFC 4648 base32 (5-bit groups, most significant first, the last group
# padded with zero bits) under another alphabet: the conversion runs in C through base64.
_RFC4648 = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
_TO_VALUES = bytes.maketrans(_RFC4648, bytes(range(32)))  # base32 text -> 5-bit values
_TO_CHARSET = bytes.maketrans(_RFC4648, _CHARSET.encode())  # base32 text -> Bech32 text
_FROM_CHARSET = bytes.maketrans(_CHARSET.encode(), _RFC4648)  # Bech32 text -> base32 text
_INVALID = 0xFF
_CHARSET_VALUES = bytes(_VALUES.get(chr(b), _INVALID) for b in range(256))


def encode(hrp: str, data: bytes) -> str:
    """Encode ``data`` under ``hrp`` (given in lowercase); the result is lowercase."""
    if not hrp or any(not 33 <= ord(ch) <= 126 for ch in hrp) or hrp != hrp.lower():
        raise Bech32Error("the human-readable part must be lowercase printable ASCII")
    groups = base64.b32encode(data).rstrip(b"=")
    values = groups.translate(_TO_VALUES)
    polymod = _polymod(_hrp_expand(hrp) + values + bytes(6)) ^ _CHECKSUM_CONST
    checksum = "".join(_CHARSET[(polymod >> 5 * (5 - i)) & 31] for i in range(6))
    return hrp + "1" + groups.translate(_TO_CHARSET).decode("ascii") + checksum


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
    part = lower[pos + 1 :].encode("ascii")
    values = part.translate(_CHARSET_VALUES)
    if _INVALID in values:
        raise Bech32Error("invalid character in the data part")
    if _polymod(_hrp_expand(hrp) + values) != _CHECKSUM_CONST:
        raise Bech32Error("invalid checksum")
    return hrp, _to_bytes(part[:-6], values[:-6])


def _to_bytes(part: bytes, values: bytes) -> bytes:
    """The bytes of the 5-bit groups (``part`` in Bech32's alphabet, ``values`` the same as
    numbers): at most 4 padding bits, all zero, as BIP 173's conversion requires."""
    leftover = len(values) * 5 % 8
    if leftover >= 5 or (values and values[-1] & ((1 << leftover) - 1)):
        raise Bech32Error("invalid padding in the data part")
    padded = part.translate(_FROM_CHARSET) + b"=" * (-len(part) % 8)
    return base64.b32decode(padded)
