"""`entente seal`, `open` and `verify` from a passphrase-protected home decrypt only the key files
they use: each is an scrypt (256 MiB and about half a second at the default work factor).

Counted in-process by wrapping the function that decrypts one key file, on a post-quantum home
before and after a key rotation; and a key that was not unlocked is an error naming it."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from typer.testing import CliRunner

from crypto import age
from service import keystore
from service.cli import app
from service.errors import KeyStoreError
from service.home import KeyNeed, create_home, open_home, rotate_keys
from service.keystore import KeyNotUnlockedError
from service.settings import Settings
from tests.nodes import PASSPHRASE, SCRYPT_WORK_FACTOR

KeyLog = list[str]


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    monkeypatch.delenv("ENTENTE_PASSPHRASE_FILE", raising=False)
    monkeypatch.delenv("ENTENTE_DATABASE_URL", raising=False)
    monkeypatch.setenv("ENTENTE_PASSPHRASE", PASSPHRASE)
    monkeypatch.setenv("ENTENTE_SCRYPT_WORK_FACTOR", str(SCRYPT_WORK_FACTOR))
    monkeypatch.setenv("ENTENTE_HOME", str(tmp_path / "uk"))
    settings = Settings(passphrase=PASSPHRASE, scrypt_work_factor=SCRYPT_WORK_FACTOR)
    create_home(
        settings,
        path=tmp_path / "uk",
        node_id="uk-aisi",
        name="UK",
        url="https://uk.example",
        now=datetime.now(UTC),
    )
    return tmp_path / "uk"


@pytest.fixture
def decrypted(monkeypatch: pytest.MonkeyPatch) -> KeyLog:
    """The key files decrypted, by name (``retired/`` for a retired one), each checked to be
    an scrypt decryption: a protected home has no other kind."""
    log: KeyLog = []
    scrypts = threading.local()  # key files are decrypted on several threads at once
    read_key = keystore.read_key
    decrypt = age.decrypt_with_passphrase

    def counting_decrypt(data: bytes, passphrase: str) -> bytes:
        scrypts.count = getattr(scrypts, "count", 0) + 1
        return decrypt(data, passphrase)

    def counting_read(path: Path, passphrase: str | None) -> bytes:
        before = getattr(scrypts, "count", 0)
        secret = read_key(path, passphrase)
        assert scrypts.count == before + 1, f"{path} was not an scrypt decryption"
        kind = path.name.removesuffix(".key").partition(".")[2] or path.stem
        log.append(f"retired/{kind}" if path.parent.name == "retired" else kind)
        return secret

    monkeypatch.setattr(age, "decrypt_with_passphrase", counting_decrypt)
    monkeypatch.setattr(keystore, "read_key", counting_read)
    return log


def _cli(*args: str) -> None:
    result = CliRunner().invoke(app, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output


def _seal(home: Path, tmp_path: Path, name: str, to: str) -> Path:
    plain = tmp_path / f"{name}.txt"
    plain.write_bytes(b"evaluation results\n" * 3000)
    out = tmp_path / f"{name}.age"
    _cli("seal", str(plain), "--to", to, "-o", str(out))
    return out


def _facts(home: Path) -> dict[str, str]:
    facts: dict[str, str] = json.loads((home / "node.json").read_text())
    return facts


def test_seal_open_verify_decrypt_only_what_they_use(
    home: Path, tmp_path: Path, decrypted: KeyLog
) -> None:
    facts = _facts(home)
    pq = _seal(home, tmp_path, "pq", facts["pq_recipient"])
    # one file holds both signing seeds, Ed25519 and ML-DSA-65: one scrypt, no identity, no
    # checkpoint key
    assert decrypted == ["signing"]

    decrypted.clear()
    _cli("open", str(pq), "-o", str(tmp_path / "pq.back"))
    assert decrypted == ["pq-identity"]  # sealed post-quantum: the hybrid identity opens it
    assert (tmp_path / "pq.back").read_bytes() == (tmp_path / "pq.txt").read_bytes()

    classic = _seal(home, tmp_path, "classic", facts["age_recipient"])
    decrypted.clear()
    _cli("open", str(classic), "-o", str(tmp_path / "classic.back"))
    assert decrypted == ["identity"]

    decrypted.clear()
    _cli("verify", str(pq))
    _cli("verify", str(classic))
    assert decrypted == []  # this node's own manifest: its public keys are in its descriptor


def test_verify_needs_no_passphrase(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sealed = _seal(home, tmp_path, "pq", _facts(home)["pq_recipient"])
    monkeypatch.delenv("ENTENTE_PASSPHRASE")
    _cli("verify", str(sealed))
    result = CliRunner().invoke(app, ["open", str(sealed), "-o", str(tmp_path / "no")])
    assert result.exit_code != 0
    assert "ENTENTE_PASSPHRASE" in str(result.exception)


def test_retired_keys_only_for_what_was_sealed_and_signed_before_a_rotation(
    home: Path, tmp_path: Path, decrypted: KeyLog
) -> None:
    old = _seal(home, tmp_path, "old", _facts(home)["pq_recipient"])
    settings = Settings(passphrase=PASSPHRASE, scrypt_work_factor=SCRYPT_WORK_FACTOR)
    rotate_keys(open_home(home), settings, now=datetime.now(UTC))
    new = _seal(home, tmp_path, "new", _facts(home)["pq_recipient"])

    decrypted.clear()
    _cli("open", str(new), "-o", str(tmp_path / "new.back"))
    assert decrypted == ["pq-identity"]  # no retired key for a file sealed after the rotation
    decrypted.clear()
    _cli("verify", str(new))
    assert decrypted == []

    decrypted.clear()
    _cli("verify", str(old))  # signed by the retired key: its public half is in its key file
    assert decrypted == ["retired/signing"]
    decrypted.clear()
    _cli("open", str(old), "-o", str(tmp_path / "old.back"))
    signed_by = ["retired/signing"]
    # its manifest names none of the current recipients: every identity, retired ones too
    opened_by = ["identity", "pq-identity", "retired/identity", "retired/pq-identity"]
    assert sorted(decrypted) == sorted([*signed_by, *opened_by])
    assert (tmp_path / "old.back").read_bytes() == (tmp_path / "old.txt").read_bytes()


def _two_file_layout(home: Path) -> None:
    """Rewrite the home's signing keys as homes made before one file held both were written:
    ``signing.key`` the Ed25519 seed, ``mldsa.key`` the ML-DSA-65 seed, each its own scrypt."""
    keys = home / "keys"
    secret = keystore.read_key(keys / "signing.key", PASSPHRASE)
    assert len(secret) == 64 and not (keys / "mldsa.key").exists()
    for name, part in (("signing.key", secret[:32]), ("mldsa.key", secret[32:])):
        (keys / name).write_bytes(keystore.seal_key(part, PASSPHRASE, SCRYPT_WORK_FACTOR))


def test_a_home_with_the_two_file_layout_still_seals_and_rotates_into_one_file(
    home: Path, tmp_path: Path, decrypted: KeyLog
) -> None:
    _two_file_layout(home)
    decrypted.clear()
    old = _seal(home, tmp_path, "old", _facts(home)["pq_recipient"])
    assert sorted(decrypted) == ["mldsa", "signing"]
    settings = Settings(passphrase=PASSPHRASE, scrypt_work_factor=SCRYPT_WORK_FACTOR)
    keys = open_home(home).unlock(settings, KeyNeed.SIGNING)
    assert keys.signer.public.mldsa is not None
    assert keys.signer.public.mldsa.fingerprint == _facts(home)["mldsa_fingerprint"]

    rotate_keys(open_home(home), settings, now=datetime.now(UTC))
    assert not (home / "keys" / "mldsa.key").exists()  # its copy is in keys/retired/
    decrypted.clear()
    _seal(home, tmp_path, "new", _facts(home)["pq_recipient"])
    assert decrypted == ["signing"]
    decrypted.clear()
    _cli("verify", str(old))  # signed by the retired keys, still in two files
    assert sorted(decrypted) == ["retired/mldsa", "retired/signing"]


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda keys: keys / "signing.key", "signing key file is corrupt \\(48 bytes\\)"),
        (lambda keys: keys / "mldsa.key", "holds two ML-DSA keys"),
        (lambda keys: None, "ML-DSA key is missing"),
    ],
    ids=["wrong-length", "two-mldsa-keys", "mldsa-missing"],
)
def test_a_damaged_signing_key_file_is_named(
    home: Path, damage: Callable[[Path], Path | None], message: str
) -> None:
    keys = home / "keys"
    secret = keystore.read_key(keys / "signing.key", PASSPHRASE)
    target = damage(keys)
    if target is None:  # the ML-DSA seed dropped, node.json still naming it
        content = secret[:32]
        target = keys / "signing.key"
    else:
        content = secret[:48] if target.name == "signing.key" else secret[32:]
    target.write_bytes(keystore.seal_key(content, PASSPHRASE, SCRYPT_WORK_FACTOR))
    settings = Settings(passphrase=PASSPHRASE, scrypt_work_factor=SCRYPT_WORK_FACTOR)
    with pytest.raises(KeyStoreError, match=message):
        open_home(home).unlock(settings, KeyNeed.SIGNING)


@pytest.mark.parametrize(
    ("need", "use", "named"),
    [
        (KeyNeed.SIGNING, lambda k: k.identity, "age identity"),
        (KeyNeed.SIGNING, lambda k: k.all_identities, "post-quantum age identity"),
        (KeyNeed.IDENTITY, lambda k: k.signer, "signing key"),
        (KeyNeed.IDENTITY, lambda k: k.log_key, "checkpoint key"),
        (KeyNeed.SIGNING, lambda k: k.keysets, "retired signing keys"),
        (KeyNeed(0), lambda k: k.unlocked_identities, "age identity"),
    ],
)
def test_a_key_not_unlocked_is_an_error_naming_it(
    home: Path,
    decrypted: KeyLog,
    need: KeyNeed,
    use: Callable[[keystore.NodeKeys], object],
    named: str,
) -> None:
    settings = Settings(passphrase=PASSPHRASE, scrypt_work_factor=SCRYPT_WORK_FACTOR)
    keys = open_home(home).unlock(settings, need)
    with pytest.raises(KeyNotUnlockedError, match=named):
        use(keys)
    assert "seed" not in repr(keys)
    everything = open_home(home).unlock(settings)
    assert len(everything.all_identities) == 2 and everything.log_key is not None


def test_key_files_are_decrypted_two_at_a_time(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each scrypt holds one core and releases the GIL: a command needing several key files
    (``serve`` needs five) waits for about one scrypt per core, not one per file."""
    read_key = keystore.read_key
    together = threading.Barrier(2, timeout=10)  # broken unless two reads overlap
    met: list[Path] = []

    def meeting_read(path: Path, passphrase: str | None) -> bytes:
        if not met or together.n_waiting:
            met.append(path)
            together.wait()
        return read_key(path, passphrase)

    monkeypatch.setattr(keystore, "read_key", meeting_read)
    keys = open_home(home).unlock(Settings(passphrase=PASSPHRASE), KeyNeed.ALL)
    assert len(met) == 2
    assert keys.signing.fingerprint == _facts(home)["fingerprint"]


def test_seal_with_a_wrong_passphrase_leaves_nothing(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The signing keys are unlocked while the file is sealed: a wrong passphrase still ends the
    command with the keystore's message and no output."""
    monkeypatch.setenv("ENTENTE_PASSPHRASE", "not the passphrase at all")
    plain = tmp_path / "big.bin"
    plain.write_bytes(b"\x00" * (8 << 20))
    out = tmp_path / "big.age"
    result = CliRunner().invoke(
        app, ["seal", str(plain), "--to", _facts(home)["age_recipient"], "-o", str(out)]
    )
    assert isinstance(result.exception, KeyStoreError)
    assert "wrong passphrase" in str(result.exception)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.bin", "uk"]
