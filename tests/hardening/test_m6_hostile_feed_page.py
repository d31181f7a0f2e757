"""M6: a partner serving a signed but hostile feed page (a JSON bomb, a 5,000-digit number,
anything malformed) aborted the pull loop, so the partners after it were never pulled, and
nothing showed in ``GET /v1/sync`` or ``entente sync status``.

Now each partner's pull is its own bulkhead: its failure is recorded as that partner's pull
error, shown per partner, and every other partner is still pulled.
"""

from __future__ import annotations

import hashlib
import threading
import time
from pathlib import Path

import anyio
import httpx
import pytest
from sqlmodel import select
from typer.testing import CliRunner

from crypto import httpsig
from service.cli import app as cli_app
from service.federation.client import PartnerClient
from service.federation.pull import PullLoops, pull_all
from service.federation.signing import digest_value, sign_response_headers
from service.models import Artifact, PullState
from service.node import Node
from service.tokens import Role
from tests.hardening.kit import Trio, share, trio
from tests.service.test_federation_sync import PortalTransport

BOMBS = {
    "deep-nesting": b"[" * 200_000 + b"]" * 200_000,
    "huge-number": b'{"items": [], "next": ' + b"7" * 5000 + b', "more": false}',
    "not-utf8": b'{"items": ["\xff\xfe"]}',
    "wrong-shapes": b'{"items": [{"artifact_id": [1], "manifest": {"payloadType": 5}},'
    b' 3, null], "next": "x", "more": true}',
    "truncated": b'{"items": [{"artifact_id": "art_',
}


class HostileTransport(PortalTransport):
    """The in-process apps, except that ``ca-aisi`` answers every request with ``page``,
    correctly signed by its pinned key (a hostile partner, not a forger)."""

    def __init__(self, nodes: Trio, page: bytes) -> None:
        super().__init__({"uk-aisi": nodes.uk.app, "us-aisi": nodes.us.app})
        self.hostile: Node = nodes.ca.node
        self.page = page

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.host != "ca-aisi":
            return super().handle_request(request)
        signed = httpsig.Request(request.method, str(request.url), request.headers.multi_items())
        headers = {"Content-Type": "application/json"}
        headers.update(
            sign_response_headers(
                self.hostile,
                request=signed,
                status=200,
                headers=headers,
                content_digest=digest_value(hashlib.sha256(self.page).digest()),
            )
        )
        return httpx.Response(200, headers=headers, content=self.page)


@pytest.fixture(params=sorted(BOMBS))
def bomb(request: pytest.FixtureRequest) -> bytes:
    return BOMBS[str(request.param)]


@pytest.fixture
def nodes(tmp_path: Path) -> Trio:
    return trio(tmp_path)


async def test_a_hostile_feed_page_is_that_partners_error_and_others_are_pulled(
    nodes: Trio, bomb: bytes
) -> None:
    sent = await share(nodes.us, b"a finding for the UK", partners=["uk-aisi"], tlp="TLP:GREEN")
    transport = HostileTransport(nodes, bomb)
    try:
        client = PartnerClient(nodes.uk.node, http=httpx.Client(transport=transport))
        # ca-aisi sorts before us-aisi: its page is read first.
        stored = pull_all(nodes.uk.node, client)
        client.close()
    finally:
        transport.close()
    assert stored == 1
    with nodes.uk.node.db.session() as session:
        row = session.exec(select(Artifact).where(Artifact.id == sent["id"])).first()
        assert row is not None and row.origin == "us-aisi"
    async with nodes.uk.client() as c:
        r = await c.get("/v1/sync", headers=nodes.uk.auth(Role.ADMIN))
    assert r.status_code == 200, r.text
    state = {s["partner"]: s for s in r.json()}
    assert state["ca-aisi"]["pull_error"], state
    assert "ca-aisi" in state["ca-aisi"]["pull_error"]
    assert state["us-aisi"]["pull_error"] is None
    assert state["us-aisi"]["last_contact"] is not None
    # The same from the command line, straight from the node's database (the root group
    # imports the sync commands when they run).
    result = CliRunner().invoke(
        cli_app, ["sync", "status", "--home", str(nodes.uk.node.home.path), "--json"]
    )
    assert result.exit_code == 0, result.output
    assert '"pull_error": null' in result.output and "ca-aisi" in result.output


class StallingTransport(HostileTransport):
    """ca-aisi accepts the connection and then answers nothing until released."""

    def __init__(self, nodes: Trio) -> None:
        super().__init__(nodes, b"{}")
        self.release = threading.Event()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.host == "ca-aisi":
            self.release.wait(timeout=120)
            raise httpx.ReadTimeout("stalled", request=request)
        return super().handle_request(request)


async def test_a_stalled_partner_holds_only_its_own_pull(nodes: Trio) -> None:
    sent = await share(nodes.us, b"pulled past a stall", partners=["uk-aisi"], tlp="TLP:GREEN")
    transport = StallingTransport(nodes)
    client = PartnerClient(nodes.uk.node, http=httpx.Client(transport=transport))
    loops = PullLoops(nodes.uk.node, client)
    try:
        assert loops.round() == 2  # one pull per partner, each on its own
        deadline = time.monotonic() + 60
        stored = None
        while stored is None and time.monotonic() < deadline:
            with nodes.uk.node.db.session() as session:
                stored = session.get(Artifact, (sent["id"], "us-aisi"))
            if stored is None:
                await anyio.sleep(0.05)
        assert stored is not None  # us-aisi was pulled while ca-aisi's pull hangs
        assert "ca-aisi" in loops.in_flight()  # still hanging, alone
        assert loops.round() <= 1  # us-aisi again at most: ca-aisi is not started twice
    finally:
        transport.release.set()
        loops.close()
        client.close()
        transport.close()
    with nodes.uk.node.db.session() as session:
        state = session.get(PullState, "ca-aisi")
    assert state is not None and state.last_error and "ca-aisi" in state.last_error
