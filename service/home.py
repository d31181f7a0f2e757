"""The node's home folder: identity, encrypted keys, policies, blobs and (by default) the database.

    <home>/node.json              public facts: node id, name, URL, fingerprint, key protection
    <home>/descriptor.dsse.json   the signed node descriptor served at /.well-known/entente.json
    <home>/keys/                  the private keys, age-encrypted under the passphrase (scrypt):
                                  signing and ML-DSA keys, the log's checkpoint key, the age
                                  identities (X25519 and hybrid post-quantum); see service.keystore
    <home>/keys/retired/          keys replaced by rotation, kept to verify and open old artifacts
    <home>/policies/              one MOU policy file per partner (YAML)
    <home>/blobs/                 content-addressed ciphertext (unless ENTENTE_BLOB_DIR is set)
    <home>/entente.db             SQLite database (unless ENTENTE_DATABASE_URL is set)

Creation is atomic: everything is written into a temporary sibling folder that is renamed into
place last, so a failed ``init`` leaves nothing behind. Key files are mode 0600, folders 0700.

:func:`claim_for_serving` keeps two ``entente serve`` processes from serving one home by mistake:
on SQLite a node runs in one process (``--workers N`` for more), so a second one is refused;
on PostgreSQL a second one is a replica, and is told so.
"""

from __future__ import annotations

import fcntl
import getpass
import json
import os
import shutil
import sys
import tempfile
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from crypto import strict_json
from crypto.descriptor import DESCRIPTOR_PAYLOAD_TYPE, NodeDescriptor, sign_descriptor
from crypto.dsse import Envelope, verify_envelope
from crypto.errors import CryptoError
from crypto.keyset import KeySet
from crypto.vocab import is_node_id
from service.errors import HomeError, UsageError
from service.files import write_atomically
from service.keystore import (
    KEY_FILES,
    FreshKeys,
    KeyFacts,
    KeyNeed,
    NodeKeys,
    seal_key,
    unlock_keys,
)
from service.settings import Settings

__all__ = [
    "Home",
    "KeyNeed",
    "NodeKeys",
    "Rotation",
    "ServeClaim",
    "claim_for_serving",
    "create_home",
    "open_home",
    "read_passphrase",
    "rotate_keys",
]

HOME_FORMAT = 1


@dataclass(frozen=True)
class Home:
    path: Path
    node_id: str
    name: str
    url: str
    fingerprint: str
    age_recipient: str
    protected: bool  # False when created with --insecure-no-passphrase
    pq_recipient: str | None = None  # hybrid age1pq1…; None on a classic-only node
    mldsa_fingerprint: str | None = None  # ML-DSA-65 key; None on a classic-only node
    checkpoint_fingerprint: str | None = None  # the log's key; None: the signing key signs

    @property
    def key_facts(self) -> KeyFacts:
        return KeyFacts(
            self.fingerprint, self.pq_recipient, self.mldsa_fingerprint, self.checkpoint_fingerprint
        )

    @property
    def keys_dir(self) -> Path:
        return self.path / "keys"

    @property
    def policies_dir(self) -> Path:
        return self.path / "policies"

    @property
    def descriptor_path(self) -> Path:
        return self.path / "descriptor.dsse.json"

    def descriptor_envelope(self) -> Envelope:
        try:
            return Envelope.from_bytes(self.descriptor_path.read_bytes())
        except (OSError, CryptoError) as exc:
            raise HomeError(f"cannot read the node descriptor in {self.path}: {exc}") from None

    def unlock(self, settings: Settings, need: KeyNeed = KeyNeed.ALL) -> NodeKeys:
        """Decrypt the key files ``need`` names (every one by default: ``serve`` and anything
        that may use any key); a wrong passphrase is a :class:`KeyStoreError`. Nothing needed,
        nothing asked: no passphrase is read."""
        return unlock_keys(self.keys_dir, self.key_facts, self._passphrase(settings, need), need)

    def _passphrase(self, settings: Settings, need: KeyNeed) -> str | None:
        """The passphrase when ``need`` names key files and they are protected, else None."""
        return read_passphrase(settings, confirm=False) if self.protected and need else None

    def unlock_meanwhile(self, settings: Settings, need: KeyNeed) -> Future[NodeKeys]:
        """:meth:`unlock` on a thread of its own, so that a command can do work that needs no
        private key (reading and encrypting a file) during the scrypt. The passphrase is read
        (or asked for) here, on the calling thread, before this returns."""
        passphrase = self._passphrase(settings, need)
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="unlock")
        try:
            return pool.submit(unlock_keys, self.keys_dir, self.key_facts, passphrase, need)
        finally:
            pool.shutdown(wait=False)  # the thread ends with its one job

    def public_keyset(self) -> KeySet:
        """This node's current public key set (Ed25519 and ML-DSA-65), from its own descriptor,
        self-signed and checked against node.json: no private key is unlocked."""
        envelope = self.descriptor_envelope()
        try:
            descriptor = NodeDescriptor.from_json(strict_json.loads(envelope.payload))
            verify_envelope(
                envelope, keysets=[descriptor.keyset], payload_type=DESCRIPTOR_PAYLOAD_TYPE
            )
        except (UnicodeDecodeError, ValueError, CryptoError) as exc:
            raise HomeError(f"the node descriptor in {self.path} is invalid: {exc}") from None
        mldsa = descriptor.mldsa_key
        if descriptor.fingerprint != self.fingerprint or (
            (None if mldsa is None else mldsa.fingerprint) != self.mldsa_fingerprint
        ):
            raise HomeError(f"the node descriptor in {self.path} does not match node.json")
        return descriptor.keyset


