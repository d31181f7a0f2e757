"""M9: a pinned partner turned hostile answers our pulls with anything it likes.

uk-aisi pulls; us-aisi is an honest partner; ca-aisi answers every request as each test scripts
it, correctly signed by its pinned key. What it could do before, and what each test holds:

- stream a payload without end: into ``<home>/partial`` past the size its feed item names, past
  any size a ciphertext of the manifest's plaintext can have, or (no digest named) as valid
  STREAM chunks straight into the receiver, whose size check came at the end;
- pass its daily volume cap by the feed (the cap was checked on a push only);
- flood the audit log: pages longer than asked for, pages without end, one audit entry per
  item that is not even a feed item;
- reach another partner's download by naming its ciphertext digest: the partial files were
  shared, named by digest only (hold its lock, remove its progress).

In every case the damage is bounded, recorded as ca-aisi's pull error or refusal, and us-aisi is
pulled as usual.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from sqlmodel import select

from crypto import age, httpsig
from service.federation.client import PartnerClient
from service.federation.pull import MAX_PAGES_PER_ROUND, partial_payloads, pull_all, pull_partner
from service.federation.signing import digest_value, sign_response_headers
from service.models import Artifact, AuditEntry, Partner, PullState
from tests.hardening.kit import Trio, trio
from tests.service.nodekit import Kit
from tests.service.test_federation_input import sealed_artifact
from tests.service.test_federation_sync import PortalTransport, share

LIMIT = 16 << 20  # bytes a hostile answer gives before the test cuts it (the old code read all)
PIECE = 64 << 10  # bytes per piece of a streamed answer
BLOCK = 16 * (age.CHUNK_SIZE + 16)  # ciphertext bytes the age reader decrypts at a time
LARGE = 300_000  # bytes of plaintext: fetched apart from the feed page, resumably
CUT = 100_000  # bytes of us-aisi's payload that cross before its connection breaks

Page = Callable[[int, int], dict[str, Any]]


class HostilePartner(PortalTransport):
    """uk-aisi and us-aisi as themselves; ca-aisi answers ``page(after, limit)`` to a feed
    request and streams ``payload()`` to a payload request, every answer signed by its pinned
    key. Records the paths asked of ca-aisi, the payload bytes it sent, the most bytes that
    uk-aisi's partial downloads held meanwhile, and us-aisi's payload requests' ``Range``; cuts
    us-aisi's payload answers after ``cut`` bytes while it is set."""

    def __init__(self, nodes: Trio) -> None:
        super().__init__({"uk-aisi": nodes.uk.app, "us-aisi": nodes.us.app})
        self.hostile = nodes.ca.node
        self.partials = partial_payloads(nodes.uk.node).folder
        self.page: Page = lambda after, limit: {"items": [], "next": after, "more": False}
        self.payload: Callable[[], Iterator[bytes]] = lambda: iter(())
        self.asked: list[str] = []
        self.sent = 0
        self.most_held = 0
        self.cut: int | None = None
        self.ranges: list[str | None] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.host != "ca-aisi":
            response = super().handle_request(request)
            if request.url.path.endswith("/payload"):
                self.ranges.append(request.headers.get("range"))
                if self.cut is not None:
                    body = response.content[: self.cut]
                    return httpx.Response(
                        response.status_code,
                        headers=list(response.headers.multi_items()),
                        stream=_Cut(body),
                    )
            return response
        self.asked.append(request.url.path)
        if request.url.path == "/federation/v1/feed":
            after, limit = int(request.url.params["after"]), int(request.url.params["limit"])
            return self._signed(request, json.dumps(self.page(after, limit)).encode())
        if request.url.path.endswith("/payload"):
            return self._signed(request, _Streamed(self))
        return self._signed(request, b"{}")

    def _signed(self, request: httpx.Request, body: bytes | httpx.SyncByteStream) -> httpx.Response:
        signed = httpsig.Request(request.method, str(request.url), request.headers.multi_items())
        content = body if isinstance(body, bytes) else b""  # a stream's digest is never reached
        headers = {"Content-Type": "application/json" if content else "application/octet-stream"}
        headers.update(
            sign_response_headers(
                self.hostile,
                request=signed,
                status=200,
                headers=headers,
                content_digest=digest_value(hashlib.sha256(content).digest()),
            )
        )
        if isinstance(body, bytes):
            return httpx.Response(200, headers=headers, content=body)
        return httpx.Response(200, headers=headers, stream=body)

    def held(self) -> int:
        """Bytes in uk-aisi's partial downloads now."""
        total = 0
        for path in self.partials.rglob("*.part") if self.partials.is_dir() else ():
            try:
                total += path.stat().st_size
            except FileNotFoundError:
                continue
        return total


