"""A catch-up pull resumes a large payload where its download broke off (issue 18).

Two in-process nodes over a :class:`PortalTransport` (``test_federation_sync``) whose payload
answers can be cut after K bytes: the next pull asks for ``Range: bytes=K-``, only the rest
crosses, and the artifact is stored once, verified whole; a corrupted partial file is found at
the end and the retry starts from zero; the origin refuses an unsatisfiable range with a signed
416 problem document.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlmodel import select

from service.errors import PartnerRefusedError, PartnerUnavailableError
from service.federation import pull as pull_module
from service.federation.client import PartnerClient
from service.federation.partial import PartialPayloads
from service.federation.pull import partial_payloads, pull_all
from service.models import Artifact, AuditEntry, BlobInFlight, Partner, PullState
from tests.service.nodekit import Kit, make_node, pin
from tests.service.test_federation_input import INBOX, cut_push, sealed_artifact, sign, stored
from tests.service.test_federation_sync import PortalTransport, accepted, share

SIZE = 300_000  # bytes of plaintext: too large to ride inline in a feed page
CUT = 100_000  # bytes of the payload that cross before the connection breaks


class _CutStream(httpx.SyncByteStream):
    def __init__(self, content: bytes, cut: int) -> None:
        self.content = content
        self.cut = cut

    def __iter__(self) -> Iterator[bytes]:
        yield self.content[: self.cut]
        raise httpx.ReadError("connection reset by the test")


class CuttingTransport(PortalTransport):
    """Cuts a payload answer's body after ``cut`` bytes (while ``cut`` is set); records each
    payload request's ``Range`` and how many body bytes the answer carried."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.cut: int | None = None
        self.payloads: list[tuple[str | None, int, int]] = []  # (Range, status, body bytes)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        if not request.url.path.endswith("/payload"):
            return response
        body = response.content
        sent = len(body) if self.cut is None else min(self.cut, len(body))
        self.payloads.append((request.headers.get("range"), response.status_code, sent))
        if self.cut is None:
            return response
        return httpx.Response(
            response.status_code,
            headers=list(response.headers.multi_items()),
            stream=_CutStream(body, self.cut),
        )


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[tuple[Kit, Kit, CuttingTransport]]:
    uk = make_node(tmp_path, "uk-aisi")
    us = make_node(tmp_path, "us-aisi")
    pin(uk, us)
    pin(us, uk)
    transport = CuttingTransport({"uk-aisi": uk.app, "us-aisi": us.app})
    yield uk, us, transport
    transport.close()


def client(kit: Kit, transport: httpx.BaseTransport) -> PartnerClient:
    return PartnerClient(kit.node, http=httpx.Client(transport=transport))


def blob_of(kit: Kit, artifact_id: str) -> tuple[str, int]:
    with kit.node.db.session() as session:
        row = session.exec(select(Artifact).where(Artifact.id == artifact_id)).one()
    assert row.blob is not None
    return row.blob, row.ciphertext_size


def pull_error(kit: Kit) -> str:
    with kit.node.db.session() as session:
        state = session.get(PullState, "uk-aisi")
    assert state is not None
    return state.last_error or ""


def partial_files(kit: Kit) -> list[Path]:
    folder = partial_payloads(kit.node).folder
    return sorted(folder.rglob("*.part")) if folder.is_dir() else []


def test_a_broken_download_resumes_from_where_it_stopped(
    nodes: tuple[Kit, Kit, CuttingTransport],
) -> None:
    uk, us, transport = nodes
    [artifact_id] = share(uk, 1, size=SIZE)
    digest, size = blob_of(uk, artifact_id)
    assert size > CUT * 2

    transport.cut = CUT
    assert pull_all(us.node, client(us, transport)) == 0  # the connection broke mid-body
    [partial] = partial_files(us)
    assert partial.name == f"{digest}.part" and partial.stat().st_size == CUT
    assert "unreachable" in pull_error(us)

    transport.cut = None
    assert pull_all(us.node, client(us, transport)) == 1
    assert transport.payloads == [(None, 200, CUT), (f"bytes={CUT}-", 206, size - CUT)]
    assert accepted(us) == {artifact_id: 1}  # stored once
    assert blob_of(us, artifact_id) == (digest, size)
    with us.node.blobs.open(digest) as fh:
        assert hashlib.sha256(fh.read()).hexdigest() == digest
    assert partial_files(us) == []  # removed once stored
    assert pull_all(us.node, client(us, transport)) == 0  # nothing left to fetch


