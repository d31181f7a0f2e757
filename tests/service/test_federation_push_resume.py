"""A cut push resumes from what the receiver kept (issue 18), in-process.

The UK's push of a large artifact is cut mid-body at the ASGI level (the US app reads half the
body, then a disconnect); the US keeps the ciphertext it read under
``partial-in/uk-aisi/<key>.part``. The UK's client, retrying, asks the US how much it holds and
sends the rest under a signed ``Entente-Resume-Offset``; the US verifies the whole and stores
it once. A resume from an offset the receiver does not hold, a malformed or unsigned offset, a
third node asking for the UK's partial, and the sweep of abandoned partials are covered too.
The same through real processes and a cutting TCP proxy: ``tests/integration/
test_resumable_push.py``.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import anyio
import httpx
import pytest
from sqlmodel import select

from service.artifacts.rows import delivery_head
from service.errors import BusyError, PartnerRefusedError, PartnerUnavailableError
from service.federation.client import RESUME_HEADER, PartnerClient, head_key
from service.federation.inbox_partial import InboxPartials, inbox_partials
from service.federation.partial import PartialPayloads
from service.models import Artifact, AuditEntry, Partner
from tests.service.nodekit import Kit, make_node, pin
from tests.service.test_federation_input import INBOX, cut_push, sign
from tests.service.test_federation_sync import PortalTransport, accepted, share

SIZE = 600_000  # bytes of plaintext: a large delivery (above the batch threshold)


class RecordingTransport(PortalTransport):
    """Records each push's ``Entente-Resume-Offset`` and body length."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.pushes: list[tuple[str | None, int]] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == INBOX:
            self.pushes.append((request.headers.get(RESUME_HEADER), len(request.read())))
        return super().handle_request(request)


@dataclass
class Nodes:
    uk: Kit
    us: Kit
    ca: Kit
    transport: RecordingTransport

    def client(self, kit: Kit) -> PartnerClient:
        return PartnerClient(kit.node, http=httpx.Client(transport=self.transport))

    def partner(self, kit: Kit, node_id: str) -> Partner:
        with kit.node.db.session() as session:
            return session.exec(select(Partner).where(Partner.node_id == node_id)).one()


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[Nodes]:
    kits = [make_node(tmp_path, n) for n in ("uk-aisi", "us-aisi", "ca-aisi")]
    for a in kits:
        for b in kits:
            if a is not b:
                pin(a, b)
    uk, us, ca = kits
    transport = RecordingTransport({k.node.node_id: k.app for k in kits})
    yield Nodes(uk, us, ca, transport)
    transport.close()


def _delivery(uk: Kit) -> tuple[str, bytes, bytes]:
    """(artifact id, manifest line, ciphertext) of a large artifact the UK shared with the US."""
    [artifact_id] = share(uk, 1, size=SIZE)
    with uk.node.db.session() as session:
        row = session.exec(select(Artifact).where(Artifact.id == artifact_id)).one()
    assert row.blob is not None and row.ciphertext_size > 256 << 10
    with uk.node.blobs.open(row.blob) as fh:
        return artifact_id, delivery_head(row, "us-aisi"), fh.read()


def _cut_push(nodes: Nodes, line: bytes, ciphertext: bytes, cut: int) -> list[int]:
    """Push the delivery to the US app, which reads ``cut`` bytes of the body, then a
    disconnect; the statuses it answered (none, or a problem)."""
    body = line + b"\n" + ciphertext
    headers = sign(nodes.uk, nodes.us, "POST", INBOX, body)
    statuses, _unread = anyio.run(cut_push, nodes.us, headers, body, cut)
    return statuses


def _post(nodes: Nodes, headers: dict[str, str], body: bytes) -> httpx.Response:
    async def call() -> httpx.Response:
        async with nodes.us.client() as client:
            return await client.post(INBOX, content=body, headers=headers)

    return anyio.run(call)


def _partial(nodes: Nodes, line: bytes) -> Path:
    path = inbox_partials(nodes.us.node).path_for("uk-aisi", head_key(line))
    assert path is not None
    return path


def _rejections(kit: Kit) -> list[str]:
    with kit.node.db.session() as session:
        rows = session.exec(select(AuditEntry).where(AuditEntry.kind == "receive.rejected"))
        return [str(r.rule) for r in rows]


