"""Nodes in their own network namespaces, joined in a star through a hub, with the conditions of
a wide-area network: latency, jitter and loss per link, a bandwidth limit, partitions cut and
healed. For tests (``tests/integration/test_netns*.py``) and benchmarks (``bench/network.py
--netns``); Linux, root.

The topology (``ip netns``, veth pairs, a Linux bridge; Linux, root):

- a hub namespace ``ent-hub-<rand>`` holds a bridge;
- each node gets a namespace ``ent-<node id>-<rand>`` with ``lo`` up and one veth pair to the
  bridge, its address ``10.77.X.N/24`` (X a free /24 picked per star, N = 1, 2, ...);
- this (the test's) namespace joins the bridge too, as ``10.77.X.250``, to reach the nodes
  as an operator would (its traffic crosses the node's link, so a cut node is out of reach).

Each node's descriptor URL is ``http://10.77.X.N:PORT``; its ``entente serve`` runs INSIDE its
namespace (``ip netns exec``), started through :class:`service.localnet.NodeProcess`.

What is emulated, and how:

- **Latency.** Each node's link to the hub has a one-way delay; a path between two nodes adds
  both links'. At :meth:`Star.up` the helper tries ``tc qdisc add ... netem delay``: where the
  kernel has netem, both ends of each veth delay by the link's delay (netem, with ``tbf`` below
  it for a limited link). This machine's kernel is built without netem (``CONFIG_NET_SCH_NETEM``
  unset), so otherwise the delay is in userspace: the node serves on loopback inside its
  namespace and a relay (``service/netsim_relay.py``, asyncio) listens on its URL's address,
  holding each chunk, both ways, for the path's one-way delay (chosen by the peer's address).
  Only the latency is in userspace; the bandwidth limit and the cuts stay in the kernel.
- **Bandwidth.** ``tc qdisc add dev VETH root tbf rate R burst 32kbit latency 400ms`` on both
  ends of a limited link.
- **Loss.** ``Link(loss_percent=P)``: an nftables table in the node's namespace drops each
  packet crossing its veth, either way, with probability P % (``numgen random``): real loss in
  the kernel, which TCP repairs by retransmitting (a lost segment costs a retransmission
  timeout, so loss shows as stalls of 200 ms and more). Needs ``nft`` (Debian's nftables).
- **Jitter.** ``Link(jitter_ms=J)``: the relay holds each chunk for the path's delay plus a
  uniform extra of up to both links' J, never releasing a chunk before the one ahead of it
  (TCP keeps order); netem's own jitter where the kernel has netem.
- **Partitions.** :meth:`Star.cut` first resets every relayed connection that touches the node
  (a link that fails mid-transfer loses its connections), then takes the hub's end of its veth
  down (``ip link set ... down``): nothing crosses until :meth:`Star.heal` brings it up.

:meth:`Star.down` (a finalizer: it runs when the test fails too) stops the processes it started
and deletes every namespace, which deletes the veths and the bridge with them. Node processes
and relays also end with the test process (``PR_SET_PDEATHSIG``); should the test process be
killed before its finalizer runs, the next :meth:`Star.up` deletes the namespaces it left
(``/run/entente-netns`` names each star's namespaces and its owner's pid).

What it does not do: reordering, duplication or corruption, routing between subnets, IPv6.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from service.localnet import NodeProcess

__all__ = ["RELAY", "Link", "Star", "missing_for_namespaces", "sweep_stale"]

RELAY = Path(__file__).with_name("netsim_relay.py")
TBF_BURST = "32kbit"  # tbf's bucket
TBF_LATENCY = "400ms"  # the longest a packet may wait in tbf's queue
CONTROL_ADDRESS = 250  # this namespace's host number on the bridge
COMMAND_SECONDS = 30.0  # one `ip` or `tc` command
REGISTRY = Path("/run/entente-netns")  # <tag>.json per star: its owner's pid, its namespaces


@dataclass(frozen=True)
class Link:
    """A node's link to the hub."""

    delay_ms: float = 0.0  # one way; a path between two nodes adds both links'
    rate: str | None = None  # tbf rate, e.g. "2mbit"; None: unlimited
    jitter_ms: float = 0.0  # up to this much more, uniformly, on each chunk (each way)
    loss_percent: float = 0.0  # packets dropped on this link, each way (nftables)


def missing_for_namespaces(*, loss: bool = False) -> tuple[str, str] | None:
    """What this machine lacks to build a :class:`Star` (what, and how to get it), or None:
    root, ``ip`` and ``tc`` (iproute2), and ``nft`` (nftables) when links lose packets."""
    if os.geteuid() != 0:
        return "root (network namespaces)", "run as root"
    tools = {"ip": "iproute2", "tc": "iproute2", **({"nft": "nftables"} if loss else {})}
    for tool, package in tools.items():
        if shutil.which(tool) is None:
            return f"the {tool!r} command", f"install it with: apt-get install {package}"
    return None