class _Streamed(httpx.SyncByteStream):
    """ca-aisi's payload answer, cut by the test at ``LIMIT`` bytes."""

    def __init__(self, transport: HostilePartner) -> None:
        self.transport = transport

    def __iter__(self) -> Iterator[bytes]:
        t = self.transport
        for piece in t.payload():
            t.most_held = max(t.most_held, t.held())  # what the pieces sent so far left
            if t.sent >= LIMIT:
                raise httpx.ReadError("cut by the test")
            t.sent += len(piece)
            yield piece
        t.most_held = max(t.most_held, t.held())


class _Cut(httpx.SyncByteStream):
    def __init__(self, body: bytes) -> None:
        self.body = body

    def __iter__(self) -> Iterator[bytes]:
        yield self.body
        raise httpx.ReadError("connection reset by the test")


def junk() -> Iterator[bytes]:
    while True:
        yield bytes(PIECE)


def valid_chunks_after(ciphertext: bytes, plaintext_size: int, ca: Kit) -> Iterator[bytes]:
    """``ciphertext``'s header and nonce, then valid non-final STREAM chunks without end: the
    origin holds the file key (a one-chunk payload of ``plaintext_size`` bytes is replaced)."""
    decryptor = age.Decryptor.parse(io.BytesIO(ciphertext), armor=False)
    decryptor.unlock(ca.node.keys.all_identities)
    aead = ChaCha20Poly1305(decryptor._key)
    yield ciphertext[: len(ciphertext) - (plaintext_size + 16)]
    counter = 0
    while True:
        nonce = counter.to_bytes(11, "big") + b"\x00"
        yield aead.encrypt(nonce, bytes(age.CHUNK_SIZE), None)
        counter += 1


def once(*items: dict[str, Any]) -> Page:
    """A feed of one page holding ``items``."""
    return lambda after, limit: {
        "items": list(items) if after == 0 else [],
        "next": 1,
        "more": False,
    }


def feed_item(line: bytes, artifact_id: str, **extra: Any) -> dict[str, Any]:
    return {"cursor": 1, "artifact_id": artifact_id, "manifest": json.loads(line), **extra}


@pytest.fixture
def nodes(tmp_path: Path) -> Trio:
    return trio(tmp_path)


@pytest.fixture
def transport(nodes: Trio) -> Iterator[HostilePartner]:
    transport = HostilePartner(nodes)
    yield transport
    transport.close()


def pull(nodes: Trio, transport: HostilePartner, partner: str | None = None) -> int:
    """Pull every partner of uk-aisi's once (or ``partner`` only); how many were stored. The
    client is left open: closing it would close the transport, which the next pull uses."""
    client = PartnerClient(nodes.uk.node, http=httpx.Client(transport=transport))
    if partner is None:
        return pull_all(nodes.uk.node, client)
    with nodes.uk.node.db.session() as session:
        row = session.get(Partner, partner)
    assert row is not None
    return pull_partner(nodes.uk.node, client, row)


def state(nodes: Trio, partner: str) -> PullState:
    with nodes.uk.node.db.session() as session:
        row = session.get(PullState, partner)
    assert row is not None
    return row