def test_a_cut_push_resumes_and_is_verified_whole(nodes: Nodes) -> None:
    artifact_id, line, ciphertext = _delivery(nodes.uk)
    statuses = _cut_push(nodes, line, ciphertext, len(ciphertext) // 2)
    assert all(s not in (200, 201, 500) for s in statuses), statuses
    partial = _partial(nodes, line)
    held = partial.stat().st_size
    assert 0 < held <= len(ciphertext) // 2
    assert partial.read_bytes() == ciphertext[:held]  # ciphertext only, as it arrived
    assert accepted(nodes.us) == {}

    uk_client = nodes.client(nodes.uk)
    us_partner = nodes.partner(nodes.uk, "us-aisi")
    with nodes.uk.node.db.session() as session:
        blob = session.exec(select(Artifact.blob).where(Artifact.id == artifact_id)).one()
    reply = uk_client.deliver(
        us_partner, manifest_line=line, blob=blob or "", size=len(ciphertext), resume=True
    )
    assert reply.status == 201
    # Only the rest crossed, under the signed offset.
    assert nodes.transport.pushes == [(str(held), len(line) + 1 + len(ciphertext) - held)]
    assert accepted(nodes.us) == {artifact_id: 1}
    with nodes.us.node.db.session() as session:
        row = session.exec(select(Artifact).where(Artifact.id == artifact_id)).one()
    assert row.blob == hashlib.sha256(ciphertext).hexdigest()
    assert not partial.exists()  # removed once stored
    for kit, side in ((nodes.uk, "sent"), (nodes.us, "received")):
        metrics = kit.node.metrics
        assert metrics.resumed.labels(side)._value.get() == 1
        assert metrics.resumed_bytes.labels(side)._value.get() == held

    # A repeat, resumed or not, is answered with the receipt already issued.
    again = uk_client.deliver(
        us_partner, manifest_line=line, blob=blob or "", size=len(ciphertext), resume=True
    )
    assert again.status == 200 and accepted(nodes.us) == {artifact_id: 1}


def test_a_resume_the_receiver_cannot_honour_is_refused_and_audited(nodes: Nodes) -> None:
    _, line, ciphertext = _delivery(nodes.uk)
    _cut_push(nodes, line, ciphertext, len(ciphertext) // 2)
    held = _partial(nodes, line).stat().st_size

    def resumed(offset: str, *, signed: bool = True) -> httpx.Response:
        body = line + b"\n" + ciphertext[int(offset) if offset.isdigit() else 0 :]
        extra = {RESUME_HEADER: offset}
        headers = sign(nodes.uk, nodes.us, "POST", INBOX, body, extra=extra if signed else None)
        return _post(nodes, {**headers, **extra}, body)

    unsigned = resumed(str(held), signed=False)  # the offset is not among the covered fields
    assert unsigned.status_code == 401
    malformed = resumed("-1")
    assert malformed.status_code == 422 and RESUME_HEADER in malformed.json()["detail"]
    assert _partial(nodes, line).stat().st_size == held  # neither touched the partial
    beyond = resumed(str(held + 1))
    assert beyond.status_code == 416
    assert beyond.headers["content-range"] == f"bytes */{held}"
    assert not _partial(nodes, line).exists()  # the sender starts from zero next time
    rejected = _rejections(nodes.us)
    assert any(RESUME_HEADER in r for r in rejected)
    assert any(f"holds {held} bytes" in r for r in rejected)
    assert accepted(nodes.us) == {}


def test_a_corrupted_partial_fails_the_whole_and_is_discarded(nodes: Nodes) -> None:
    artifact_id, line, ciphertext = _delivery(nodes.uk)
    _cut_push(nodes, line, ciphertext, len(ciphertext) // 2)
    partial = _partial(nodes, line)
    data = bytearray(partial.read_bytes())
    data[len(data) // 2] ^= 0x01
    partial.write_bytes(bytes(data))
    held = len(data)
    body = line + b"\n" + ciphertext[held:]
    extra = {RESUME_HEADER: str(held)}
    refused = _post(nodes, sign(nodes.uk, nodes.us, "POST", INBOX, body, extra=extra), body)
    assert refused.status_code == 422 and "payload failed verification" in refused.text
    assert not partial.exists()
    assert accepted(nodes.us) == {}
    whole = line + b"\n" + ciphertext
    stored = _post(nodes, sign(nodes.uk, nodes.us, "POST", INBOX, whole), whole)
    assert stored.status_code == 201 and accepted(nodes.us) == {artifact_id: 1}


def test_the_offset_shows_a_sender_only_its_own_partials(nodes: Nodes) -> None:
    _, line, ciphertext = _delivery(nodes.uk)
    _cut_push(nodes, line, ciphertext, len(ciphertext) // 2)
    held = _partial(nodes, line).stat().st_size
    path = f"/federation/v1/inbox/partial/{head_key(line)}"
    own = nodes.client(nodes.uk).call_json(nodes.partner(nodes.uk, "us-aisi"), "GET", path)
    assert own.data == {"offset": held}
    ca = nodes.client(nodes.ca)
    at_us = nodes.partner(nodes.ca, "us-aisi")
    assert ca.call_json(at_us, "GET", path).data == {"offset": 0}  # the same name: not its own
    for probe in ("A" * 64, "x" * 300):
        answer = ca.call_json(at_us, "GET", f"/federation/v1/inbox/partial/{probe}")
        assert answer.data == {"offset": 0}, probe
    escape = f"/federation/v1/inbox/partial/uk-aisi%2F{head_key(line)}"
    with pytest.raises(PartnerRefusedError) as refused:  # not a route: never a file's size
        ca.call_json(at_us, "GET", escape)
    assert refused.value.status_code == 404
    # The CA's own push of a payload under the same name lands in its own folder.
    partials = inbox_partials(nodes.us.node)
    assert partials.path_for("ca-aisi", head_key(line)) != _partial(nodes, line)
    assert partials.path_for("../uk-aisi", head_key(line)) is None
    assert partials.path_for("uk-aisi", head_key(line) + "\n") is None
    assert PartialPayloads(partials.folder, max_bytes=1).path_for("a" * 64 + "\n") is None


def test_abandoned_partials_are_swept_and_a_senders_are_bounded(tmp_path: Path) -> None:
    partials = InboxPartials(tmp_path / "partial-in", max_bytes=100)
    pulled = PartialPayloads(tmp_path / "partial", max_bytes=100)
    now = time.time()
    files = {}
    for sender, key, age in (
        ("uk-aisi", "a" * 64, 7200), ("uk-aisi", "b" * 64, 10), ("ca-aisi", "c" * 64, 7200),
    ):  # fmt: skip
        path = partials.path_for(sender, key)
        assert path is not None
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x" * 30)
        os.utime(path, (now - age, now - age))
        files[key] = path
    pulled_old = pulled.path_for("d" * 64)
    assert pulled_old is not None
    pulled.folder.mkdir()
    pulled_old.write_bytes(b"y")
    os.utime(pulled_old, (now - 7200, now - 7200))

    assert partials.clean(older_than_seconds=3600, now=now) == 2  # every sender's, only old
    assert [p.exists() for p in files.values()] == [False, True, False]
    assert pulled_old.exists()  # the pull's partials are its own sweep's
    assert pulled.clean(older_than_seconds=3600, now=now) == 1
    assert partials.clean(older_than_seconds=3600, now=now) == 0

    # A sender's partials together stay under the bound: its oldest go to make room.
    fh = partials.open("uk-aisi", "e" * 64, resume=0, expect=80)
    with fh:
        assert not files["b" * 64].exists()
        with pytest.raises(BusyError):  # one writer at a time
            partials.open("uk-aisi", "e" * 64, resume=0, expect=80)
    assert partials.offset("uk-aisi", "e" * 64) == 0
    assert partials.offset("ca-aisi", "e" * 64) == 0

    # A pulled payload larger than a partner's bound is refused before a byte is asked for.
    ca = Partner(node_id="ca-aisi")
    with (
        pytest.raises(PartnerUnavailableError, match="more than the 100"),
        pulled.of("ca-aisi").fetch(None, ca, path="/p", digest="f" * 64, size=101),  # type: ignore[arg-type]
    ):
        pass  # pragma: no cover - never entered
    assert not (pulled.folder / "ca-aisi" / f"{'f' * 64}.part").exists()