def _tool(name: str) -> str:
    """The absolute path of a system command (``ip``, ``tc``, ``nft``) this module runs."""
    path = shutil.which(name)
    if path is None:
        raise RuntimeError(f"the {name!r} command is not installed")
    return path


def _run(
    *args: str, check: bool = True, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(  # noqa: S603 - fixed iproute2/nft commands, no shell
        list(args), input=stdin, capture_output=True, text=True, timeout=COMMAND_SECONDS,
        check=False,
    )  # fmt: skip
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed: {result.stderr.strip()}")
    return result


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _delete_namespaces(namespaces: list[str]) -> None:
    """Kill whatever runs in each namespace, then delete it (and so its veths, its bridge)."""
    for namespace in namespaces:
        pids = _run("ip", "netns", "pids", namespace, check=False).stdout.split()
        for pid in pids:
            with contextlib.suppress(OSError, ValueError):
                os.kill(int(pid), signal.SIGKILL)
        deadline = time.monotonic() + 10
        while pids and time.monotonic() < deadline:
            pids = _run("ip", "netns", "pids", namespace, check=False).stdout.split()
            time.sleep(0.05)
        _run("ip", "netns", "del", namespace, check=False)


def sweep_stale() -> list[str]:
    """Delete the namespaces of stars whose owner died without cleaning up (a killed test
    run); the namespaces deleted."""
    deleted: list[str] = []
    for entry in sorted(REGISTRY.glob("*.json")) if REGISTRY.is_dir() else []:
        try:
            record = json.loads(entry.read_text())
        except (OSError, ValueError):
            continue
        if _alive(int(record.get("pid", 0))):
            continue
        namespaces = [str(n) for n in record.get("namespaces", [])]
        _delete_namespaces(namespaces)
        deleted += namespaces
        entry.unlink(missing_ok=True)
    return deleted


def _free_subnet() -> int:
    """A third octet X such that no route of this namespace names 10.77.X.0/24."""
    routes = _run("ip", "-4", "route", "show").stdout
    used = {int(part.split(".")[2]) for part in routes.split() if part.startswith("10.77.")}
    free = [x for x in range(1, 250) if x not in used]
    if not free:
        raise RuntimeError("no free 10.77.X.0/24 on this machine")
    return secrets.choice(free)


@dataclass
class _Place:
    node_id: str
    namespace: str
    address: str
    node_veth: str  # inside the node's namespace
    hub_veth: str  # inside the hub's
    link: Link
    relay: subprocess.Popen[str] | None = None
    control: Path | None = None  # the relay's control socket


@dataclass
class Star:
    """Namespaces for ``links``' nodes around a hub; see the module docstring."""

    links: dict[str, Link]
    workdir: Path
    tag: str = field(default_factory=lambda: secrets.token_hex(3))
    netem: bool = False  # whether the kernel delays (netem) or the relays do
    subnet: int = 0
    hub: str = ""
    places: dict[str, _Place] = field(default_factory=dict)
    _root_veth: str = ""

    # --- building -------------------------------------------------------------------------------
    def up(self) -> None:
        """Create the hub, a namespace and link per node, and this namespace's link; on any
        failure undo what was made and raise."""
        try:
            self._build()
        except BaseException:
            self.down()
            raise

    @property
    def _record(self) -> Path:
        return REGISTRY / f"{self.tag}.json"

    def _build(self) -> None:
        sweep_stale()
        self.hub = f"ent-hub-{self.tag}"
        namespaces = [self.hub, *(f"ent-{node_id}-{self.tag}" for node_id in self.links)]
        REGISTRY.mkdir(parents=True, exist_ok=True)
        self._record.write_text(json.dumps({"pid": os.getpid(), "namespaces": namespaces}))
        self.subnet = _free_subnet()
        _run("ip", "netns", "add", self.hub)
        _run("ip", "-n", self.hub, "link", "set", "lo", "up")
        _run("ip", "-n", self.hub, "link", "add", "br0", "type", "bridge")
        _run("ip", "-n", self.hub, "link", "set", "br0", "up")
        for number, (node_id, link) in enumerate(self.links.items(), start=1):
            place = _Place(
                node_id,
                f"ent-{node_id}-{self.tag}",
                f"10.77.{self.subnet}.{number}",
                f"v{self.tag}{number}n",
                f"v{self.tag}{number}h",
                link,
            )
            self.places[node_id] = place
            _run("ip", "netns", "add", place.namespace)
            _run("ip", "-n", place.namespace, "link", "set", "lo", "up")
            _run(
                "ip", "link", "add", place.node_veth, "netns", place.namespace, "type", "veth",
                "peer", "name", place.hub_veth, "netns", self.hub,
            )  # fmt: skip
            _run("ip", "-n", self.hub, "link", "set", place.hub_veth, "master", "br0", "up")
            _run("ip", "-n", place.namespace, "addr", "add", f"{place.address}/24",
                 "dev", place.node_veth)  # fmt: skip
            _run("ip", "-n", place.namespace, "link", "set", place.node_veth, "up")
        self._root_veth = f"v{self.tag}0r"
        _run("ip", "link", "add", self._root_veth, "type", "veth", "peer", "name",
             f"v{self.tag}0h", "netns", self.hub)  # fmt: skip
        _run("ip", "-n", self.hub, "link", "set", f"v{self.tag}0h", "master", "br0", "up")
        _run("ip", "addr", "add", f"{self.control_address}/24", "dev", self._root_veth)
        _run("ip", "link", "set", self._root_veth, "up")
        self.netem = self._kernel_has_netem()
        for place in self.places.values():
            self._shape(place)

    @property
    def control_address(self) -> str:
        return f"10.77.{self.subnet}.{CONTROL_ADDRESS}"

    def _kernel_has_netem(self) -> bool:
        """Try netem on one veth (and remove it): the kernel's delay where it exists."""
        veth = next(iter(self.places.values())).hub_veth
        tried = _run("tc", "-n", self.hub, "qdisc", "add", "dev", veth, "root", "netem",
                     "delay", "50ms", check=False)  # fmt: skip
        if tried.returncode != 0:
            return False
        _run("tc", "-n", self.hub, "qdisc", "del", "dev", veth, "root")
        return True

    def _shape(self, place: _Place) -> None:
        """Both ends of the node's veth: netem's delay and jitter (when the kernel has it),
        tbf's rate; then the link's loss."""
        link = place.link
        for namespace, veth in ((self.hub, place.hub_veth), (place.namespace, place.node_veth)):
            parent = ["root"]
            if self.netem and link.delay_ms > 0:
                jitter = [f"{link.jitter_ms}ms"] if link.jitter_ms > 0 else []
                _run("tc", "-n", namespace, "qdisc", "add", "dev", veth, "root", "handle", "1:",
                     "netem", "delay", f"{link.delay_ms}ms", *jitter)  # fmt: skip
                parent = ["parent", "1:1"]
            if link.rate is not None:
                tbf = ("tbf", "rate", link.rate, "burst", TBF_BURST, "latency", TBF_LATENCY)
                _run("tc", "-n", namespace, "qdisc", "add", "dev", veth, *parent, *tbf)
        if link.loss_percent > 0:
            self._lose(place)

    def _lose(self, place: _Place) -> None:
        """An nftables table in the node's namespace dropping ``loss_percent`` % of the packets
        that cross its veth, in and out (the node's loopback, relay to server, is spared)."""
        per_million = round(place.link.loss_percent * 10_000)
        if not 0 < per_million <= 1_000_000:
            raise ValueError(f"{place.node_id}: loss_percent must be in (0, 100]")
        drop = f"numgen random mod 1000000 < {per_million} counter drop"
        rules = "\n".join(
            [
                "table inet entente_loss {",
                "  chain input { type filter hook input priority 0; policy accept;",
                f'    iifname "{place.node_veth}" {drop}',
                "  }",
                "  chain output { type filter hook output priority 0; policy accept;",
                f'    oifname "{place.node_veth}" {drop}',
                "  }",
                "}",
            ]
        )
        _run("ip", "netns", "exec", place.namespace, "nft", "-f", "-", stdin=rules)

    def dropped(self, node_id: str) -> int:
        """Packets the loss rules of ``node_id``'s link have dropped (both ways)."""
        place = self.places[node_id]
        if place.link.loss_percent <= 0:
            return 0  # no loss rules on this link
        listed = _run("ip", "netns", "exec", place.namespace, "nft", "-j", "list", "table",
                      "inet", "entente_loss").stdout  # fmt: skip
        total = 0
        for item in json.loads(listed).get("nftables", []):
            for expr in item.get("rule", {}).get("expr", []):
                total += int(expr.get("counter", {}).get("packets", 0))
        return total

    # --- nodes ----------------------------------------------------------------------------------
    def address(self, node_id: str) -> str:
        return self.places[node_id].address

    @property
    def hosts(self) -> dict[str, str]:
        """node id -> the address in its URL (``prepare_network(hosts=...)``)."""
        return {node_id: place.address for node_id, place in self.places.items()}

    def one_way_ms(self, a: str, b: str) -> float:
        return self.links[a].delay_ms + self.links[b].delay_ms

    def place(self, node: NodeProcess) -> None:
        """Run ``node`` in its namespace: through ``ip netns exec``, serving on its URL's address
        (netem) or on loopback behind a relay on that address (started here, now)."""
        place = self.places[node.node_id]
        if node.host != place.address:
            raise ValueError(f"{node.node_id}'s URL names {node.host}, not {place.address}")
        node.launcher = ("ip", "netns", "exec", place.namespace)
        if self.netem:
            return
        node.listen_host = "127.0.0.1"
        others = [other for other in self.places.values() if other.node_id != node.node_id]
        delays = {other.address: self.one_way_ms(node.node_id, other.node_id) for other in others}
        jitters = {other.address: place.link.jitter_ms + other.link.jitter_ms for other in others}
        place.control = self.workdir / f"relay-{self.tag}-{node.node_id}.sock"
        with open(self.workdir / f"relay-{node.node_id}.log", "ab") as log:  # the child keeps it
            place.relay = self._start_relay(place, node.port, delays, jitters, log)
        if place.relay.stdout is None:  # pragma: no cover - stdout=PIPE
            raise RuntimeError("the relay has no stdout")
        line = place.relay.stdout.readline()  # "ready" once listening (EOF if it died)
        if line.strip() != "ready":
            raise RuntimeError(f"the relay of {node.node_id} did not start: see the relay log")

    def _start_relay(
        self,
        place: _Place,
        port: int,
        delays: dict[str, float],
        jitters: dict[str, float],
        log: IO[bytes],
    ) -> subprocess.Popen[str]:
        if place.control is None:  # pragma: no cover - place() sets it first
            raise RuntimeError("the relay needs a control socket")
        return subprocess.Popen(  # noqa: S603 - our own script, fixed arguments
            [
                _tool("ip"), "netns", "exec", place.namespace, sys.executable, str(RELAY),
                "--listen", f"{place.address}:{port}",
                "--target", f"127.0.0.1:{port}",
                "--delays", json.dumps(delays),
                "--default-ms", str(place.link.delay_ms),
                "--jitters", json.dumps(jitters),
                "--default-jitter-ms", str(place.link.jitter_ms),
                "--control", str(place.control),
                "--parent", str(os.getpid()),
            ],
            stdout=subprocess.PIPE,
            stderr=log,
            stdin=subprocess.DEVNULL,
            text=True,
        )  # fmt: skip

    # --- conditions -----------------------------------------------------------------------------
    def reset(self, node_id: str) -> int:
        """Reset every relayed connection that touches ``node_id`` (none where netem delays);
        how many sockets were reset."""
        address = self.places[node_id].address
        count = 0
        for place in self.places.values():
            if place.control is None or place.relay is None or place.relay.poll() is not None:
                continue
            peer = "*" if place.node_id == node_id else address
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(COMMAND_SECONDS)
                s.connect(str(place.control))
                s.sendall(f"reset {peer}\n".encode())
                answer = s.makefile().readline().split()
            if answer[:1] != ["ok"]:
                raise RuntimeError(f"the relay of {place.node_id} answered {answer}")
            count += int(answer[1])
        return count

    def cut(self, node_id: str) -> int:
        """Partition ``node_id`` from everyone: its connections reset, its link down; how many
        sockets were reset."""
        count = self.reset(node_id)
        _run("ip", "-n", self.hub, "link", "set", self.places[node_id].hub_veth, "down")
        return count

    def heal(self, node_id: str) -> None:
        _run("ip", "-n", self.hub, "link", "set", self.places[node_id].hub_veth, "up")

    def sent_bytes(self, node_id: str) -> int:
        """Bytes the hub has sent down ``node_id``'s link (its veth counters)."""
        veth = self.places[node_id].hub_veth
        path = f"/sys/class/net/{veth}/statistics/tx_bytes"
        out = _run("ip", "netns", "exec", self.hub, "cat", path).stdout
        return int(out.strip())

    # --- cleaning up ----------------------------------------------------------------------------
    def down(self) -> None:
        """Stop the relays, kill what still runs in the namespaces, delete them (and so every
        veth and the bridge). Safe to call twice and after a partial :meth:`up`."""
        for place in self.places.values():
            if place.relay is not None and place.relay.poll() is None:
                place.relay.terminate()
                try:
                    place.relay.wait(10)
                except subprocess.TimeoutExpired:
                    place.relay.kill()
                    place.relay.wait()
            if place.relay is not None and place.relay.stdout is not None:
                place.relay.stdout.close()
            if place.control is not None:
                place.control.unlink(missing_ok=True)
        namespaces = [*(p.namespace for p in self.places.values()), self.hub]
        _delete_namespaces([n for n in namespaces if n])
        if self._root_veth:
            _run("ip", "link", "del", self._root_veth, check=False)  # gone with the hub already
        self._record.unlink(missing_ok=True)