def read_passphrase(settings: Settings, *, confirm: bool) -> str:
    """The passphrase from ENTENTE_PASSPHRASE, or a prompt when stdin is a terminal."""
    path = settings.passphrase_file
    credentials = os.environ.get("CREDENTIALS_DIRECTORY")  # systemd LoadCredential=passphrase
    if path is None and credentials and (Path(credentials) / "passphrase").is_file():
        path = Path(credentials) / "passphrase"
    if settings.passphrase is not None:
        value = settings.passphrase.get_secret_value()
    elif path is not None:
        try:
            value = path.read_text(encoding="utf-8").rstrip("\r\n")
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"cannot read the passphrase file {path}: {exc}") from None
    elif sys.stdin.isatty():
        value = getpass.getpass("Passphrase for the node's keys: ")
        if confirm and getpass.getpass("Repeat the passphrase: ") != value:
            raise UsageError("the passphrases do not match")
    else:
        raise UsageError(
            "the node's keys are encrypted: set ENTENTE_PASSPHRASE or ENTENTE_PASSPHRASE_FILE "
            "(or run on a terminal to be prompted)"
        )
    if len(value) < 8:
        raise UsageError("the passphrase must be at least 8 characters")
    return value


def _write_private(path: Path, data: bytes) -> None:
    """Write a new file (mode 0600) all or nothing; an existing one is never overwritten."""
    write_atomically(path, data, overwrite=False)