def test_a_corrupted_partial_is_found_whole_and_the_retry_starts_from_zero(
    nodes: tuple[Kit, Kit, CuttingTransport],
) -> None:
    uk, us, transport = nodes
    [artifact_id] = share(uk, 1, size=SIZE)
    digest, size = blob_of(uk, artifact_id)

    transport.cut = CUT
    assert pull_all(us.node, client(us, transport)) == 0
    [partial] = partial_files(us)
    data = bytearray(partial.read_bytes())
    data[CUT // 2] ^= 0x01  # one bit flipped on this node's disk
    partial.write_bytes(bytes(data))

    transport.cut = None
    assert pull_all(us.node, client(us, transport)) == 0  # whole, but not the payload
    assert "does not match its digest" in pull_error(us)
    assert partial_files(us) == []  # discarded
    assert accepted(us) == {}  # nothing half-accepted

    assert pull_all(us.node, client(us, transport)) == 1
    assert [r for r, _, _ in transport.payloads] == [None, f"bytes={CUT}-", None]
    assert transport.payloads[-1] == (None, 200, size)  # from zero
    assert accepted(us) == {artifact_id: 1} and blob_of(us, artifact_id) == (digest, size)


def test_the_origin_refuses_an_unsatisfiable_range_with_a_signed_problem(
    nodes: tuple[Kit, Kit, CuttingTransport],
) -> None:
    uk, us, transport = nodes
    [artifact_id] = share(uk, 1, size=SIZE)
    _, size = blob_of(uk, artifact_id)
    with us.node.db.session() as session:
        partner = session.exec(select(Partner).where(Partner.node_id == "uk-aisi")).one()
    path = f"/federation/v1/artifacts/{artifact_id}/payload"
    with (
        pytest.raises(PartnerRefusedError) as refused,
        client(us, transport).download(partner, path, offset=size),
    ):
        pass  # pragma: no cover - refused before the block runs
    assert (
        refused.value.status_code == 416
    )  # signed: a refusal that did not verify is not "refused"
    assert refused.value.problem["type"].endswith("range-not-satisfiable")
    with uk.node.db.session() as session:
        audited = session.exec(select(AuditEntry).where(AuditEntry.kind == "request.refused")).all()
    assert any("416" in json.dumps(e.detail) or "416" in (e.reason or "") for e in audited)

    # a range inside the payload is served, the rest only, signed with its Content-Range
    with client(us, transport).download(partner, path, offset=size - 10) as stream:
        assert stream.offset == size - 10 and len(stream.read()) == 10


async def test_a_push_cut_mid_body_leaves_nothing_half_accepted(
    nodes: tuple[Kit, Kit, CuttingTransport],
) -> None:
    """The sender's connection drops partway through the ciphertext: no row, no blob, no
    temporary file, no journal entry at the receiver."""
    uk, us, _ = nodes
    _, line, ciphertext = sealed_artifact(uk, [us], b"finding\n" * 40_000)
    body = line + b"\n" + ciphertext
    headers = sign(uk, us, "POST", INBOX, body)
    before = stored(us)
    statuses, unread = await cut_push(us, headers, body, len(body) // 2)
    assert unread == 0  # the half body was read, then the disconnect
    assert all(s != 201 and s != 500 for s in statuses), statuses
    assert stored(us) == before  # no row, no blob, no temporary file
    with us.node.db.session() as session:
        assert session.exec(select(BlobInFlight)).all() == []
    assert accepted(us) == {}


def test_partial_files_are_named_by_digest_only_and_cleaned_after_the_grace(
    nodes: tuple[Kit, Kit, CuttingTransport], tmp_path: Path
) -> None:
    _, us, _ = nodes
    partials = PartialPayloads(tmp_path / "partial", max_bytes=1 << 20)
    assert partials.path_for("../../etc/passwd") is None
    assert partials.path_for("A" * 64) is None  # not lower-case hex
    old = partials.path_for("a" * 64)
    young = partials.path_for("b" * 64)
    assert old is not None and young is not None
    partials.folder.mkdir()
    old.write_bytes(b"x")
    young.write_bytes(b"y")
    now = time.time()
    os.utime(old, (now - 7200, now - 7200))
    assert partials.clean(older_than_seconds=3600, now=now) == 1
    assert sorted(partials.folder.iterdir()) == [young]
    partials.remove(["b" * 64, "../x"])
    assert list(partials.folder.iterdir()) == []
    with us.node.db.session() as session:
        partner = session.exec(select(Partner).where(Partner.node_id == "uk-aisi")).one()
    with (
        pytest.raises(PartnerUnavailableError, match="malformed ciphertext digest"),
        partials.fetch(client(us, httpx.MockTransport(lambda r: httpx.Response(500))), partner,
                       path="/x", digest="../escape", size=1),
    ):  # fmt: skip
        pass  # pragma: no cover - refused before the block runs


@pytest.mark.parametrize(
    ("item", "expected"),
    [
        ({"ciphertext_sha256": "a" * 64, "ciphertext_size": 10}, ("a" * 64, 10)),
        ({}, None),  # an older origin: fetched whole, as before
        ({"ciphertext_sha256": "../../x", "ciphertext_size": 10}, None),
        ({"ciphertext_sha256": "A" * 64, "ciphertext_size": 10}, None),
        ({"ciphertext_sha256": "a" * 64, "ciphertext_size": True}, None),
        ({"ciphertext_sha256": "a" * 64, "ciphertext_size": -1}, None),
    ],
)
def test_only_a_well_formed_digest_makes_a_download_resumable(
    item: dict[str, object], expected: tuple[str, int] | None
) -> None:
    assert pull_module._ciphertext(item) == expected
