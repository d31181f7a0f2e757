"""Four nodes in their own network namespaces (``service/netsim.py``) under the conditions of links
between continents: one-way delays of 20 to 210 ms between pairs, one link limited to 2 Mbit/s,
one that loses 2 % of its packets (in the kernel: nftables) and jitters by up to 40 ms.
Shares flow continuously from two origins to every partner while one node is partitioned for
about ten seconds and healed, and the limited link is cut in the middle of a 3 MB transfer.

Behind the partition, the origin revokes a share every partner already holds, and a share the
network's terms forbid (TLP:AMBER) is refused.

Afterwards every share is received exactly once by each partner it was addressed to (same id
and SHA-256, one ``receive.accepted`` entry), each partner's signed receipt is at the origin,
every outbox is drained; the revocation reached every holder, the cut-off one included (410,
one ``revocation.received`` each, every acknowledgement at the origin); the forbidden share was
refused for each partner by the rule that forbids it and reached no one; and every audit log
verifies with its witness quorum met and its witnesses' checkpoints consistent. The delivery
latencies observed are printed (``pytest -s``)."""

from __future__ import annotations

import hashlib
import json
import os
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.localnet import COMMAND, run_cli
from service.network import Network, network_env, network_ids, prepare_network
from tests.netns import Link, Star, require_namespaces
from tests.nodes import PASSPHRASE, SCRYPT_WORK_FACTOR
from tests.support import ROOT

pytestmark = [pytest.mark.integration, pytest.mark.slow]

IDS = network_ids(4)
US, UK, CA, JP = IDS  # us-aisi, uk-aisi, ca-aisi, jp-aisi
# One way to the hub; between two nodes both add up: US-UK 20 ms, US/UK-CA 80, US/UK-JP 150,
# CA-JP 210 (round trips 40 to 420 ms).
# JP's link also loses 2 % of its packets each way and adds up to 20 ms of jitter each way.
LINKS = {
    US: Link(10),
    UK: Link(10),
    CA: Link(70, rate="2mbit"),
    JP: Link(140, jitter_ms=20, loss_percent=2),
}
ORIGINS = (US, UK)
PARTITIONED = JP  # cut off for PARTITION_SECONDS while shares flow
LIMITED = CA  # the 2 Mbit/s link, cut mid-transfer of BIG bytes
PARTITION_SECONDS = 10.0
LINK_CUT_SECONDS = 4.0
FLOW_SECONDS = 24.0  # shares flow this long
SHARE_EVERY = 0.5  # seconds between two shares of one origin
BIG = 3 * 1024 * 1024  # bytes
SETTLE_SECONDS = 150.0  # for every delivery after the flow stops (a bound, not a speed)
FINDING = {"title": "Netns finding", "tlp": "TLP:GREEN", "topics": ["evaluation"],
           "purposes": ["evaluation"]}  # fmt: skip


def wait_for(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


@dataclass
class Shared:
    origin: str
    id: str
    sha256: str
    partners: list[str]
    size: int


@dataclass
class Flow:
    """What the origins shared (and what went wrong sharing), filled in by their threads."""

    shared: list[Shared] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Network, Star]]:
    require_namespaces(loss=True)
    root = tmp_path_factory.mktemp("netns")
    star = Star(LINKS, root)
    network: Network | None = None
    try:
        star.up()
        env = network_env(
            ENTENTE_PASSPHRASE=PASSPHRASE,
            ENTENTE_SCRYPT_WORK_FACTOR=str(SCRYPT_WORK_FACTOR),
            ENTENTE_LOG_LEVEL="INFO",
            ENTENTE_RETRY_MAX_SECONDS="2",
            PYTHONPATH=str(ROOT),  # `python -m service.cli` runs this checkout
        )
        network = prepare_network(
            root / "homes", IDS, passphrase=PASSPHRASE, scrypt_work_factor=SCRYPT_WORK_FACTOR,
            env=env, command=COMMAND, hosts=star.hosts,
        )  # fmt: skip
        for node in network.nodes.values():
            star.place(node)
        network.federation.start()
        yield network, star
    finally:
        if network is not None:
            network.federation.stop()
        star.down()