def create_home(
    settings: Settings,
    *,
    path: Path,
    node_id: str,
    name: str,
    url: str,
    now: datetime,
    post_quantum: bool = True,
) -> Home:
    """Create a new home with fresh keys and a signed descriptor. Refuses an existing path.

    ``post_quantum`` (the default) adds a hybrid ML-KEM-768 + X25519 age identity, advertised in
    the descriptor, so that shares to partners that have one too are sealed post-quantum; without
    it the node is classic-only, for federations whose partners cannot read hybrid files yet.
    """
    if not is_node_id(node_id):
        raise UsageError("--node-id must be lowercase letters, digits and '-' (1-63 characters)")
    if not url.startswith(("http://", "https://")):
        raise UsageError("--url must start with http:// or https://")
    if path.exists():
        raise HomeError(f"{path} already exists; refusing to overwrite a node home")
    passphrase = (
        None if settings.insecure_no_passphrase else read_passphrase(settings, confirm=True)
    )
    parent = path.resolve().parent
    if not parent.is_dir():
        raise HomeError(f"the parent folder {parent} does not exist")

    fresh = FreshKeys.generate(post_quantum=post_quantum)
    validity = timedelta(days=settings.descriptor_validity_days)
    descriptor = fresh.descriptor(
        node_id=node_id, name=name, url=url.rstrip("/"), created=now, expires=now + validity
    )
    envelope = sign_descriptor(descriptor, key=fresh.signer)

    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.init-", dir=parent))
    try:
        os.chmod(staging, 0o700)
        keys = staging / "keys"
        keys.mkdir(mode=0o700)
        (staging / "policies").mkdir(mode=0o700)
        (staging / "blobs").mkdir(mode=0o700)
        wf = settings.scrypt_work_factor
        fresh.write(keys, lambda secret: seal_key(secret, passphrase, wf))
        facts: dict[str, Any] = {
            "format": HOME_FORMAT,
            "node_id": node_id,
            "name": name,
            "url": url.rstrip("/"),
            **fresh.facts(),
            "key_protection": "none" if passphrase is None else "age-scrypt",
            "created": now.astimezone(UTC).isoformat(),
        }
        (staging / "node.json").write_text(json.dumps(facts, indent=2) + "\n")
        (staging / "descriptor.dsse.json").write_bytes(envelope.to_bytes())
        os.rename(staging, path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return open_home(path)


@dataclass(frozen=True)
class Rotation:
    """The outcome of :func:`rotate_keys`."""

    home: Home
    previous: str  # fingerprint of the retired signing key
    descriptor: Envelope  # signed by the new key and the retired one
    previous_descriptor: Envelope  # the descriptor it retires


_ROTATION_JOURNAL = "rotation.json"
_ROTATED_FILES = (*(f"keys/{name}.key" for name in KEY_FILES), "descriptor.dsse.json", "node.json")


def rotate_keys(
    home: Home, settings: Settings, *, now: datetime, post_quantum: bool | None = None
) -> Rotation:
    """Replace the node's signing key and age identities with new ones (DESIGN section 4).

    ``post_quantum`` says whether the new keys include a hybrid age identity; ``None`` keeps what
    the node had, ``True`` adds one to a classic-only node (its partners pick it up with the
    signed rotation), ``False`` drops it (a node never does this unless a partner cannot read
    hybrid files at all).

    The new descriptor is signed by the new key and the old one, so partners that pin the old
    key can accept it. The old key files move to ``keys/retired/`` (still encrypted under the
    passphrase), so artifacts signed or encrypted before the rotation keep verifying and opening.
    Crash-safe: the retired copies and the new files are written first, then a journal names
    the staged files, then each is renamed into place; :func:`open_home` finishes a rotation the
    journal shows was interrupted.
    """
    passphrase = None if not home.protected else read_passphrase(settings, confirm=False)
    old = unlock_keys(home.keys_dir, home.key_facts, passphrase)
    old_descriptor = home.descriptor_envelope()
    if post_quantum is None:
        post_quantum = home.pq_recipient is not None
    fresh = FreshKeys.generate(post_quantum=post_quantum)
    descriptor = fresh.descriptor(
        node_id=home.node_id,
        name=home.name,
        url=home.url,
        created=now,
        expires=now + timedelta(days=settings.descriptor_validity_days),
        previous=old.signing.fingerprint,
    )
    envelope = sign_descriptor(descriptor, key=fresh.signer, previous_key=old.signer)
    retired = home.keys_dir / "retired"
    retired.mkdir(mode=0o700, exist_ok=True)
    for name in KEY_FILES:
        target = retired / f"{old.signing.fingerprint}.{name}.key"
        source = home.keys_dir / f"{name}.key"
        if not target.exists() and source.exists():
            _write_private(target, source.read_bytes())
    staging = Path(tempfile.mkdtemp(prefix=".rotate-", dir=home.path))
    try:
        wf = settings.scrypt_work_factor
        (staging / "keys").mkdir(mode=0o700)
        fresh.write(staging / "keys", lambda secret: seal_key(secret, passphrase, wf))
        facts = json.loads((home.path / "node.json").read_text())
        facts.update(fresh.facts())
        facts["rotated"] = now.astimezone(UTC).isoformat()
        _write_private(staging / "node.json", (json.dumps(facts, indent=2) + "\n").encode())
        _write_private(staging / "descriptor.dsse.json", envelope.to_bytes())
        journal = {
            "staging": staging.name,
            "fingerprint": fresh.signing.fingerprint,
            "keys": sorted(p.name for p in (staging / "keys").iterdir()),
        }
        _write_private(home.path / _ROTATION_JOURNAL, json.dumps(journal).encode())
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _finish_rotation(home.path)
    return Rotation(open_home(home.path), old.signing.fingerprint, envelope, old_descriptor)


def _finish_rotation(path: Path) -> None:
    """Roll an interrupted key rotation forward (see :func:`rotate_keys`)."""
    journal_path = path / _ROTATION_JOURNAL
    if not journal_path.is_file():
        return
    try:
        journal = json.loads(journal_path.read_text())
        staging = path / str(journal["staging"])
        new_keys = {str(name) for name in journal.get("keys", [])}
    except (OSError, ValueError, KeyError, TypeError):
        raise HomeError(f"{journal_path} is corrupt; restore the home from a backup") from None
    if staging.parent != path or not staging.name.startswith(".rotate-"):
        raise HomeError(f"{journal_path} names an unexpected folder")
    for name in _ROTATED_FILES:
        staged = staging / name
        if staged.exists():
            os.replace(staged, path / name)
        elif new_keys and name.startswith("keys/") and name[len("keys/") :] not in new_keys:
            # a key the new set does not have (a node made classic-only again): its copy is
            # in keys/retired/, and node.json no longer names it
            (path / name).unlink(missing_ok=True)
    shutil.rmtree(staging, ignore_errors=True)
    journal_path.unlink()


def open_home(path: Path) -> Home:
    """Read an existing home's public facts; raise :class:`HomeError` if it is not one."""
    _finish_rotation(path)
    facts_path = path / "node.json"
    if not path.is_dir():
        raise HomeError(f"{path} is not a node home (no such folder); run `entente init` first")
    try:
        facts = json.loads(facts_path.read_text())
    except FileNotFoundError:
        raise HomeError(f"{path} is not a node home (no node.json)") from None
    except (OSError, ValueError) as exc:
        raise HomeError(f"{facts_path} is unreadable: {exc}") from None
    try:
        if facts["format"] != HOME_FORMAT:
            raise HomeError(f"{path} has home format {facts['format']}, expected {HOME_FORMAT}")
        return Home(
            path=path,
            node_id=str(facts["node_id"]),
            name=str(facts["name"]),
            url=str(facts["url"]),
            fingerprint=str(facts["fingerprint"]),
            age_recipient=str(facts["age_recipient"]),
            protected=facts["key_protection"] != "none",
            pq_recipient=_optional_str(facts.get("pq_recipient")),
            mldsa_fingerprint=_optional_str(facts.get("mldsa_fingerprint")),
            checkpoint_fingerprint=_optional_str(facts.get("checkpoint_fingerprint")),
        )
    except (KeyError, TypeError):
        raise HomeError(f"{facts_path} is missing required fields") from None


def _optional_str(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise TypeError("not a string")
    return value


@dataclass
class ServeClaim:
    """This process's claim to serve a home: the held lock (``fd``), or the process id of the
    one that holds it when this process joins it as a replica (``other_pid``)."""

    fd: int | None
    other_pid: int | None

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # releases the lock
            self.fd = None


def claim_for_serving(home: Path, *, replicas_allowed: bool) -> ServeClaim:
    """Take an exclusive ``flock`` on the home folder itself for this process (kept until
    :meth:`ServeClaim.release` or exit; nothing is written). When another process holds it: a
    :class:`HomeError` naming that process, unless ``replicas_allowed`` (a shared PostgreSQL
    database), where this process joins it as a replica. A file system without ``flock`` on
    folders gives no claim and no error."""
    try:
        fd = os.open(home, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as exc:
        raise HomeError(f"cannot open the node home {home}: {exc.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _flock_holder(fd)
        os.close(fd)
        if replicas_allowed:
            return ServeClaim(None, holder or 0)
        raise HomeError(
            f"{home} is already served by process {holder or '(unknown)'}; a node on SQLite "
            "runs in one process: stop that one first, or serve with --workers N for more "
            "processes (replicas need PostgreSQL)"
        ) from None
    except OSError:
        os.close(fd)
        return ServeClaim(None, None)
    return ServeClaim(fd, None)


def _flock_holder(fd: int) -> int | None:
    """The process holding a ``flock`` on ``fd``'s file, from /proc/locks (Linux), if shown."""
    inode = os.fstat(fd).st_ino
    try:
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        if (
            len(fields) >= 6
            and fields[1:2] + fields[3:4] == ["FLOCK", "WRITE"]
            and fields[5].rsplit(":", 1)[-1] == str(inode)
            and fields[4].isdigit()
        ):
            return int(fields[4])
    return None
