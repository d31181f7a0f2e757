"""M10: a resumed push's partial file is bounded by what its manifest allows, and a sender's
partial files together by ``2 * max_artifact_bytes``.

A hostile partner signs a manifest for a small plaintext, but seals a much larger one under its
header (it holds the file key, so every STREAM chunk it sends is valid). It pushes a megabyte
and drops the connection, then resumes from all the receiver holds with more, again and again.
The per-request body limit counts one request only and a resume could start from anything the
file held, so the file grew by up to a request's worth each time; a resume that declared no
length made room for nothing more than it held, so two such files passed the per-sender bound
together. Now a file never holds more than the largest ciphertext its manifest's size allows:
past it the push is refused (413), audited, and the file removed, whether the request declares
its length or not; and room is made for all a file may hold before it is written.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

import anyio
import pytest
from sqlmodel import select

from crypto.age import largest_file
from crypto.dsse import Envelope
from crypto.sealed import Manifest, sign_manifest
from service.federation.client import RESUME_HEADER, head_key
from service.federation.inbox_partial import inbox_partials
from service.models import Artifact, AuditEntry
from tests.hardening.kit import Trio, trio
from tests.service.nodekit import Kit
from tests.service.test_federation_input import INBOX, sealed_artifact, sign

MAX_ARTIFACT = 1_500_000  # bytes: the US's max_artifact_bytes (a request: up to twice that)
CLAIMED = 300_000  # bytes of plaintext the hostile manifest claims
SEALED = 4_000_000  # bytes of plaintext actually sealed under its header
FIRST = 1_200_000  # bytes of ciphertext the first push brings (within what the manifest allows)
STEP = 1_500_000  # bytes of ciphertext each later push brings before the connection drops


@pytest.fixture
def nodes(tmp_path: Path) -> Trio:
    return trio(tmp_path, max_artifact_bytes=MAX_ARTIFACT, max_federation_manifest_bytes=1 << 16)


def _hostile_delivery(uk: Kit, us: Kit, claimed: int = CLAIMED) -> tuple[bytes, bytes]:
    """(manifest line, ciphertext): a manifest the UK signed claiming ``claimed`` bytes, over
    the age file of ``SEALED`` bytes (valid chunks all the way)."""
    _, line, ciphertext = sealed_artifact(uk, [us], b"\x00" * SEALED)
    manifest = Manifest.from_payload(Envelope.from_bytes(line).payload)
    lying = dataclasses.replace(manifest, size=claimed)
    signed = sign_manifest(lying, uk.node.keys.signer).to_bytes()
    return json.dumps(json.loads(signed), separators=(",", ":")).encode(), ciphertext


async def _push_then_drop(
    receiver: Kit, headers: dict[str, str], body: bytes, *, declare: bool
) -> list[int]:
    """Send all of ``body`` to ``receiver``'s inbox in 64 KiB messages, as a network would,
    then drop the connection (the sender never says the body ended); the statuses the app
    answered. ``declare``: send a Content-Length."""
    messages: list[dict[str, object]] = [
        {"type": "http.request", "body": body[i : i + (64 << 10)], "more_body": True}
        for i in range(0, len(body), 64 << 10)
    ]
    messages.append({"type": "http.disconnect"})
    sent: list[MutableMapping[str, Any]] = []

    async def receive() -> dict[str, object]:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    host = receiver.node.node_id
    length = [(b"content-length", str(len(body)).encode())] if declare else []
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": INBOX, "raw_path": INBOX.encode(), "query_string": b"",
        "root_path": "", "server": (host, 80), "client": ("127.0.0.1", 1),
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()]
        + [(b"host", host.encode()), *length],
    }  # fmt: skip
    with contextlib.suppress(Exception):  # the app gives up on a dropped request its own way
        await receiver.app(scope, receive, send)
    return [int(str(m["status"])) for m in sent if m["type"] == "http.response.start"]


def _push(
    t: Trio, line: bytes, ciphertext: bytes, held: int, *, size: int, declare: bool
) -> list[int]:
    body = line + b"\n" + ciphertext[held : held + size]
    extra = {RESUME_HEADER: str(held)} if held else None
    headers = sign(t.uk, t.us, "POST", INBOX, body, extra=extra)
    return anyio.run(lambda: _push_then_drop(t.us, headers, body, declare=declare))


def _sender_bytes(t: Trio) -> int:
    folder = inbox_partials(t.us.node).folder / "uk-aisi"
    return sum(p.stat().st_size for p in folder.glob("*.part")) if folder.exists() else 0


def _refused(t: Trio) -> list[str]:
    with t.us.node.db.session() as session:
        rows = session.exec(select(AuditEntry).where(AuditEntry.kind == "receive.rejected"))
        return [str(r.rule) for r in rows]


@pytest.mark.parametrize("declare", [True, False], ids=["declared-length", "undeclared-length"])
def test_resuming_again_and_again_cannot_grow_the_partial_past_its_manifest(
    nodes: Trio, declare: bool
) -> None:
    line, ciphertext = _hostile_delivery(nodes.uk, nodes.us)
    partial = inbox_partials(nodes.us.node).path_for("uk-aisi", head_key(line))
    assert partial is not None
    bound = largest_file(CLAIMED)
    assert bound < 2 * MAX_ARTIFACT < len(ciphertext)  # the manifest's bound is the tighter

    # The first push always declares its length: an undeclared one at offset 0 keeps no file.
    first = _push(nodes, line, ciphertext, 0, size=FIRST, declare=True)
    assert first == []  # dropped: the file is kept
    held = partial.stat().st_size
    assert 0 < held <= FIRST

    statuses: list[int] = []
    for _ in range(4):  # enough to pass the per-sender bound, had nothing stopped it
        statuses = _push(nodes, line, ciphertext, held, size=STEP, declare=declare)
        assert _sender_bytes(nodes) <= bound  # never more than the manifest allows on disk
        if statuses:
            break
        held = partial.stat().st_size
    assert statuses == [413]
    assert not partial.exists()  # refused: the sender starts from zero
    assert any("would pass" in rule for rule in _refused(nodes))  # audited as a refusal
    with nodes.us.node.db.session() as session:
        assert session.exec(select(Artifact)).first() is None


def test_a_senders_partials_together_stay_under_its_bound(nodes: Trio) -> None:
    """Two deliveries, each resumed without a declared length: the second's file makes room for
    all it may hold (the first is removed), so the two never pass ``2 * max_artifact_bytes``."""
    claimed = MAX_ARTIFACT - 100_000
    deliveries = [_hostile_delivery(nodes.uk, nodes.us, claimed) for _ in range(2)]
    for line, ciphertext in deliveries:
        assert _push(nodes, line, ciphertext, 0, size=FIRST, declare=True) == []
    for line, ciphertext in deliveries:
        partial = inbox_partials(nodes.us.node).path_for("uk-aisi", head_key(line))
        assert partial is not None
        held = partial.stat().st_size
        # Two blocks of chunks (about 2 MiB: all the receiver read before the drop) are kept.
        statuses = _push(nodes, line, ciphertext, held, size=2_400_000, declare=False)
        assert statuses == []
        assert 2 << 20 < partial.stat().st_size <= largest_file(claimed)
        assert _sender_bytes(nodes) <= 2 * MAX_ARTIFACT
