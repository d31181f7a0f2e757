"""M7: `entente audit verify` follows a node's key rotations.

After `entente keys rotate`, verification of the node's whole log failed ("the checkpoint
carries no signature by the log key"), online and offline, and no option accepted the retired
key. Now the rotation is logged with its rotation record (the new descriptor signed by both
keys, and the retired public key), and the verifier follows the keys from the log itself,
starting from the key pinned with --fingerprint or remembered from the last run. A retired key
verifies only the checkpoints it signed before its retirement.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa

from crypto.descriptor import NodeDescriptor
from crypto.note import NoteSigner, NoteVerifier
from service.app import create_app
from service.audit.entries import log_origin
from service.audit.rotations import follow_rotations
from service.audit.sequencer import run_sequencer, sequence
from service.audit.sources import HttpSource
from service.audit.verify import verify_log
from service.home import open_home
from service.node import Node
from service.settings import Settings
from service.tokens import Role
from tests.nodes import base_env, run_cli
from tests.service.audit_fixtures import add_events, make_node, token


def _verify(node: Node, state: Path, *extra: str) -> dict[str, Any]:
    out = run_cli(
        "audit", "verify", "--home", str(node.home.path),
        "--database-url", str(node.settings.database_url), "--state", str(state),
        "--no-ask-witnesses", "--json", *extra,
        env=base_env(ENTENTE_INSECURE_NO_PASSPHRASE="true"),
    )  # fmt: skip
    assert out.stdout.strip(), out.stderr
    verdict: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    assert (out.returncode == 0) == verdict["ok"], out
    return verdict


def _signer(home: Path) -> NoteSigner:
    """The node's current log signer, read from its home as `entente serve` would."""
    settings = Settings.load(home=home, insecure_no_passphrase=True, scrypt_work_factor=10)
    opened = open_home(home)
    return NoteSigner(log_origin(opened.node_id), opened.unlock(settings).log_key)


def _identity(home: Path) -> str:
    """The node's fingerprint (its signing key: what operators pin), read from its home."""
    return open_home(home).fingerprint


def _sequence(node: Node, signer: NoteSigner) -> int:
    with node.db.session() as s:
        return sequence(s, signer=signer, now=node.now()).size


def _rotate(node: Node) -> None:
    out = run_cli(
        "keys", "rotate", "--home", str(node.home.path),
        "--database-url", str(node.settings.database_url), "--no-push", "--json",
        env=base_env(ENTENTE_INSECURE_NO_PASSPHRASE="true"),
    )  # fmt: skip
    assert out.returncode == 0, out.stderr


def _rotated_log(tmp_path: Path) -> tuple[Node, NoteSigner, int, Path]:
    """A log signed by key A, verified once (the state remembers A), rotated to key B (node
    stopped, as the docs say), then grown and signed by B."""
    node = make_node(tmp_path, "uk-aisi", f"sqlite:///{tmp_path / 'uk.db'}")
    old = _signer(node.home.path)
    add_events(node, 6)
    _sequence(node, old)
    state = tmp_path / "state.json"
    first = _verify(node, state)
    assert first["ok"], first
    _rotate(node)
    new = _signer(node.home.path)
    assert new.verifier.key.fingerprint != old.verifier.key.fingerprint
    add_events(node, 4)
    _sequence(node, new)  # `entente serve`, restarted, signs with the new key
    with node.db.engine.connect() as conn:
        (retired_at,) = conn.execute(
            sa.text("SELECT seq FROM audit_entries WHERE kind = 'key.rotated'")
        ).one()
    return node, old, int(retired_at), state


def test_verify_follows_a_rotation_from_the_remembered_key(tmp_path: Path) -> None:
    node, _old, _retired_at, state = _rotated_log(tmp_path)
    try:
        verdict = _verify(node, state)
        assert verdict["ok"], verdict
        assert verdict["keys"][0] == node.home.fingerprint  # the chain of signing keys
        assert verdict["keys"] == [node.home.fingerprint, _identity(node.home.path)]
        assert any("followed 1 key rotation" in n for n in verdict["notes"]), verdict["notes"]
        # An auditor who pinned the old key out of band follows it too, without old keys.
        fresh = _verify(node, tmp_path / "fresh.json", "--fingerprint", node.home.fingerprint)
        assert fresh["ok"], fresh
        # And one who pins the new key verifies the old part of the log as well.
        current = json.loads(state.read_text())["logs"]["entente.dev/audit/uk-aisi"]
        newest = _verify(node, tmp_path / "new.json", "--fingerprint", current["fingerprint"])
        assert newest["ok"], newest
    finally:
        node.db.dispose()


