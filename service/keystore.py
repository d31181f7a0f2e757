"""The node's private keys at rest: which files hold them, how they are made, unlocked, retired.

    keys/signing.key        Ed25519 seed: signs manifests, receipts, notices, requests,
                            descriptors; on a post-quantum node followed by the ML-DSA-65 seed,
                            the second signature on what must last (manifests, descriptors,
                            receipts, onward chains): both seeds in one file, one scrypt
    keys/mldsa.key          the ML-DSA-65 seed in a file of its own: homes made (or last
                            rotated) before the two shared a file; still read, never written
    keys/checkpoint.key     Ed25519 seed: signs the audit log's checkpoints and nothing else
                            (absent on a home made before it existed: the signing key does)
    keys/identity.key       age X25519 identity
    keys/pq-identity.key    age hybrid ML-KEM-768 + X25519 identity; absent on a classic-only node
    keys/retired/<fp>.<name>.key   the files above as they were before the rotation that retired
                            the signing key with fingerprint <fp>

Each file is age-encrypted under the node's passphrase (scrypt), or, for demos only, written
unencrypted behind a banner. Each scrypt costs 256 MiB and half a second to a second at the default
work factor, so a command unlocks only the files it uses (:class:`KeyNeed`: a seal the signing
keys, one file, an open the identities its file was sealed to); ``serve`` unlocks them all, two at
a time. The two signing seeds share a file because they are always unlocked together: a second
scrypt bought no separation, and beside a large seal it cost a core for a second.

This module makes, writes and reads key files; it does not know where a home is, ask for a
passphrase or sign anything (``service.home``).
"""

from __future__ import annotations

import enum
import functools
import os
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
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

__all__ = [
    "KEY_FILES",
    "FreshKeys",
    "KeyFacts",
    "KeyNeed",
    "KeyNotUnlockedError",
    "NodeKeys",
    "read_key",
    "seal_key",
    "signing_secret",
    "split_signing_secret",
    "unlock_keys",
]

_INSECURE_BANNER = b"# UNENCRYPTED KEY (entente init --insecure-no-passphrase): for demos only\n"


class KeyNeed(enum.Flag):
    """Which key files a command unlocks (each is its own scrypt: 256 MiB and about half a
    second at the default work factor), so a command decrypts only the keys it uses."""

    SIGNING = enum.auto()  # Ed25519 and, on a post-quantum node, ML-DSA-65: what signs
    IDENTITY = enum.auto()  # the age X25519 identity
    HYBRID = enum.auto()  # the hybrid age identity (nothing to unlock on a classic-only node)
    CHECKPOINT = enum.auto()  # the audit log's checkpoint key
    RETIRED_SIGNING = enum.auto()  # signing and ML-DSA keys retired by rotations
    RETIRED_IDENTITIES = enum.auto()  # age identities retired by rotations
    IDENTITIES = IDENTITY | HYBRID | RETIRED_IDENTITIES  # everything that opens a file
    ALL = SIGNING | IDENTITY | HYBRID | CHECKPOINT | RETIRED_SIGNING | RETIRED_IDENTITIES


_NEED_NAMES = {
    KeyNeed.SIGNING: "signing key",
    KeyNeed.IDENTITY: "age identity",
    KeyNeed.HYBRID: "post-quantum age identity",
    KeyNeed.CHECKPOINT: "checkpoint key",
    KeyNeed.RETIRED_SIGNING: "retired signing keys",
    KeyNeed.RETIRED_IDENTITIES: "retired age identities",
}


class KeyNotUnlockedError(KeyStoreError):
    """A key was used that the command did not unlock (see :class:`KeyNeed`): a programming
    error, reported by name instead of an ``AttributeError`` or a silent ``None``."""


