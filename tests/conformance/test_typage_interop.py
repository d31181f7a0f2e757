"""Hybrid (MLKEM768-X25519) age interop with typage, the TypeScript age by age's own author.

Both directions, with an implementation nobody here wrote:

* what ``crypto.sealed.seal`` and ``crypto.age.encrypt`` sealed to hybrid recipients decrypts
  with typage (to identities made by Entente and by typage);
* what typage encrypted to a hybrid recipient made by Entente decrypts with ``crypto.age``.

typage is installed once into a cache outside the repository (``tests/conformance/typage.py``);
without Node.js these tests skip naming what to install, and fail when ``CI`` is set.
"""

from __future__ import annotations

import hashlib
import io
import os
from datetime import UTC, datetime
from pathlib import Path

import pytest

from crypto import age, sealed
from crypto.errors import NoIdentityMatchError
from crypto.keys import SigningKey
from crypto.keyset import SignerSet
from crypto.mldsa import MLDSASigningKey
from tests.conformance.typage import Typage, typage

pytestmark = pytest.mark.typage

# Sizes straddling the STREAM chunk (64 KiB) boundary, and one over a MiB.
SIZES = [0, 1, 65536, 65537, (1 << 20) + 11]
SIGNER = SignerSet(SigningKey.generate(), MLDSASigningKey.generate())


@pytest.fixture(scope="module")
def ts() -> Typage:
    return typage()


@pytest.mark.parametrize("size", SIZES)
def test_sealed_to_hybrid_recipients_decrypts_with_typage(
    ts: Typage, tmp_path: Path, size: int
) -> None:
    data = os.urandom(size)
    us, uk = age.HybridIdentity.generate(), age.HybridIdentity.generate()
    sink = io.BytesIO()
    result = sealed.seal(
        io.BytesIO(data),
        sink,
        artifact_id="typage-1",
        title="typage interop",
        origin="uk-aisi",
        tlp="TLP:RED",
        recipients=[
            sealed.ManifestRecipient("us-aisi", us.recipient.to_string()),
            sealed.ManifestRecipient("uk-aisi", uk.recipient.to_string()),
        ],
        signer=SIGNER,
        policy={},
        now=datetime(2026, 1, 1, tzinfo=UTC),
    )
    assert result.manifest.sealing == "mlkem768x25519"
    (tmp_path / "sealed.age").write_bytes(sink.getvalue())
    for identity in (us, uk):
        ts.decrypt(tmp_path / "sealed.age", tmp_path / "out.bin", identity.to_string())
        assert (tmp_path / "out.bin").read_bytes() == data


def test_encrypted_to_a_typage_identity_decrypts_with_typage(ts: Typage, tmp_path: Path) -> None:
    identity, recipient = ts.keygen()
    assert recipient.startswith("age1pq1")
    parsed = age.parse_identity(identity)  # typage's key encoding is the one we read
    assert isinstance(parsed, age.HybridIdentity)
    assert parsed.recipient.to_string() == recipient
    data = os.urandom(200_000)
    sink = io.BytesIO()
    age.encrypt(io.BytesIO(data), sink, [age.parse_recipient(recipient)])
    (tmp_path / "ours.age").write_bytes(sink.getvalue())
    ts.decrypt(tmp_path / "ours.age", tmp_path / "out.bin", identity)
    assert (tmp_path / "out.bin").read_bytes() == data


@pytest.mark.parametrize("size", SIZES)
def test_typage_file_to_an_entente_hybrid_recipient_decrypts_with_entente(
    ts: Typage, tmp_path: Path, size: int
) -> None:
    ours = age.HybridIdentity.generate()
    _, theirs = ts.keygen()
    data = os.urandom(size)
    (tmp_path / "plain.bin").write_bytes(data)
    ts.encrypt(tmp_path / "plain.bin", tmp_path / "typage.age", theirs, ours.recipient.to_string())
    encrypted = (tmp_path / "typage.age").read_bytes()
    header = age.read_header(io.BytesIO(encrypted))
    assert [s.type for s in header.stanzas] == ["mlkem768x25519"] * 2
    out = io.BytesIO()
    hasher = hashlib.sha256()
    age.decrypt(io.BytesIO(encrypted), out, [ours], hasher=hasher)
    assert out.getvalue() == data
    assert hasher.hexdigest() == hashlib.sha256(data).hexdigest()


def test_typage_file_is_refused_by_a_wrong_identity(ts: Typage, tmp_path: Path) -> None:
    _, theirs = ts.keygen()
    (tmp_path / "plain.bin").write_bytes(b"secret")
    ts.encrypt(tmp_path / "plain.bin", tmp_path / "typage.age", theirs)
    with pytest.raises(NoIdentityMatchError):
        age.decrypt(
            io.BytesIO((tmp_path / "typage.age").read_bytes()),
            io.BytesIO(),
            [age.HybridIdentity.generate()],
        )