def try_share(
    net: Network, origin: str, partners: list[str], content: bytes = b"x", **terms: str
) -> httpx.Response:
    node = net.nodes[origin]
    meta = {**FINDING, "partners": partners, **terms}
    return httpx.post(
        f"{node.url}/v1/artifacts",
        files={"metadata": (None, json.dumps(meta), "application/json"), "file": ("f", content)},
        headers=node.auth("publisher"),
        timeout=120,
    )


def share(net: Network, origin: str, partners: list[str], content: bytes) -> Shared:
    r = try_share(net, origin, partners, content)
    assert r.status_code == 201, r.text
    return Shared(origin, r.json()["id"], hashlib.sha256(content).hexdigest(), partners,
                  len(content))  # fmt: skip


def keep_sharing(net: Network, origin: str, flow: Flow, stop: threading.Event) -> None:
    partners = [n for n in IDS if n != origin]
    while not stop.is_set():
        try:
            done = share(net, origin, partners, os.urandom(2048))
        except (AssertionError, httpx.HTTPError) as exc:  # the origin's own link is never cut
            with flow.lock:
                flow.errors.append(f"{origin}: {exc}")
        else:
            with flow.lock:
                flow.shared.append(done)
        stop.wait(SHARE_EVERY)


def get_status(net: Network, node_id: str, path: str, role: str, **params: Any) -> httpx.Response:
    node = net.nodes[node_id]
    return httpx.get(f"{node.url}{path}", params=params, headers=node.auth(role), timeout=60)


def get(net: Network, node_id: str, path: str, role: str, **params: Any) -> Any:
    r = get_status(net, node_id, path, role, **params)
    assert r.status_code == 200, r.text
    return r.json()


def held_by_all(net: Network, flow: Flow) -> Shared | None:
    """The first share every partner has receipted, if any yet."""
    with flow.lock:
        candidates = list(flow.shared)
    for shared in candidates[:3]:
        states = deliveries(net, shared)
        if all(states.get(p, {}).get("state") == "delivered" for p in shared.partners):
            return shared
    return None


def deliveries(net: Network, shared: Shared) -> dict[str, dict[str, Any]]:
    body = get(net, shared.origin, f"/v1/artifacts/{shared.id}", "auditor")
    return {d["partner"]: d for d in body["deliveries"]}


def received(net: Network, node_id: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"direction": "received", "limit": 500}
        if cursor is not None:
            params["cursor"] = cursor
        page = get(net, node_id, "/v1/artifacts", "auditor", **params)
        items += page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            return items


def entries(net: Network, node_id: str, kind: str) -> list[dict[str, Any]]:
    """The node's audit entries of ``kind`` (sequenced: in its log)."""
    found: list[dict[str, Any]] = []
    after: str | None = None
    while True:
        params: dict[str, Any] = {"kind": kind, "limit": 500}
        if after is not None:
            params["after"] = after
        page = get(net, node_id, "/audit/v1/entries", "auditor", **params)
        found += page["entries"]
        after = page["next"]
        if after is None:
            return found


def logged(net: Network, node_id: str, kind: str, count: int) -> list[dict[str, Any]]:
    """The entries of ``kind`` once at least ``count`` are in the log (the sequencer runs every
    few seconds); any beyond ``count`` is a duplicate for the caller to find."""
    found: list[dict[str, Any]] = wait_for(
        lambda: (e := entries(net, node_id, kind)) and len(e) >= count and e,
        60, f"{count} {kind} entries at {node_id}",
    )  # fmt: skip
    return found


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def settled(net: Network, shares: list[Shared], revoked: list[Shared]) -> bool:
    """Every origin's outbox drained: nothing pending or failing, one delivered row per share
    and partner, and one per revocation notice (one request per origin: the test's polls stay
    far below the rate limit)."""
    for origin in ORIGINS:
        for row in get(net, origin, "/v1/sync", "admin"):
            addressed = sum(
                1
                for s in [*shares, *revoked]
                if s.origin == origin and row["partner"] in s.partners
            )
            if row["pending"] or row["failing"] or row["delivered"] != addressed:
                return False
    return True