def refusals(nodes: Trio) -> list[str]:
    """The reasons of uk-aisi's refusals of what ca-aisi sent."""
    with nodes.uk.node.db.session() as session:
        rows = session.exec(
            select(AuditEntry).where(
                AuditEntry.kind == "receive.rejected", AuditEntry.actor == "partner:ca-aisi"
            )
        ).all()
    return [json.loads(r.detail).get("reason", "") for r in rows]


def stored_from(nodes: Trio, origin: str) -> list[Artifact]:
    with nodes.uk.node.db.session() as session:
        return list(session.exec(select(Artifact).where(Artifact.origin == origin)))


def ciphertext_of(nodes: Trio, artifact_id: str) -> tuple[str, int]:
    """The SHA-256 and size of us-aisi's ciphertext of ``artifact_id``."""
    with nodes.us.node.db.session() as session:
        row = session.exec(select(Artifact).where(Artifact.id == artifact_id)).one()
    assert row.blob is not None
    return row.blob, row.ciphertext_size


def partial_files(nodes: Trio) -> list[Path]:
    return sorted(partial_payloads(nodes.uk.node).folder.rglob("*.part"))


def honest_share(nodes: Trio, size: int = 4096) -> str:
    [artifact_id] = share(nodes.us, 1, size=size, to="uk-aisi")
    return artifact_id


def test_a_download_stops_at_the_size_its_feed_item_names(
    nodes: Trio, transport: HostilePartner
) -> None:
    honest = honest_share(nodes)
    art_id, line, ciphertext = sealed_artifact(nodes.ca, [nodes.uk], b"c" * LARGE)
    size = len(ciphertext)
    transport.page = once(
        feed_item(
            line,
            art_id,
            ciphertext_sha256=hashlib.sha256(ciphertext).hexdigest(),
            ciphertext_size=size,
        )
    )
    transport.payload = lambda: itertools.chain([ciphertext], junk())  # then more, without end
    assert pull(nodes, transport) == 1  # us-aisi's
    assert transport.most_held <= size  # never a byte past the size on disk
    assert transport.sent <= size + PIECE  # and the answer abandoned right there
    assert partial_files(nodes) == []  # what it sent is dropped
    error = state(nodes, "ca-aisi").last_error or ""
    assert f"more than the {size} bytes" in error
    assert stored_from(nodes, "ca-aisi") == []
    assert [a.id for a in stored_from(nodes, "us-aisi")] == [honest]
    assert state(nodes, "us-aisi").last_error is None


def test_an_item_naming_a_ciphertext_too_large_for_its_plaintext_is_refused_unfetched(
    nodes: Trio, transport: HostilePartner
) -> None:
    honest_share(nodes)
    art_id, line, _ = sealed_artifact(nodes.ca, [nodes.uk], b"c" * 1000)
    transport.page = once(
        feed_item(line, art_id, ciphertext_sha256="ab" * 32, ciphertext_size=1 << 40)
    )
    transport.payload = junk
    assert pull(nodes, transport) == 1
    assert not any(p.endswith("/payload") for p in transport.asked)  # refused before
    assert transport.most_held == 0 and partial_files(nodes) == []
    [reason] = refusals(nodes)
    assert f"ciphertext of {1 << 40} bytes" in reason and "1000-byte plaintext" in reason
    assert state(nodes, "ca-aisi").cursor == 1  # refused for good: not asked again
    assert stored_from(nodes, "ca-aisi") == []


def test_endless_valid_chunks_without_a_digest_stop_at_the_manifests_size(
    nodes: Trio, transport: HostilePartner
) -> None:
    honest = honest_share(nodes)
    art_id, line, ciphertext = sealed_artifact(nodes.ca, [nodes.uk], b"c" * 1000)
    transport.page = once(feed_item(line, art_id))  # no digest: streamed into the receiver
    transport.payload = lambda: valid_chunks_after(ciphertext, 1000, nodes.ca)
    assert pull(nodes, transport) == 1
    assert transport.sent <= len(ciphertext) + 3 * BLOCK  # not the 16 MiB offered
    [reason] = refusals(nodes)
    assert "longer than the manifest's size" in reason
    assert stored_from(nodes, "ca-aisi") == []
    assert [a.id for a in stored_from(nodes, "us-aisi")] == [honest]