@dataclass(frozen=True)
class NodeKeys:
    """The unlocked private keys of a node, all or only those in :attr:`unlocked`. Reading a
    key that was not unlocked raises :class:`KeyNotUnlockedError` naming it. Never logged;
    repr shows fingerprints only."""

    unlocked: KeyNeed
    _signing: SigningKey | None = field(default=None, repr=False)
    _identity: age.X25519Identity | None = field(default=None, repr=False)
    _retired_signing: tuple[SigningKey, ...] = field(default=(), repr=False)
    _retired_identities: tuple[age.X25519Identity | age.HybridIdentity, ...] = field(
        default=(), repr=False
    )
    _hybrid: age.HybridIdentity | None = field(default=None, repr=False)  # None: classic-only
    _mldsa: MLDSASigningKey | None = field(default=None, repr=False)  # None: classic-only
    _checkpoint: SigningKey | None = field(default=None, repr=False)  # None: signing key signs
    _retired_mldsa: Mapping[str, MLDSASigningKey] = field(default_factory=dict, repr=False)

    def __repr__(self) -> str:
        if KeyNeed.SIGNING in self.unlocked and self._signing is not None:
            return f"NodeKeys(signing={self._signing.fingerprint[:16]}…)"
        return f"NodeKeys(unlocked={self.unlocked!r})"

    def _require(self, need: KeyNeed) -> None:
        if need & ~self.unlocked:
            raise self._missing(need & ~self.unlocked)

    @staticmethod
    def _missing(missing: KeyNeed) -> KeyNotUnlockedError:
        names = ", ".join(name for flag, name in _NEED_NAMES.items() if flag in missing)
        return KeyNotUnlockedError(f"the node's {names}: not unlocked for this command")

    @property
    def signing(self) -> SigningKey:
        if KeyNeed.SIGNING not in self.unlocked or self._signing is None:
            raise self._missing(KeyNeed.SIGNING)
        return self._signing

    @property
    def mldsa(self) -> MLDSASigningKey | None:
        """The second, post-quantum signature key; None on a classic-only node."""
        self._require(KeyNeed.SIGNING)
        return self._mldsa

    @property
    def identity(self) -> age.X25519Identity:
        if KeyNeed.IDENTITY not in self.unlocked or self._identity is None:
            raise self._missing(KeyNeed.IDENTITY)
        return self._identity

    @property
    def hybrid(self) -> age.HybridIdentity | None:
        """The post-quantum age identity; None on a classic-only node."""
        self._require(KeyNeed.HYBRID)
        return self._hybrid

    @property
    def checkpoint(self) -> SigningKey | None:
        """The log's own key; None on a home made before it existed (the signing key signs)."""
        self._require(KeyNeed.CHECKPOINT)
        return self._checkpoint

    @property
    def retired_signing(self) -> tuple[SigningKey, ...]:
        self._require(KeyNeed.RETIRED_SIGNING)
        return self._retired_signing

    @property
    def retired_mldsa(self) -> Mapping[str, MLDSASigningKey]:
        """Retired ML-DSA keys by the Ed25519 fingerprint they signed beside."""
        self._require(KeyNeed.RETIRED_SIGNING)
        return self._retired_mldsa

    @property
    def retired_identities(self) -> tuple[age.X25519Identity | age.HybridIdentity, ...]:
        self._require(KeyNeed.RETIRED_IDENTITIES)
        return self._retired_identities

    @property
    def signer(self) -> SignerSet:
        """What signs for the long term: Ed25519 and, on a post-quantum node, ML-DSA-65."""
        return SignerSet(self.signing, self.mldsa)

    @property
    def log_key(self) -> SigningKey:
        """The key that signs the audit log's checkpoints."""
        return self.checkpoint or self.signing

    @property
    def retired_keysets(self) -> list[KeySet]:
        """The public key sets of the retired signing keys (this node's older manifests and
        receipts verify against these)."""
        return [
            KeySet(k.public, None if (m := self.retired_mldsa.get(k.fingerprint)) is None
                   else m.public)
            for k in self.retired_signing
        ]  # fmt: skip

    @property
    def keysets(self) -> list[KeySet]:
        """This node's public key sets, current first, then retired ones (its own manifests and
        receipts verify against these)."""
        return [self.signer.public, *self.retired_keysets]

    @property
    def all_identities(self) -> list[age.X25519Identity | age.HybridIdentity]:
        """Every identity that may open what was sealed to this node, current and retired."""
        self._require(KeyNeed.IDENTITIES)
        return self.unlocked_identities

    @property
    def unlocked_identities(self) -> list[age.X25519Identity | age.HybridIdentity]:
        """The identities this command unlocked (current first, then retired); at least one
        kind of identity must have been asked for."""
        if not self.unlocked & KeyNeed.IDENTITIES:
            self._require(KeyNeed.IDENTITIES)
        found: list[age.X25519Identity | age.HybridIdentity] = []
        if self._identity is not None:
            found.append(self._identity)
        if self._hybrid is not None:
            found.append(self._hybrid)
        return [*found, *self._retired_identities]

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
            "signing.key": signing_secret(self.signing, self.mldsa),
            "identity.key": self.identity.to_string().encode(),
            "checkpoint.key": self.checkpoint.seed,
        }
        if self.hybrid is not None:
            files["pq-identity.key"] = self.hybrid.to_string().encode()
        for name, secret in files.items():
            write_atomically(keys_dir / name, seal(secret), overwrite=False)


