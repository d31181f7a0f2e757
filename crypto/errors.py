"""Every error that leaves ``crypto/``.

One boundary, one family: callers catch :class:`CryptoError` (or one operation's subclass) and
never a ``cryptography`` exception. Messages are safe to show to the caller: they never contain key
material, file keys or plaintext. Details that would help an attacker stay in logs.

    CryptoError
    ├── MalformedError            input cannot be parsed (bad encoding, wrong length, bad JSON)
    │   └── SealingKindError      a seal's recipients mix post-quantum and classic, or a
    │                             manifest's "sealing" does not match its recipients; also a
    │                             RecipientsError (and so a ValueError)
    ├── KeyLoadError              a private key could not be loaded: wrong passphrase, corrupt file
    ├── RecipientsError           these age recipients cannot be used together (none; post-quantum
    │                             mixed with classic; a passphrase with others); also a ValueError
    ├── VerificationError         the check ran and failed: the signature or digest is bad
    ├── VerificationUnavailableError
    │                             the check could not run: no trusted key for the key id, an
    │                             unsupported algorithm
    └── DecryptionError           age: the file could not be decrypted; no plaintext was released
        ├── NoIdentityMatchError  no identity opens any recipient stanza ("no match")
        ├── HeaderError           the header is malformed or a stanza is invalid ("header failure")
        ├── HeaderMacError        the header MAC does not verify ("HMAC failure")
        ├── PayloadError          a STREAM chunk fails to authenticate or is framed wrongly
        │                         ("payload failure")
        └── ArmorError            the ASCII armor is malformed ("armor failure")
"""

from __future__ import annotations

__all__ = [
    "ArmorError",
    "CryptoError",
    "DecryptionError",
    "HeaderError",
    "HeaderMacError",
    "KeyLoadError",
    "MalformedError",
    "NoIdentityMatchError",
    "PayloadError",
    "RecipientsError",
    "SealingKindError",
    "VerificationError",
    "VerificationUnavailableError",
]


class CryptoError(Exception):
    """Base of every error raised by ``crypto/``."""


class MalformedError(CryptoError):
    """The input is not of the expected form (encoding, length, structure)."""


class KeyLoadError(CryptoError):
    """A private key could not be loaded: wrong passphrase or a corrupt key file."""


class RecipientsError(CryptoError, ValueError):
    """The age recipients of one file cannot be used together."""


class SealingKindError(MalformedError, RecipientsError):
    """Post-quantum and classic recipients given for one seal, or a manifest whose declared
    sealing kind does not match the recipients it lists."""


class VerificationError(CryptoError):
    """A signature or digest check ran and failed."""


class VerificationUnavailableError(CryptoError):
    """A check could not run: no trusted key for the key id, or an unsupported algorithm."""


class DecryptionError(CryptoError):
    """An age file could not be decrypted. No plaintext was released."""


class NoIdentityMatchError(DecryptionError):
    """None of the identities opens any recipient stanza of the header."""


class HeaderError(DecryptionError):
    """The age header is malformed, or a recipient stanza is invalid."""


class HeaderMacError(DecryptionError):
    """The age header MAC does not verify."""


class PayloadError(DecryptionError):
    """The age payload is truncated, framed wrongly, or a chunk fails to authenticate."""


class ArmorError(DecryptionError):
    """The ASCII armor around an age file is malformed."""