def test_shares_flow_exactly_once_through_latency_limits_and_partitions(
    net: tuple[Network, Star],
) -> None:
    network, star = net
    flow, stop = Flow(), threading.Event()
    threads = [
        threading.Thread(target=keep_sharing, args=(network, o, flow, stop), daemon=True)
        for o in ORIGINS
    ]
    start = time.monotonic()
    for thread in threads:
        thread.start()
    try:
        time.sleep(3)
        early = wait_for(lambda: held_by_all(network, flow), 60,
                         "a share every partner holds before the partition")  # fmt: skip
        star.cut(PARTITIONED)
        cut_at = time.monotonic()
        # Behind the partition: the origin revokes a share the cut-off node holds (it hears of it
        # only once healed), and a share the network's terms forbid is refused.
        revoked = httpx.post(
            f"{network.nodes[early.origin].url}/v1/artifacts/{early.id}/revoke",
            params={"reason": "superseded"},
            headers=network.nodes[early.origin].auth("publisher"),
            timeout=60,
        )
        assert revoked.status_code == 200, revoked.text
        forbidden = try_share(network, US, [UK, CA, JP], tlp="TLP:AMBER")
        assert forbidden.status_code == 403, forbidden.text
        assert forbidden.json()["type"] == "urn:entente:problem:policy-denied", forbidden.text

        # A large artifact to every partner; cut the limited link once a part has crossed it.
        before = star.sent_bytes(LIMITED)
        big = share(network, US, [UK, CA, JP], os.urandom(BIG))
        wait_for(lambda: star.sent_bytes(LIMITED) - before > BIG // 5, 60,
                 "a fifth of the large artifact on the limited link")  # fmt: skip
        in_flight = deliveries(network, big)[LIMITED]
        reset = star.cut(LIMITED)
        assert in_flight["state"] != "delivered", in_flight  # cut mid-transfer
        assert reset > 0, "no connection crossed the limited link when it was cut"
        time.sleep(LINK_CUT_SECONDS)
        star.heal(LIMITED)

        time.sleep(max(0.0, cut_at + PARTITION_SECONDS - time.monotonic()))
        star.heal(PARTITIONED)
        time.sleep(max(0.0, start + FLOW_SECONDS - time.monotonic()))
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=120)
        star.heal(PARTITIONED)
        star.heal(LIMITED)
    assert not flow.errors, flow.errors
    shares = [*flow.shared, big]
    assert len(flow.shared) >= 2 * FLOW_SECONDS / SHARE_EVERY / 4, len(flow.shared)

    wait_for(lambda: settled(network, shares, [early]), SETTLE_SECONDS,
             "every delivery receipted and every outbox drained")  # fmt: skip

    # The revocation reached every partner that held the share, the one behind the partition
    # too: each answers 410 (revoked by its origin), audited once, and the origin has each
    # acknowledgement.
    for partner in early.partners:
        gone = get_status(network, partner, f"/v1/artifacts/{early.id}", "reader")
        assert gone.status_code == 410 and gone.json()["reason"] == "revoked", gone.text
        heard = [e for e in logged(network, partner, "revocation.received", 1)
                 if e["artifact_id"] == early.id]  # fmt: skip
        assert len(heard) == 1, heard
    wait_for(
        lambda: {e["partner"] for e in entries(network, early.origin, "revocation.acknowledged")
                 if e["artifact_id"] == early.id} >= set(early.partners),
        60, "every partner's acknowledgement of the revocation",
    )  # fmt: skip
    # The share the terms forbid was refused for each partner and audited so; it was never
    # stored or queued (settled() above counts exactly the shares made, and each partner's
    # rows below are exactly those addressed to it).
    denied = logged(network, US, "share.denied", 3)
    assert sorted(e["partner"] for e in denied) == sorted([UK, CA, JP]), denied
    assert all(e["rule"] == "net-above-green" for e in denied), denied

    # Each partner received each share addressed to it exactly once, with the origin's digest,
    # and the origin holds its signed receipt (the revoked share: hidden and deleted, above).
    latencies: dict[str, list[float]] = {}
    for partner in IDS:
        expected = {s.id: s for s in shares if partner in s.partners and s.id != early.id}
        rows = received(network, partner)
        ids = [r["id"] for r in rows]
        assert len(ids) == len(set(ids)), "a duplicate row"
        assert set(ids) == set(expected), set(ids) ^ set(expected)
        accepted = [e["artifact_id"] for e in logged(network, partner, "receive.accepted",
                                                     len(expected))]  # fmt: skip
        addressed = sorted(s.id for s in shares if partner in s.partners)  # the revoked one too
        assert sorted(accepted) == addressed, "not one receive.accepted per share"
        for row in rows:
            sent = expected[row["id"]]
            assert (row["sha256"], row["origin"], row["size"]) == (
                sent.sha256, sent.origin, sent.size,
            )  # fmt: skip
            delay = (
                datetime.fromisoformat(row["recorded_at"])
                - datetime.fromisoformat(row["created_at"])
            ).total_seconds()
            kind = "big" if row["id"] == big.id else partner
            latencies.setdefault(kind, []).append(delay)
    for s in shares:
        for partner, d in deliveries(network, s).items():
            assert d["state"] == "delivered" and d["delivered_at"], (s.id, partner, d)
    vias: dict[str, int] = {}
    for origin in ORIGINS:  # one partner-signed receipt recorded per share and partner
        sent = {(s.id, p): s.sha256 for s in shares if s.origin == origin for p in s.partners}
        recorded = logged(network, origin, "receipt.recorded", len(sent))
        assert sorted((e["artifact_id"], e["partner"]) for e in recorded) == sorted(sent)
        for e in recorded:
            detail = json.loads(e["detail"]) if isinstance(e["detail"], str) else e["detail"]
            assert e["actor"] == f"partner:{e['partner']}" and detail["receipt"], e
            assert e["digest"] == sent[(e["artifact_id"], e["partner"])], e
            vias[detail["via"]] = vias.get(detail["via"], 0) + 1

    # The large artifact's plaintext at a partner is what was shared.
    content = httpx.get(
        f"{network.nodes[UK].url}/v1/artifacts/{big.id}/content",
        headers=network.nodes[UK].auth("reader"),
        timeout=120,
    )
    assert hashlib.sha256(content.content).hexdigest() == big.sha256

    report = ["", "delivery latency (recorded at the partner - created at the origin), seconds:"]
    for kind, values in sorted(latencies.items()):
        report.append(
            f"  {kind:8} n={len(values):3}  p50={percentile(values, 50):6.2f}  "
            f"p99={percentile(values, 99):6.2f}  max={max(values):6.2f}"
        )
    small = [v for k, vs in latencies.items() if k != "big" for v in vs]
    report.append(f"  all small n={len(small)} p50={percentile(small, 50):.2f} "
                  f"p99={percentile(small, 99):.2f}; mean={statistics.mean(small):.2f}; "
                  f"delay {'netem' if star.netem else 'relay'}; receipts by {vias}")  # fmt: skip
    print("\n".join(report))


