"""The node's private keys at rest: which files hold them, how they are made, unlocked, retired.

    keys/signing.key        Ed25519 seed: signs manifests, receipts, notices, requests, descriptors
    keys/mldsa.key          ML-DSA-65 seed: the second signature on what must last (manifests,
                            descriptors, receipts, onward chains); absent on a classic-only node
    keys/checkpoint.key     Ed25519 seed: signs the audit log's checkpoints and nothing else
                            (absent on a home made before it existed: the signing key does)
    keys/identity.key       age X25519 identity
    keys/pq-identity.key    age hybrid ML-KEM-768 + X25519 identity; absent on a classic-only node
    keys/retired/<fp>.<name>.key   the files above as they were before the rotation that retired
                            the signing key with fingerprint <fp>

Each file is age-encrypted under the node's passphrase (scrypt), or, for demos only, written
unencrypted behind a banner. This module makes, writes and reads key files; it does not know
where a home is, ask for a passphrase or sign anything (``service.home``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from crypto import age
from crypto.descriptor import NodeDescriptor
from crypto.errors import CryptoError, KeyLoadError
from crypto.keys import SigningKey
from crypto.keyset import KeySet, SignerSet
from crypto.mldsa import MLDSASigningKey
from service.errors import KeyStoreError
from service.files import write_atomically

__all__ = ["KEY_FILES", "FreshKeys", "KeyFacts", "NodeKeys", "read_key", "seal_key", "unlock_keys"]

_INSECURE_BANNER = b"# UNENCRYPTED KEY (entente init --insecure-no-passphrase): for demos only\n"


@dataclass(frozen=True)
class NodeKeys:
    """The unlocked private keys of a node. Never logged; repr shows fingerprints only."""

    signing: SigningKey
    identity: age.X25519Identity
    retired_signing: tuple[SigningKey, ...] = ()
    retired_identities: tuple[age.X25519Identity | age.HybridIdentity, ...] = ()
    hybrid: age.HybridIdentity | None = None  # post-quantum; None on a classic-only node
    mldsa: MLDSASigningKey | None = None  # the second, post-quantum signature
    checkpoint: SigningKey | None = None  # the log's own key; None: the signing key signs
    retired_mldsa: Mapping[str, MLDSASigningKey] = field(default_factory=dict)  # by Ed25519 fp

    def __repr__(self) -> str:
        return f"NodeKeys(signing={self.signing.fingerprint[:16]}…)"

    @property
    def signer(self) -> SignerSet:
        """What signs for the long term: Ed25519 and, on a post-quantum node, ML-DSA-65."""
        return SignerSet(self.signing, self.mldsa)

    @property
    def log_key(self) -> SigningKey:
        """The key that signs the audit log's checkpoints."""
        return self.checkpoint or self.signing

    @property
    def keysets(self) -> list[KeySet]:
        """This node's public key sets, current first, then retired ones (its own manifests and
        receipts verify against these)."""
        retired = [
            KeySet(k.public, None if (m := self.retired_mldsa.get(k.fingerprint)) is None
                   else m.public)
            for k in self.retired_signing
        ]  # fmt: skip
        return [self.signer.public, *retired]

    @property
    def all_identities(self) -> list[age.X25519Identity | age.HybridIdentity]:
        """Every identity that may open what was sealed to this node, current and retired."""
        current: list[age.X25519Identity | age.HybridIdentity] = [self.identity]
        if self.hybrid is not None:
            current.append(self.hybrid)
        return [*current, *self.retired_identities]

    @functools.cached_property
    def recipients(self) -> frozenset[str]:
        """The age recipient strings of :attr:`all_identities`, encoded once (a hybrid one is
        ~2 ms of Bech32; a receiver checks every delivery against these)."""
        return frozenset(i.recipient.to_string() for i in self.all_identities)


@dataclass(frozen=True)
class KeyFacts:
    """What ``node.json`` says about the keys, to check the files against."""

    fingerprint: str
    pq_recipient: str | None = None
    mldsa_fingerprint: str | None = None
    checkpoint_fingerprint: str | None = None


@dataclass(frozen=True, repr=False)
class FreshKeys:
    """A new set of node keys, for ``init`` and for a rotation."""

    signing: SigningKey
    identity: age.X25519Identity
    checkpoint: SigningKey
    hybrid: age.HybridIdentity | None = None
    mldsa: MLDSASigningKey | None = None

    @classmethod
    def generate(cls, *, post_quantum: bool) -> FreshKeys:
        return cls(
            signing=SigningKey.generate(),
            identity=age.X25519Identity.generate(),
            checkpoint=SigningKey.generate(),
            hybrid=age.HybridIdentity.generate() if post_quantum else None,
            mldsa=MLDSASigningKey.generate() if post_quantum else None,
        )

    @property
    def signer(self) -> SignerSet:
        return SignerSet(self.signing, self.mldsa)

    @property
    def pq_recipient(self) -> str | None:
        return None if self.hybrid is None else self.hybrid.recipient.to_string()

    def descriptor(
        self,
        *,
        node_id: str,
        name: str,
        url: str,
        created: datetime,
        expires: datetime,
        previous: str | None = None,
    ) -> NodeDescriptor:
        return NodeDescriptor(
            node_id=node_id,
            name=name,
            url=url,
            signing_key=self.signing.public,
            age_recipient=self.identity.recipient.to_string(),
            pq_recipient=self.pq_recipient,
            mldsa_key=None if self.mldsa is None else self.mldsa.public,
            checkpoint_key=self.checkpoint.public,
            created=created,
            expires=expires,
            previous=previous,
        )

    def facts(self) -> dict[str, Any]:
        """The public facts ``node.json`` keeps about these keys."""
        return {
            "fingerprint": self.signing.fingerprint,
            "age_recipient": self.identity.recipient.to_string(),
            "pq_recipient": self.pq_recipient,
            "mldsa_fingerprint": None if self.mldsa is None else self.mldsa.fingerprint,
            "checkpoint_fingerprint": self.checkpoint.fingerprint,
        }

    def write(self, keys_dir: Path, seal: Callable[[bytes], bytes]) -> None:
        """Write every key file into ``keys_dir`` (new files only), each sealed by ``seal``."""
        files: dict[str, bytes] = {
            "signing.key": self.signing.seed,
            "identity.key": self.identity.to_string().encode(),
            "checkpoint.key": self.checkpoint.seed,
        }
        if self.hybrid is not None:
            files["pq-identity.key"] = self.hybrid.to_string().encode()
        if self.mldsa is not None:
            files["mldsa.key"] = self.mldsa.seed
        for name, secret in files.items():
            write_atomically(keys_dir / name, seal(secret), overwrite=False)


