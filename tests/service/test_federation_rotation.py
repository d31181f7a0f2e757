"""Key rotation in the home: new keys, a descriptor signed by old and new, retired keys kept,
and a rotation interrupted half-way through is finished when the home is next opened."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path

import pytest

from crypto.descriptor import verify_descriptor
from crypto.keys import VerifyKey
from service.home import open_home, rotate_keys
from tests.service.nodekit import make_node


def test_rotation_retires_the_old_keys_and_signs_with_both(tmp_path: Path) -> None:
    kit = make_node(tmp_path, "uk-aisi")
    home, settings = kit.node.home, kit.node.settings
    old = kit.node.keys
    rotation = rotate_keys(home, settings, now=datetime.now(UTC))
    assert rotation.previous == old.signing.fingerprint
    assert rotation.home.fingerprint != old.signing.fingerprint
    assert rotation.home.age_recipient != home.age_recipient
    descriptor = verify_descriptor(
        rotation.descriptor, now=datetime.now(UTC), previous=VerifyKey(old.signing.public.raw)
    )
    assert descriptor.fingerprint == rotation.home.fingerprint
    assert descriptor.previous == old.signing.fingerprint
    assert open_home(home.path).descriptor_envelope() == rotation.descriptor
    keys = rotation.home.unlock(settings)
    assert keys.signing.fingerprint == rotation.home.fingerprint
    assert [k.fingerprint for k in keys.retired_signing] == [old.signing.fingerprint]
    assert old.hybrid is not None and keys.hybrid is not None  # post-quantum by default
    assert keys.hybrid.to_string() != old.hybrid.to_string()
    assert descriptor.pq_recipient == keys.hybrid.recipient.to_string()
    assert [i.to_string() for i in keys.retired_identities] == [
        old.identity.to_string(),
        old.hybrid.to_string(),
    ]
    retired = home.keys_dir / "retired"
    assert {p.name for p in retired.iterdir()} == {
        f"{old.signing.fingerprint}.signing.key",  # Ed25519 and ML-DSA-65 seeds
        f"{old.signing.fingerprint}.identity.key",
        f"{old.signing.fingerprint}.pq-identity.key",
        f"{old.signing.fingerprint}.checkpoint.key",
    }
    # the new set is post-quantum too, and the descriptor is signed by the whole retired set
    assert keys.mldsa is not None and old.mldsa is not None
    assert keys.mldsa.fingerprint != old.mldsa.fingerprint
    assert keys.retired_mldsa == {old.signing.fingerprint: old.mldsa} or (
        keys.retired_mldsa[old.signing.fingerprint].fingerprint == old.mldsa.fingerprint
    )
    assert descriptor.mldsa_key == keys.mldsa.public
    assert descriptor.checkpoint_key is not None and keys.checkpoint is not None
    assert descriptor.checkpoint_key == keys.checkpoint.public != keys.signing.public
    verify_descriptor(rotation.descriptor, now=datetime.now(UTC), previous=old.signer.public)
    assert all(p.stat().st_mode & 0o077 == 0 for p in retired.iterdir())
    assert not list(home.path.glob(".rotate-*")) and not (home.path / "rotation.json").exists()
    # a second rotation keeps both retired keys
    again = rotate_keys(rotation.home, settings, now=datetime.now(UTC))
    assert len(again.home.unlock(settings).retired_signing) == 2


def test_an_interrupted_rotation_is_finished_on_the_next_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    kit = make_node(tmp_path, "uk-aisi")
    home, settings = kit.node.home, kit.node.settings
    real_replace = os.replace
    calls: list[str] = []

    def crash_after_two(src: str | Path, dst: str | Path) -> None:
        if len(calls) == 2:
            raise OSError("power cut")
        calls.append(str(dst))
        real_replace(src, dst)

    monkeypatch.setattr("service.home.os.replace", crash_after_two)
    with pytest.raises(OSError, match="power cut"):
        rotate_keys(home, settings, now=datetime.now(UTC))
    monkeypatch.setattr("service.home.os.replace", real_replace)
    journal = json.loads((home.path / "rotation.json").read_text())
    # the keys moved, node.json not yet: opening the home rolls the rotation forward
    reopened = open_home(home.path)
    assert reopened.fingerprint == journal["fingerprint"]
    keys = reopened.unlock(settings)
    assert keys.signing.fingerprint == journal["fingerprint"]
    assert keys.retired_signing[0].fingerprint == kit.node.keys.signing.fingerprint
    assert not (home.path / "rotation.json").exists()
    assert not list(home.path.glob(".rotate-*"))


def test_rotation_adds_a_post_quantum_identity_to_a_classic_only_node(tmp_path: Path) -> None:
    kit = make_node(tmp_path, "uk-aisi", post_quantum=False)
    home, settings = kit.node.home, kit.node.settings
    assert home.pq_recipient is None and kit.node.keys.hybrid is None
    rotation = rotate_keys(home, settings, now=datetime.now(UTC), post_quantum=True)
    keys = rotation.home.unlock(settings)
    assert keys.hybrid is not None
    assert rotation.home.pq_recipient == keys.hybrid.recipient.to_string()
    descriptor = verify_descriptor(
        rotation.descriptor, now=datetime.now(UTC), previous=kit.node.keys.signing.public
    )
    assert descriptor.pq_recipient == rotation.home.pq_recipient
    # the next rotation keeps post-quantum unless told otherwise
    again = rotate_keys(rotation.home, settings, now=datetime.now(UTC))
    assert again.home.pq_recipient is not None
    assert again.home.pq_recipient != rotation.home.pq_recipient


def test_rotation_to_classic_only_drops_the_post_quantum_keys(tmp_path: Path) -> None:
    kit = make_node(tmp_path, "uk-aisi")
    home, settings = kit.node.home, kit.node.settings
    old = kit.node.keys
    rotation = rotate_keys(home, settings, now=datetime.now(UTC), post_quantum=False)
    assert rotation.home.pq_recipient is None and rotation.home.mldsa_fingerprint is None
    keys = rotation.home.unlock(settings)
    assert keys.hybrid is None and keys.mldsa is None
    assert not (home.keys_dir / "pq-identity.key").exists()
    assert not (home.keys_dir / "mldsa.key").exists()
    # what was sealed to the retired hybrid identity still opens
    assert old.hybrid is not None
    assert old.hybrid.to_string() in [i.to_string() for i in keys.retired_identities]
