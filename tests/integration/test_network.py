"""A network of five real nodes on loopback, built as ``entente network up`` builds it: every
node pins every other through one roster and holds the same adopted multilateral agreement; a
share to all four partners is delivered to and receipted by each independently, also while
one partner is down (the others do not wait for it, and it catches up when back); and every
audit log verifies with its witness quorum met."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.network import Network, network_env, network_ids, prepare_network
from tests.nodes import ENTENTE, PASSPHRASE, SCRYPT_WORK_FACTOR, run_cli

pytestmark = [pytest.mark.integration, pytest.mark.slow]

IDS = network_ids(5)
ORIGIN, ABSENT = IDS[0], IDS[-1]
FINDING = {"title": "Network finding", "tlp": "TLP:GREEN", "topics": ["evaluation"],
           "purposes": ["evaluation"]}  # fmt: skip


def wait_for(check: Callable[[], Any], timeout: float = 60.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Network]:
    env = network_env(
        ENTENTE_PASSPHRASE=PASSPHRASE,
        ENTENTE_SCRYPT_WORK_FACTOR=str(SCRYPT_WORK_FACTOR),
        ENTENTE_LOG_LEVEL="INFO",
        ENTENTE_RETRY_MAX_SECONDS="2",
    )
    network = prepare_network(
        tmp_path_factory.mktemp("net"), IDS, passphrase=PASSPHRASE,
        scrypt_work_factor=SCRYPT_WORK_FACTOR, env=env, command=(ENTENTE,),
    )  # fmt: skip
    network.federation.start()
    yield network
    network.federation.stop()


def share(net: Network, origin: str, partners: list[str], content: bytes) -> str:
    node = net.nodes[origin]
    meta = {**FINDING, "partners": partners}
    r = httpx.post(
        f"{node.url}/v1/artifacts",
        files={"metadata": (None, json.dumps(meta), "application/json"), "file": ("f", content)},
        headers=node.auth("publisher"),
        timeout=60,
    )
    assert r.status_code == 201, r.text
    created: dict[str, Any] = r.json()
    assert sorted(created["recipients"]) == sorted([origin, *partners])  # sealed once to all
    return str(created["id"])


def deliveries(net: Network, origin: str, artifact: str) -> dict[str, dict[str, Any]]:
    node = net.nodes[origin]
    r = httpx.get(f"{node.url}/v1/artifacts/{artifact}", headers=node.auth("auditor"), timeout=30)
    assert r.status_code == 200, r.text
    return {d["partner"]: d for d in r.json()["deliveries"]}


def read(net: Network, node_id: str, artifact: str) -> bytes | None:
    node = net.nodes[node_id]
    r = httpx.get(
        f"{node.url}/v1/artifacts/{artifact}/content", headers=node.auth("reader"), timeout=30
    )
    return r.content if r.status_code == 200 else None


def test_every_node_pins_every_other_and_holds_the_same_adopted_agreement(net: Network) -> None:
    digests = set()
    for node_id, node in net.nodes.items():
        r = httpx.get(f"{node.url}/v1/partners", headers=node.auth("admin"), timeout=30)
        assert r.status_code == 200, r.text
        pinned = {p["node_id"]: p["fingerprint"] for p in r.json()}
        assert pinned == {n: net.fingerprints[n] for n in IDS if n != node_id}
        r = httpx.get(f"{node.url}/v1/admin/agreements", headers=node.auth("admin"), timeout=30)
        assert r.status_code == 200, r.text
        [agreement] = r.json()["agreements"]
        assert agreement["state"] == "adopted" and agreement["awaiting"] == []
        assert sorted(agreement["signed_by"]) == sorted(IDS)
        digests.add(agreement["sha256"])
    assert digests == {net.agreement["sha256"]}


def test_a_share_to_all_is_delivered_and_receipted_by_each_even_with_one_partner_down(
    net: Network,
) -> None:
    partners = [n for n in IDS if n != ORIGIN]
    first = share(net, ORIGIN, partners, b"to every partner\n")
    wait_for(
        lambda: all(d["state"] == "delivered" for d in deliveries(net, ORIGIN, first).values()),
        what="a receipt from every partner",
    )
    assert set(deliveries(net, ORIGIN, first)) == set(partners)
    for partner in partners:
        assert read(net, partner, first) == b"to every partner\n"

    # One partner is down: the others receive and receipt without waiting for it.
    net.nodes[ABSENT].stop()
    second = share(net, ORIGIN, partners, b"while one is down\n")
    present = [p for p in partners if p != ABSENT]
    wait_for(
        lambda: all(deliveries(net, ORIGIN, second)[p]["state"] == "delivered" for p in present),
        what="receipts from the partners that are up",
    )
    for partner in present:
        assert read(net, partner, second) == b"while one is down\n"
    absent = deliveries(net, ORIGIN, second)[ABSENT]
    assert absent["state"] != "delivered", absent

    # Back up, the absent partner catches up (retried push or its pull of the feed).
    net.nodes[ABSENT].start()
    wait_for(
        lambda: deliveries(net, ORIGIN, second)[ABSENT]["state"] == "delivered",
        what="the returning partner's receipt",
    )
    assert read(net, ABSENT, second) == b"while one is down\n"


def test_every_audit_log_verifies_with_its_witness_quorum_met(net: Network, tmp_path: Path) -> None:
    for node_id, node in net.nodes.items():

        def verified(node_id: str = node_id, url: str = node.url) -> dict[str, Any] | None:
            result = run_cli(
                "audit", "verify", "--url", url, "--fingerprint", net.fingerprints[node_id],
                "--json", "--require-quorum", "--state", str(tmp_path / f"{node_id}.json"),
                env={**net.nodes[node_id].env,
                     "ENTENTE_TOKEN": net.nodes[node_id].tokens["auditor"]},
                timeout=120,
            )  # fmt: skip
            if result.returncode != 0:
                return None
            verdict: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
            return verdict

        verdict = wait_for(verified, timeout=120, what=f"{node_id}'s log verified with quorum")
        assert verdict["ok"] and verdict["quorum"]["met"]
        # ENTENTE_WITNESS_COUNT 5 > 4 partners: every partner witnesses, a majority is 3.
        assert verdict["quorum"]["witnesses"] == len(IDS) - 1
        assert verdict["quorum"]["needed"] == 3
        assert verdict["quorum"]["vouching"] >= 3