KEY_FILES = ("signing", "identity", "pq-identity", "mldsa", "checkpoint")


def seal_key(secret: bytes, passphrase: str | None, work_factor: int) -> bytes:
    if passphrase is None:
        return _INSECURE_BANNER + secret.hex().encode("ascii") + b"\n"
    return age.encrypt_with_passphrase(secret, passphrase, work_factor=work_factor)


def read_key(path: Path, passphrase: str | None) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise KeyStoreError(f"cannot read key file {path}: {exc.strerror}") from None
    if data.startswith(_INSECURE_BANNER):
        try:
            return bytes.fromhex(data[len(_INSECURE_BANNER) :].decode("ascii").strip())
        except ValueError:
            raise KeyStoreError(f"the key file {path} is corrupt") from None
    if passphrase is None:
        raise KeyStoreError(f"the key file {path} is encrypted but the home says it is not")
    try:
        return age.decrypt_with_passphrase(data, passphrase)
    except KeyLoadError:
        raise KeyStoreError("wrong passphrase for the node's key files") from None
    except CryptoError:
        raise KeyStoreError(f"the key file {path} is corrupt") from None


def _hybrid_identity(secret: bytes) -> age.HybridIdentity:
    try:
        return age.HybridIdentity.from_string(secret.decode("ascii").strip())
    except (UnicodeDecodeError, CryptoError):
        raise KeyStoreError("the node's post-quantum identity file is corrupt") from None


def _mldsa(secret: bytes) -> MLDSASigningKey:
    try:
        return MLDSASigningKey(secret)
    except CryptoError:
        raise KeyStoreError("the node's ML-DSA key file is corrupt") from None


def _check(what: str, got: str, want: str | None, keys_dir: Path) -> None:
    if got != want:
        raise KeyStoreError(f"the {what} in {keys_dir} does not match node.json")


def unlock_keys(keys_dir: Path, facts: KeyFacts, passphrase: str | None) -> NodeKeys:
    """Decrypt every key file in ``keys_dir`` and check each against ``facts``."""
    signing = SigningKey(read_key(keys_dir / "signing.key", passphrase))
    _check("signing key", signing.fingerprint, facts.fingerprint, keys_dir)
    identity = age.X25519Identity.from_string(
        read_key(keys_dir / "identity.key", passphrase).decode("ascii").strip()
    )
    hybrid = mldsa = checkpoint = None
    if facts.pq_recipient is not None:
        hybrid = _hybrid_identity(read_key(keys_dir / "pq-identity.key", passphrase))
        _check("post-quantum identity", hybrid.recipient.to_string(), facts.pq_recipient,
               keys_dir)  # fmt: skip
    if facts.mldsa_fingerprint is not None:
        mldsa = _mldsa(read_key(keys_dir / "mldsa.key", passphrase))
        _check("ML-DSA key", mldsa.fingerprint, facts.mldsa_fingerprint, keys_dir)
    if facts.checkpoint_fingerprint is not None:
        checkpoint = SigningKey(read_key(keys_dir / "checkpoint.key", passphrase))
        _check("checkpoint key", checkpoint.fingerprint, facts.checkpoint_fingerprint, keys_dir)
    retired = keys_dir / "retired"
    found = sorted(retired.glob("*.key")) if retired.is_dir() else []
    retired_s: list[SigningKey] = []
    retired_i: list[age.X25519Identity | age.HybridIdentity] = []
    retired_m: dict[str, MLDSASigningKey] = {}
    for path in found:
        fingerprint, _, kind = path.name.removesuffix(".key").partition(".")
        if kind == "signing":
            retired_s.append(SigningKey(read_key(path, passphrase)))
        elif kind == "identity":
            text = read_key(path, passphrase).decode("ascii").strip()
            retired_i.append(age.X25519Identity.from_string(text))
        elif kind == "pq-identity":
            retired_i.append(_hybrid_identity(read_key(path, passphrase)))
        elif kind == "mldsa":
            retired_m[fingerprint] = _mldsa(read_key(path, passphrase))
    return NodeKeys(
        signing=signing,
        identity=identity,
        retired_signing=tuple(retired_s),
        retired_identities=tuple(retired_i),
        hybrid=hybrid,
        mldsa=mldsa,
        checkpoint=checkpoint,
        retired_mldsa=retired_m,
    )