def test_what_a_pull_stores_counts_against_the_partners_daily_volume(
    nodes: Trio, transport: HostilePartner
) -> None:
    shared = share(nodes.us, 3, size=4096, to="uk-aisi")  # small: inline in the feed page
    sizes = [ciphertext_of(nodes, a)[1] for a in shared]
    caps = nodes.uk.node.settings.volume_limits_by_partner
    caps["us-aisi"] = sizes[0] + sizes[1] + sizes[2] // 2
    assert pull(nodes, transport) == 2  # the third would pass the cap
    assert sum(a.ciphertext_size for a in stored_from(nodes, "us-aisi")) <= caps["us-aisi"]
    assert "daily volume cap" in (state(nodes, "us-aisi").last_error or "")
    assert pull(nodes, transport) == 0  # the same day: still paused, nothing stored
    caps["us-aisi"] = 10 * sum(sizes)  # the day allows again: the cursor was kept
    assert pull(nodes, transport) == 1, state(nodes, "us-aisi").last_error
    assert sorted(a.id for a in stored_from(nodes, "us-aisi")) == sorted(shared)
    assert state(nodes, "us-aisi").last_error is None


def test_a_page_longer_than_asked_for_is_that_partners_error(
    nodes: Trio, transport: HostilePartner
) -> None:
    honest = honest_share(nodes)
    transport.page = lambda after, limit: {"items": [{}] * (limit + 1), "next": 1, "more": False}
    assert pull(nodes, transport) == 1
    assert "more than the 500 asked for" in (state(nodes, "ca-aisi").last_error or "")
    assert refusals(nodes) == []  # not one audit entry per item
    assert state(nodes, "ca-aisi").cursor == 0
    assert [a.id for a in stored_from(nodes, "us-aisi")] == [honest]


def test_a_feed_without_end_is_pulled_a_bounded_number_of_pages_per_round(
    nodes: Trio, transport: HostilePartner
) -> None:
    honest = honest_share(nodes)
    stop = 10 * MAX_PAGES_PER_ROUND  # the test's own end, so the old loop ends too
    transport.page = lambda after, limit: {"items": [], "next": after + 1, "more": after < stop}
    assert pull(nodes, transport) == 1
    pages = [p for p in transport.asked if p == "/federation/v1/feed"]
    assert len(pages) == MAX_PAGES_PER_ROUND
    assert state(nodes, "ca-aisi").cursor == MAX_PAGES_PER_ROUND  # the rest next round
    assert state(nodes, "ca-aisi").last_error is None
    assert [a.id for a in stored_from(nodes, "us-aisi")] == [honest]
    pull(nodes, transport, "ca-aisi")
    assert state(nodes, "ca-aisi").cursor == 2 * MAX_PAGES_PER_ROUND


def test_items_without_a_manifest_are_one_audit_entry_per_page(
    nodes: Trio, transport: HostilePartner
) -> None:
    transport.page = once(*[{}] * 50)
    assert pull(nodes, transport) == 0
    [reason] = refusals(nodes)
    assert "50 of the 50 items" in reason
    assert state(nodes, "ca-aisi").last_error is None