KEY_FILES = ("signing", "identity", "pq-identity", "mldsa", "checkpoint")
_SEED = 32  # bytes of an Ed25519 seed, and of an ML-DSA-65 seed


def signing_secret(signing: SigningKey, mldsa: MLDSASigningKey | None) -> bytes:
    """What ``signing.key`` holds: the Ed25519 seed, then the ML-DSA-65 seed on a post-quantum
    node (the layout ``entente agreement`` key files already use)."""
    return signing.seed if mldsa is None else signing.seed + mldsa.seed


def split_signing_secret(secret: bytes, what: str) -> tuple[SigningKey, MLDSASigningKey | None]:
    """The keys of a ``signing.key`` secret: 32 bytes (Ed25519 alone) or 64 (and ML-DSA-65)."""
    if len(secret) == _SEED:
        return SigningKey(secret), None
    if len(secret) == 2 * _SEED:
        return SigningKey(secret[:_SEED]), _mldsa(secret[_SEED:])
    raise KeyStoreError(f"the {what} file is corrupt ({len(secret)} bytes)")


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


def _x25519_identity(secret: bytes) -> age.X25519Identity:
    try:
        return age.X25519Identity.from_string(secret.decode("ascii").strip())
    except (UnicodeDecodeError, CryptoError):
        raise KeyStoreError("the node's age identity file is corrupt") from None


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


# Key files decrypted at once: scrypt releases the GIL, so a command needing several keys waits
# for about one scrypt per core instead of one per file; each holds 256 MiB while it runs.
_UNLOCK_THREADS = 2


def _read_keys(paths: list[Path], passphrase: str | None) -> dict[Path, bytes]:
    """``read_key`` of each path, several at once when they are passphrase-protected."""
    if passphrase is None or len(paths) < 2:
        return {path: read_key(path, passphrase) for path in paths}
    threads = min(_UNLOCK_THREADS, os.cpu_count() or 1, len(paths))
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="unlock") as pool:
        futures = {path: pool.submit(read_key, path, passphrase) for path in paths}
        return {path: future.result() for path, future in futures.items()}


