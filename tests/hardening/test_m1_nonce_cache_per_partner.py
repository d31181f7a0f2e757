"""M1: nonces were stored before the rate limit ran, in one replay cache shared by every
partner, so one partner could fill it and every other partner got 429 "replay cache is full".

Now the replay cache is bounded per partner (per signing key) and a nonce is stored only after
the signature verified and the partner's rate limit let the request through: a flooding partner
exhausts its own bulkhead, never another partner's.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import sqlalchemy as sa

from tests.hardening.kit import Trio, signed, trio


async def _feed(nodes: Trio, sender: str) -> httpx.Response:
    node = getattr(nodes, sender).node
    path = "/federation/v1/feed?after=0"
    async with nodes.uk.client() as c:
        return await c.get(path, headers=signed(node, nodes.uk.node, "GET", path))


def _nonces(nodes: Trio, sender: str) -> int:
    keyid = getattr(nodes, sender).node.keys.signing.fingerprint
    with nodes.uk.node.db.engine.connect() as conn:
        return int(
            conn.execute(
                sa.text("SELECT count(*) FROM seen_nonces WHERE keyid = :k"), {"k": keyid}
            ).scalar_one()
        )


async def test_one_partner_filling_its_replay_cache_does_not_refuse_another(
    tmp_path: Path,
) -> None:
    nodes = trio(tmp_path, nonce_cache_size=100, rate_limit_per_minute=10_000)
    for _ in range(100):
        assert (await _feed(nodes, "us")).status_code == 200
    r = await _feed(nodes, "us")
    assert r.status_code == 429, r.text
    assert r.json()["reason"] == "nonce-cache"
    assert "us-aisi" in r.json()["detail"]
    # ca-aisi has a replay cache of its own: us-aisi's flood does not reach it.
    for _ in range(10):
        r = await _feed(nodes, "ca")
        assert r.status_code == 200, r.text
    assert _nonces(nodes, "us") == 100 and _nonces(nodes, "ca") == 10


async def test_a_rate_limited_request_stores_no_nonce(tmp_path: Path) -> None:
    nodes = trio(tmp_path, nonce_cache_size=100, rate_limit_per_minute=5)
    for _ in range(5):
        assert (await _feed(nodes, "us")).status_code == 200
    for _ in range(150):
        r = await _feed(nodes, "us")
        assert r.status_code == 429 and r.json()["reason"] == "rate", r.text
    # The 150 refused requests spent no room in the replay cache.
    assert _nonces(nodes, "us") == 5
    assert (await _feed(nodes, "ca")).status_code == 200
