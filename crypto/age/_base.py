"""The two roles in age: a recipient wraps a file key into stanzas, an identity unwraps it.

Mixing rules follow age: a passphrase (scrypt) stanza must be the only one in a header, and
post-quantum recipients are not mixed with classic ones (the file would be only as strong as the
weakest recipient). Each recipient class declares its ``mix_label`` for that check.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import ClassVar

from crypto.age._format import Stanza

__all__ = ["Identity", "Recipient", "Rng"]

Rng = Callable[[int], bytes]


class Recipient(ABC):
    """Something a file can be encrypted to."""

    __slots__ = ()

    #: "classic", "postquantum" or "passphrase"; see :func:`crypto.age.encrypt`.
    mix_label: ClassVar[str]

    @abstractmethod
    def wrap(self, file_key: bytes, *, rng: Rng) -> list[Stanza]:
        """Wrap the 16-byte file key into one or more stanzas."""


class Identity(ABC):
    """Something that may decrypt a file."""

    __slots__ = ()

    @abstractmethod
    def unwrap(self, stanzas: Sequence[Stanza]) -> bytes | None:
        """The file key, or ``None`` when no stanza is addressed to (or opens for) this identity.

        Raises :class:`~crypto.errors.HeaderError` when a stanza of this identity's type is
        malformed: such a file is rejected, not skipped.
        """