def test_a_retired_key_verifies_nothing_past_its_retirement(tmp_path: Path) -> None:
    node, old, retired_at, _state = _rotated_log(tmp_path)
    try:
        # Someone holding the retired key (an old backup) signs a checkpoint over more entries.
        add_events(node, 3)
        forged = _sequence(node, old)
        assert forged > retired_at
        verdict = _verify(node, tmp_path / "fresh.json")
        assert not verdict["ok"], verdict
        assert f"retired at seq {retired_at}" in verdict["problem"], verdict["problem"]
    finally:
        node.db.dispose()


class _SyncASGI(httpx.BaseTransport):
    """The app in-process for a synchronous client (the CLI's HttpSource is synchronous)."""

    def __init__(self, app: Any) -> None:
        self._asgi = httpx.ASGITransport(app=app)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        async def send() -> httpx.Response:
            response = await self._asgi.handle_async_request(request)
            body = await response.aread()
            return httpx.Response(response.status_code, headers=response.headers, content=body)

        return asyncio.run(send())


def _client(app: Any, headers: dict[str, str]) -> httpx.Client:
    return httpx.Client(transport=_SyncASGI(app), base_url="http://uk-aisi", headers=headers)


def test_online_verification_follows_the_rotation(tmp_path: Path) -> None:
    """The same over the node's /audit/v1 API, as `audit verify --url` reads it."""
    node, old, retired_at, _state = _rotated_log(tmp_path)
    try:
        new = _signer(node.home.path).verifier.key
        rotated = open_home(node.home.path)
        new_identity = rotated.descriptor_envelope()
        current = NodeDescriptor.from_json(json.loads(new_identity.payload))
        assert current.checkpoint_key == new  # the log's own key, apart from the signing key
        app = create_app(node, start_workers=False)
        auth = {"Authorization": f"Bearer {token(node, Role.AUDITOR)}"}
        with _client(app, auth) as client:
            source = HttpSource(client)
            keys = follow_rotations(
                log_origin("uk-aisi"), node_id="uk-aisi", current=current.signing_key,
                current_log_key=new, entries=source.rotations(),
            )  # fmt: skip
            assert keys.fingerprints == (node.home.fingerprint, rotated.fingerprint)
            assert keys.keys == (old.verifier.key, new)
            assert keys.retired_at == (retired_at,)
            verdict = verify_log(source, log=keys, now=int(time.time()))
        assert verdict.ok, verdict.problem
        # Handed only the new key, as before the fix, the old checkpoints do not verify.
        with _client(app, auth) as client:
            only_new = verify_log(
                HttpSource(client), log=NoteVerifier(log_origin("uk-aisi"), new), now=0
            )
        assert not only_new.ok
    finally:
        node.db.dispose()


def test_a_node_rotated_while_running_signs_nothing_with_its_retired_key(tmp_path: Path) -> None:
    """`keys rotate` while `entente serve` runs: the running process still holds the retired
    key; it must not sign a checkpoint covering the rotation (that log could never verify)."""
    node = make_node(tmp_path, "uk-aisi", f"sqlite:///{tmp_path / 'uk.db'}")
    try:
        add_events(node, 3)
        assert run_sequencer(node).checkpoint_signed
        _rotate(node)  # the node object keeps its (now retired) key, as a running process would
        add_events(node, 2)
        result = run_sequencer(node)
        assert not result.checkpoint_signed and result.sequenced == 0
        with node.db.engine.connect() as conn:
            pending = conn.execute(
                sa.text("SELECT COUNT(*) FROM audit_entries WHERE seq IS NULL")
            ).scalar_one()
        assert pending >= 3  # the rotation record and the two entries wait for the new key
        # Restarted with the new key, the node signs again and the log verifies.
        _sequence(node, _signer(node.home.path))
        assert _verify(node, tmp_path / "state.json")["ok"]
    finally:
        node.db.dispose()