def test_a_rounds_refusals_past_the_first_hundred_are_one_summary_entry(
    nodes: Trio, transport: HostilePartner
) -> None:
    """Items that fail their checks, or that our inbound policy denies (validly signed: the
    partner holds its key), were one audit entry and one transaction each: 20,000 a round."""
    red = [sealed_artifact(nodes.ca, [nodes.uk], tlp="TLP:RED") for _ in range(60)]
    denied = [feed_item(line, art_id) for art_id, line, _ in red]
    broken = [{"artifact_id": f"art_x{i}", "manifest": {"payloadType": "x"}} for i in range(90)]
    pages = [denied + broken[:40], broken[40:]]  # two pages of one round: 150 refusals
    transport.page = lambda after, limit: {
        "items": pages[after] if after < len(pages) else [],
        "next": min(after + 1, len(pages)),
        "more": after + 1 < len(pages),
    }
    before = _audited_from_ca(nodes)
    assert pull(nodes, transport, "ca-aisi") == 0
    entries = _audited_from_ca(nodes)[len(before) :]
    each = [e for e in entries if e.rule != "summary"]
    [summary] = [e for e in entries if e.rule == "summary"]
    assert len(each) == 100 and len(entries) == 101
    assert sum(1 for e in each if e.artifact_id and e.artifact_id.startswith("art_test")) == 60
    detail = json.loads(summary.detail)
    assert detail["count"] == 50 and detail["audited_each"] == 100 and detail["via"] == "pull"
    assert sum(detail["reasons"].values()) == 50
    assert state(nodes, "ca-aisi").cursor == 2 and state(nodes, "ca-aisi").last_error is None


def _audited_from_ca(nodes: Trio) -> list[AuditEntry]:
    with nodes.uk.node.db.session() as session:
        return list(
            session.exec(
                select(AuditEntry)
                .where(AuditEntry.kind == "receive.rejected", AuditEntry.actor == "partner:ca-aisi")
                .order_by(AuditEntry.id)  # type: ignore[arg-type]
            )
        )


def test_a_partner_naming_anothers_digest_cannot_remove_its_download(
    nodes: Trio, transport: HostilePartner
) -> None:
    honest = honest_share(nodes, LARGE)
    digest, size = ciphertext_of(nodes, honest)
    transport.cut = CUT
    assert pull(nodes, transport, "us-aisi") == 0  # broken off: CUT bytes kept
    [partial] = partial_files(nodes)
    assert partial.stat().st_size == CUT
    # ca-aisi lists the same digest under an item it knows will be refused (or held): the
    # page's files were removed, by digest, once the page was done.
    transport.page = once(
        {"artifact_id": "art_x", "manifest": {}, "ciphertext_sha256": digest,
         "ciphertext_size": size}
    )  # fmt: skip
    pull(nodes, transport, "ca-aisi")
    assert partial.is_file() and partial.stat().st_size == CUT
    transport.cut = None
    assert pull(nodes, transport, "us-aisi") == 1
    assert transport.ranges == [None, f"bytes={CUT}-"]  # resumed, not started over


def test_a_partner_naming_anothers_digest_cannot_hold_its_download(
    nodes: Trio, transport: HostilePartner
) -> None:
    honest = honest_share(nodes, LARGE)
    digest, size = ciphertext_of(nodes, honest)
    art_id, line, _ = sealed_artifact(nodes.ca, [nodes.uk], b"c" * LARGE)
    transport.page = once(feed_item(line, art_id, ciphertext_sha256=digest, ciphertext_size=size))
    started, release = threading.Event(), threading.Event()

    def stall() -> Iterator[bytes]:
        yield b"\0" * 1000
        started.set()  # ca-aisi's download holds its file now
        release.wait(timeout=60)
        raise httpx.ReadError("cut by the test")

    transport.payload = stall
    hostile = threading.Thread(target=pull, args=(nodes, transport, "ca-aisi"))
    hostile.start()
    try:
        assert started.wait(timeout=60)
        assert pull(nodes, transport, "us-aisi") == 1
        assert state(nodes, "us-aisi").last_error is None
    finally:
        release.set()
        hostile.join(timeout=60)
    assert [a.id for a in stored_from(nodes, "us-aisi")] == [honest]


def test_partial_downloads_are_kept_per_partner_and_swept_by_age(
    nodes: Trio, transport: HostilePartner
) -> None:
    honest = honest_share(nodes, LARGE)
    digest, _ = ciphertext_of(nodes, honest)
    transport.cut = CUT
    pull(nodes, transport, "us-aisi")
    folder = partial_payloads(nodes.uk.node).folder
    assert partial_files(nodes) == [folder / "us-aisi" / f"{digest}.part"]
    old = time.time() - nodes.uk.node.settings.blob_orphan_grace_seconds - 60
    os.utime(folder / "us-aisi" / f"{digest}.part", (old, old))
    pull(nodes, transport, "ca-aisi")  # any pull sweeps every partner's folder first
    assert partial_files(nodes) == []