def unlock_keys(
    keys_dir: Path, facts: KeyFacts, passphrase: str | None, need: KeyNeed = KeyNeed.ALL
) -> NodeKeys:
    """Decrypt the key files ``need`` names (every one by default) in ``keys_dir`` and check
    each against ``facts``; the others are not read."""
    current: dict[str, Path] = {}
    if KeyNeed.SIGNING in need:
        current["signing"] = keys_dir / "signing.key"
        if facts.mldsa_fingerprint is not None and (keys_dir / "mldsa.key").exists():
            current["mldsa"] = keys_dir / "mldsa.key"  # a home made before one file held both
    if KeyNeed.IDENTITY in need:
        current["identity"] = keys_dir / "identity.key"
    if KeyNeed.HYBRID in need and facts.pq_recipient is not None:
        current["pq-identity"] = keys_dir / "pq-identity.key"
    if KeyNeed.CHECKPOINT in need and facts.checkpoint_fingerprint is not None:
        current["checkpoint"] = keys_dir / "checkpoint.key"
    wanted: set[str] = set()
    if KeyNeed.RETIRED_SIGNING in need:
        wanted |= {"signing", "mldsa"}
    if KeyNeed.RETIRED_IDENTITIES in need:
        wanted |= {"identity", "pq-identity"}
    retired = [entry for entry in retired_key_files(keys_dir) if entry[1] in wanted]
    secrets = _read_keys([*current.values(), *(path for _, _, path in retired)], passphrase)

    signing = identity = hybrid = mldsa = checkpoint = None
    if "signing" in current:
        signing, mldsa = split_signing_secret(secrets[current["signing"]], "node's signing key")
        _check("signing key", signing.fingerprint, facts.fingerprint, keys_dir)
        if "mldsa" in current:
            if mldsa is not None:
                raise KeyStoreError(f"{keys_dir} holds two ML-DSA keys (signing.key, mldsa.key)")
            mldsa = _mldsa(secrets[current["mldsa"]])
        if mldsa is None and facts.mldsa_fingerprint is not None:
            raise KeyStoreError(f"the ML-DSA key is missing from {keys_dir} (node.json names one)")
        if mldsa is not None:
            _check("ML-DSA key", mldsa.fingerprint, facts.mldsa_fingerprint, keys_dir)
    if "identity" in current:
        identity = _x25519_identity(secrets[current["identity"]])
    if "pq-identity" in current:
        hybrid = _hybrid_identity(secrets[current["pq-identity"]])
        _check("post-quantum identity", hybrid.recipient.to_string(), facts.pq_recipient,
               keys_dir)  # fmt: skip
    if "checkpoint" in current:
        checkpoint = SigningKey(secrets[current["checkpoint"]])
        _check("checkpoint key", checkpoint.fingerprint, facts.checkpoint_fingerprint, keys_dir)
    retired_s: list[SigningKey] = []
    retired_i: list[age.X25519Identity | age.HybridIdentity] = []
    retired_m: dict[str, MLDSASigningKey] = {}
    for fingerprint, kind, path in retired:
        if kind == "signing":
            retired_key, retired_mldsa = split_signing_secret(
                secrets[path], f"retired key {path.name}"
            )
            retired_s.append(retired_key)
            if retired_mldsa is not None:
                retired_m[fingerprint] = retired_mldsa
        elif kind == "identity":
            retired_i.append(_x25519_identity(secrets[path]))
        elif kind == "pq-identity":
            retired_i.append(_hybrid_identity(secrets[path]))
        elif kind == "mldsa":
            retired_m[fingerprint] = _mldsa(secrets[path])
    return NodeKeys(
        unlocked=need,
        _signing=signing,
        _identity=identity,
        _retired_signing=tuple(retired_s),
        _retired_identities=tuple(retired_i),
        _hybrid=hybrid,
        _mldsa=mldsa,
        _checkpoint=checkpoint,
        _retired_mldsa=retired_m,
    )


def retired_key_files(keys_dir: Path) -> list[tuple[str, str, Path]]:
    """The retired key files in ``keys_dir``: (signing key fingerprint, kind, path), sorted."""
    retired = keys_dir / "retired"
    found = sorted(retired.glob("*.key")) if retired.is_dir() else []
    return [(*_split_retired(path.name), path) for path in found]


def _split_retired(name: str) -> tuple[str, str]:
    fingerprint, _, kind = name.removesuffix(".key").partition(".")
    return fingerprint, kind
