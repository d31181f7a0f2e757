"""Key sets: the keys that sign for one node together, Ed25519 plus an optional ML-DSA-65 key.

Signatures that must stay verifiable for decades (manifests, descriptors, receipts, onward chains)
are *hybrid*: the same DSSE envelope carries an Ed25519 signature and an ML-DSA-65 signature over
the same PAE. A forger then has to break both: Ed25519 (classical, broken by a large quantum
computer) and ML-DSA-65 (post-quantum, young). :class:`SignerSet` is the private side, which signs
with every key it holds; :class:`KeySet` is the public side a verifier trusts, and the rule
(``crypto.dsse.verify_envelope(keysets=...)``) is that an envelope verifies for a key set only when
*every* key of the set signed it. A key set without an ML-DSA key is a partner that has not
upgraded, and Ed25519 alone is accepted only from such a set.

A set is named by its Ed25519 fingerprint, which is what operators pin and what the rest of
Entente calls a node's fingerprint. This module does not decide which sets to trust, store keys,
or sign checkpoints (the audit log's checkpoint key is a separate Ed25519 key: see
``crypto.note``).
"""

from __future__ import annotations

from dataclasses import dataclass

from crypto.keys import Signer, SigningKey, Verifier, VerifyKey
from crypto.mldsa import MLDSASigningKey, MLDSAVerifyKey

__all__ = ["KeySet", "SignerSet", "signers_of"]


@dataclass(frozen=True)
class KeySet:
    """The public keys of one node at one time: Ed25519, and ML-DSA-65 once it has one."""

    ed25519: VerifyKey
    mldsa: MLDSAVerifyKey | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.ed25519, VerifyKey):
            raise TypeError("a key set's ed25519 key is a crypto.keys.VerifyKey")
        if self.mldsa is not None and not isinstance(self.mldsa, MLDSAVerifyKey):
            raise TypeError("a key set's mldsa key is a crypto.mldsa.MLDSAVerifyKey or None")

    @property
    def fingerprint(self) -> str:
        """The set's name: its Ed25519 key's fingerprint."""
        return self.ed25519.fingerprint

    @property
    def post_quantum(self) -> bool:
        return self.mldsa is not None

    @property
    def keys(self) -> tuple[Verifier, ...]:
        """Every key of the set; each must sign for an envelope to verify for the set."""
        return (self.ed25519,) if self.mldsa is None else (self.ed25519, self.mldsa)

    def __repr__(self) -> str:
        pq = "" if self.mldsa is None else f", mldsa={self.mldsa.fingerprint[:16]}…"
        return f"KeySet(ed25519={self.fingerprint[:16]}…{pq})"


@dataclass(frozen=True, repr=False)
class SignerSet:
    """The private keys of one node: signs with Ed25519 and, when present, ML-DSA-65."""

    ed25519: SigningKey
    mldsa: MLDSASigningKey | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.ed25519, SigningKey):
            raise TypeError("a signer set's ed25519 key is a crypto.keys.SigningKey")
        if self.mldsa is not None and not isinstance(self.mldsa, MLDSASigningKey):
            raise TypeError("a signer set's mldsa key is a crypto.mldsa.MLDSASigningKey or None")

    @property
    def fingerprint(self) -> str:
        return self.ed25519.fingerprint

    @property
    def public(self) -> KeySet:
        return KeySet(self.ed25519.public, None if self.mldsa is None else self.mldsa.public)

    @property
    def signers(self) -> tuple[Signer, ...]:
        return (self.ed25519,) if self.mldsa is None else (self.ed25519, self.mldsa)

    def __repr__(self) -> str:
        return f"SignerSet(public={self.public!r})"


def signers_of(signer: SigningKey | SignerSet) -> tuple[Signer, ...]:
    """The keys a recipe signs with: one Ed25519 key (the classic form) or a whole set."""
    return (signer,) if isinstance(signer, SigningKey) else signer.signers