def test_a_partners_broken_downloads_together_stay_under_its_bound(tmp_path: Path) -> None:
    """ca-aisi's downloads break round after round, each round naming a new payload: its
    partial files together stay under ``2 * max_artifact_bytes`` (its oldest go), and us-aisi's
    own broken download, in its own folder, is kept."""
    nodes = trio(tmp_path, max_artifact_bytes=LARGE + 50_000)
    bound = 2 * (LARGE + 50_000)
    transport = HostilePartner(nodes)
    try:
        honest = honest_share(nodes, LARGE)
        digest, _ = ciphertext_of(nodes, honest)
        transport.cut = CUT
        pull(nodes, transport, "us-aisi")
        sealed = [sealed_artifact(nodes.ca, [nodes.uk], bytes([n]) * LARGE) for n in range(5)]
        for art_id, line, ciphertext in sealed:  # one new payload per round, cut near its end
            item = feed_item(
                line,
                art_id,
                ciphertext_sha256=hashlib.sha256(ciphertext).hexdigest(),
                ciphertext_size=len(ciphertext),
            )
            transport.page = once(item)
            transport.payload = lambda c=ciphertext: _broken(c[: len(c) - 1000])
            pull(nodes, transport, "ca-aisi")
            assert stored_from(nodes, "ca-aisi") == []
            assert sum(p.stat().st_size for p in _files_of(nodes, "ca-aisi")) <= bound
        kept = {p.name for p in _files_of(nodes, "ca-aisi")}
        assert 1 <= len(kept) < len(sealed)  # the oldest went
        assert f"{hashlib.sha256(sealed[-1][2]).hexdigest()}.part" in kept  # the latest resumes
        us_folder = partial_payloads(nodes.uk.node).folder / "us-aisi"
        assert (us_folder / f"{digest}.part").exists()  # another partner's is never touched
    finally:
        transport.close()


def _broken(body: bytes) -> Iterator[bytes]:
    yield body
    raise httpx.ReadError("connection reset by the test")


def _files_of(nodes: Trio, partner: str) -> list[Path]:
    return [p for p in partial_files(nodes) if p.parent.name == partner]


def test_a_download_trickling_under_the_read_timeout_ends_at_the_minimum_rate(
    tmp_path: Path,
) -> None:
    """ca-aisi sends its payload a few bytes at a time, each well inside the read timeout: the
    download ends once a window spent waiting brought less than the minimum rate, its bytes
    kept for the next round, and the pull is ca-aisi's error."""
    nodes = trio(tmp_path, request_body_min_rate=4000, request_body_rate_window_seconds=0.5)
    transport = HostilePartner(nodes)
    try:
        art_id, line, ciphertext = sealed_artifact(nodes.ca, [nodes.uk], b"c" * 2000)
        digest = hashlib.sha256(ciphertext).hexdigest()
        transport.page = once(
            feed_item(line, art_id, ciphertext_sha256=digest, ciphertext_size=len(ciphertext))
        )
        transport.payload = lambda: _trickled(ciphertext, piece=40, every=0.05)  # 800 B/s
        started = time.monotonic()
        assert pull(nodes, transport, "ca-aisi") == 0
        assert time.monotonic() - started < len(ciphertext) / 40 * 0.05  # not the whole trickle
        assert "under the minimum of 4000 bytes per second" in (
            state(nodes, "ca-aisi").last_error or ""
        )
        assert stored_from(nodes, "ca-aisi") == []
        [kept] = _files_of(nodes, "ca-aisi")  # what came is kept, to resume from
        assert kept.name == f"{digest}.part" and 0 < kept.stat().st_size < len(ciphertext)
    finally:
        transport.close()


def _trickled(body: bytes, *, piece: int, every: float) -> Iterator[bytes]:
    for start in range(0, len(body), piece):
        time.sleep(every)
        yield body[start : start + piece]