def test_every_audit_log_verifies_with_its_witnesses_consistent(
    net: tuple[Network, Star], tmp_path: Path
) -> None:
    network, _star = net
    for node_id, node in network.nodes.items():

        def verified(node_id: str = node_id, url: str = node.url) -> dict[str, Any] | None:
            result = run_cli(
                "audit", "verify", "--url", url, "--fingerprint", network.fingerprints[node_id],
                "--json", "--require-quorum", "--state", str(tmp_path / f"{node_id}.json"),
                env={**network.nodes[node_id].env,
                     "ENTENTE_TOKEN": network.nodes[node_id].tokens["auditor"]},
                timeout=120, command=COMMAND,
            )  # fmt: skip
            if result.returncode != 0:
                return None
            verdict: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
            return verdict

        verdict = wait_for(verified, 120, f"{node_id}'s log verified with quorum")
        assert verdict["ok"] and verdict["quorum"]["met"], verdict
        # Every partner witnesses (ENTENTE_WITNESS_COUNT 5 > 3); each holds a checkpoint the
        # log is consistent with, none beyond it.
        assert verdict["quorum"]["witnesses"] == len(IDS) - 1
        assert len(verdict["witnessed"]) == len(IDS) - 1, verdict["witnessed"]
        assert all(0 < size <= verdict["entries"] for size in verdict["witnessed"].values())
