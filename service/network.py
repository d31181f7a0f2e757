"""A local network of N nodes, joined the way a real network joins: ``entente network up``, the
integration tests and ``bench/network.py`` all build it here.

:func:`prepare_network` creates N node homes under one folder, then, with the same functions
as the commands an operator would run (each named below), nothing bypassed:

1. **homes** (``entente init``, ``token create``): a home per node with a token per role; no
   node pins any other yet.
2. **roster** (``entente roster create|sign|import``): the first node writes the network's
   roster from the members' signed descriptors (what each member sent it) and signs it; every
   member adds its signature; every node imports it with ``--digest`` (the roster's SHA-256,
   the one value its operator compares out of band). Each node pins the N-1 others in one
   audited transaction, every descriptor checked against the fingerprint the roster names:
   N imports, not N·(N-1) ``partner add``.
3. **terms** (``entente agreement officer-key|certify|draft|sign|adopt``): each node's officer
   gets a key (in ``officers/``, unencrypted: a local network's) and a certificate from its
   node (audited); the first node drafts ONE multilateral agreement whose common terms
   (:data:`NETWORK_TERMS`, or the caller's) apply to every ordered pair of nodes; every
   officer signs it; every node checks the signatures against the keys it pinned and places
   it in its policies, which ``entente serve`` commits at its first start (audited
   ``policy.set_changed``). The nodes run with ``ENTENTE_SIGNED_AGREEMENTS_REQUIRED=true``:
   only what every officer signed grants anything.

:func:`write_state` records the network in ``network.json`` beside the homes (each node's id,
URL, home, fingerprint, tokens file and pid); :func:`stop_network` stops, from that file, the
nodes ``entente network up --keep`` left running.

What it does not do: choose ids for real institutes (the ids are examples), encrypt the
officers' keys, or put nodes anywhere but where ``hosts`` says (loopback by default);
``service/netsim.py`` runs them in network namespaces with latency, bandwidth limits and
partitions.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from crypto.agreement import OfficerCertificate, certify_officer, draft_agreement
from crypto.descriptor import verify_descriptor
from crypto.keys import SigningKey
from crypto.keyset import SignerSet
from crypto.mldsa import MLDSASigningKey
from crypto.roster import Member, Roster, sign_roster
from policies import format_time
from policies._agreement import EVERY, Agreement, Terms
from service.agreements import AGREEMENT_SUFFIX, AgreementKeys
from service.audit.log import record
from service.db import open_database
from service.errors import NodeProcessError
from service.home import Home, create_home
from service.keystore import seal_key, signing_secret
from service.localnet import COMMAND, STOP_SECONDS, Federation, NodeProcess, clean_env
from service.roster import import_roster
from service.settings import Settings
from service.tokens import Role, create_token

__all__ = [
    "MAX_NODES",
    "NETWORK_TERMS",
    "STATE_FILE",
    "Network",
    "network_env",
    "network_ids",
    "prepare_network",
    "read_state",
    "stop_network",
    "write_state",
]

MAX_NODES = 64  # an agreement's parties at most (policies._agreement.MAX_PARTIES)
STATE_FILE = "network.json"
ACTOR = "admin:network"

# Example ids: the members of the International Network of AI Safety Institutes and others
# that might join. They name nodes on this machine only; no institute runs them.
_IDS = (
    "us-aisi", "uk-aisi", "ca-aisi", "jp-aisi", "sg-aisi", "kr-aisi", "fr-aisi", "au-aisi",
    "ke-aisi", "eu-ai-office", "de-aisi", "in-aisi", "it-aisi", "nl-aisi", "se-aisi",
    "ch-aisi", "br-aisi", "ie-aisi", "es-aisi", "nz-aisi",
)  # fmt: skip

# The network's common terms, one policy for every ordered pair of members (``partner: '*'``):
# evaluation findings and safety research up to TLP:GREEN are shared, received and read by
# all; nothing above TLP:AMBER, and no personal data, ever.
NETWORK_TERMS = """\
# EXAMPLE TERMS of a local Entente network (`entente network up`): not the text of any agreement.
format: entente.policy/v1
id: network-common
version: 1
mou: Local network common terms [example]
partner: '*'
valid_from: 2025-01-01
valid_until: 2035-12-31
approved_by:
  - name: The members' policy officers [example]
    role: Policy officer of each member
    date: 2025-01-01
description: >-
  Every member shares evaluation findings and safety research up to TLP:GREEN with every other.

permit:
  - id: net-share
    clause: Network terms §1 [example]
    description: Share evaluation findings and safety research with every member
    actions: [share]
    tlp: [TLP:CLEAR, TLP:GREEN]
    topics: [evaluation, safety-research]
    purposes: [evaluation, research]
    obligations:
      attribute: the originating member

  - id: net-receive
    clause: Network terms §2 [example]
    description: Accept what every member shares under §1
    actions: [receive]
    tlp: [TLP:CLEAR, TLP:GREEN]
    topics: [evaluation, safety-research]
    purposes: [evaluation, research]

  - id: net-read
    clause: Network terms §3 [example]
    description: Staff of a member may open what it received under §2
    actions: [read]
    tlp: [TLP:CLEAR, TLP:GREEN]
    topics: [evaluation, safety-research]
    purposes: [evaluation, research]

forbid:
  - id: net-above-green
    clause: Network terms §4 [example]
    description: TLP:AMBER and above stay within bilateral agreements
    actions: [share, receive, onward_share]
    tlp: [TLP:AMBER, TLP:AMBER+STRICT, TLP:RED]

  - id: net-no-personal-data
    clause: Network terms §5 [example]
    description: No personal data crosses the network
    actions: [share, receive, onward_share]
    topics: [personal-data]
"""


def network_ids(count: int) -> list[str]:
    """``count`` node ids: the example institutes first, then ``node-21``, ``node-22`` …"""
    if not 2 <= count <= MAX_NODES:
        raise ValueError(f"a network has 2 to {MAX_NODES} nodes")
    return [*_IDS[:count], *(f"node-{i:02d}" for i in range(len(_IDS) + 1, count + 1))]


def network_env(**extra: str) -> dict[str, str]:
    """Small per-node resources (one server process, few threads) so that 20 nodes share two
    cores, the demo's short intervals (witnessing every 10 s), and signed terms only; then
    ``extra``."""
    defaults = {
        "ENTENTE_WORKERS": "1",
        "ENTENTE_BODY_WORKER_THREADS": "2",
        "ENTENTE_BLOB_FSYNC_THREADS": "1",
        "ENTENTE_LOG_LEVEL": "WARNING",
        # a commit rings the delivery worker (service.doorbell): the poll is only the fallback,
        # and polling five times a second was half of an idle node's CPU
        "ENTENTE_SYNC_INTERVAL_SECONDS": "1.0",
        "ENTENTE_RETRY_BASE_SECONDS": "0.5",
        "ENTENTE_RETRY_MAX_SECONDS": "5",
        "ENTENTE_CHECKPOINT_INTERVAL_SECONDS": "2",
        # the witnesses asked every 10 s, not at every checkpoint: in a busy network witnessing
        # cost more than the deliveries (docs/performance.md, "Witnessing by the second")
        "ENTENTE_WITNESS_INTERVAL_SECONDS": "10",
        "ENTENTE_SIGNED_AGREEMENTS_REQUIRED": "true",
    }
    return clean_env(**{**defaults, **extra})


@dataclass
class Network:
    """Nodes that joined one network through its roster and adopted its signed terms."""

    root: Path
    name: str
    federation: Federation
    fingerprints: dict[str, str]  # node id -> fingerprint
    roster_sha256: str
    agreement: dict[str, Any]  # id, version, sha256

    @property
    def nodes(self) -> dict[str, NodeProcess]:
        return self.federation.nodes

    def tokens_file(self, node_id: str) -> Path:
        return self.root / f"{node_id}.tokens.json"


def _settings(home: Path, passphrase: str | None, work_factor: int) -> Settings:
    return Settings(
        home=home,
        passphrase=passphrase,
        insecure_no_passphrase=passphrase is None,
        scrypt_work_factor=work_factor,
    )


def _db_url(home: Home) -> str:
    return f"sqlite:///{home.path / 'entente.db'}"


def prepare_network(
    root: Path,
    node_ids: Sequence[str],
    *,
    name: str = "local-network",
    terms: str = NETWORK_TERMS,
    passphrase: str | None = None,
    scrypt_work_factor: int = 18,
    env: Mapping[str, str] | None = None,
    command: tuple[str, ...] = COMMAND,
    detached: bool = False,
    hosts: Mapping[str, str] | None = None,
) -> Network:
    """Homes under ``root`` joined through one roster and one signed agreement (the module's
    steps 1 to 3); no process is started. Each node runs ``command`` with ``env`` (default:
    :func:`network_env`). With ``passphrase=None`` the key files are stored unencrypted.
    ``hosts`` gives a node's URL another address than ``127.0.0.1`` (a network namespace's)."""
    if len(set(node_ids)) != len(node_ids) or not 2 <= len(node_ids) <= MAX_NODES:
        raise ValueError(f"a network has 2 to {MAX_NODES} different nodes")
    root.mkdir(parents=True, exist_ok=True)
    now = datetime.now(UTC)
    settings = {n: _settings(root / n, passphrase, scrypt_work_factor) for n in node_ids}
    nodes = {
        n: NodeProcess(root / n, n, env=dict(env or network_env()), command=command,
                       detached=detached, host=(hosts or {}).get(n, "127.0.0.1"))
        for n in node_ids
    }  # fmt: skip
    homes = {
        n: create_home(settings[n], path=root / n, node_id=n, name=n.upper(),
                       url=nodes[n].url, now=now)
        for n in node_ids
    }  # fmt: skip
    for n, home in homes.items():
        nodes[n].tokens = _tokens(home, now)
        path = root / f"{n}.tokens.json"
        path.write_text(json.dumps(nodes[n].tokens, indent=2) + "\n")
        path.chmod(0o600)
    roster = _join_roster(root, name, homes, settings, now)
    agreement = _agree(root, name, terms, homes, settings, now)
    network = Network(
        root,
        name,
        Federation(nodes),
        {n: h.fingerprint for n, h in homes.items()},
        roster,
        agreement,
    )
    write_state(network)
    return network


def _tokens(home: Home, now: datetime) -> dict[str, str]:
    """``entente token create`` for each role (audited)."""
    db = open_database(_db_url(home), migrate=True)
    try:
        with db.session() as session:
            return {
                role.value: create_token(
                    session, role=role, name=f"{role.value}@{home.node_id}", now=now, actor=ACTOR
                )[1]
                for role in Role
            }
    finally:
        db.dispose()


def _join_roster(
    root: Path,
    name: str,
    homes: Mapping[str, Home],
    settings: Mapping[str, Settings],
    now: datetime,
) -> str:
    """Step 2: the first node's roster, signed by every member, imported by every node with
    the roster's digest; the roster's SHA-256."""
    members = tuple(
        Member(n, h.fingerprint, json.loads(h.descriptor_envelope().to_bytes()))
        for n, h in homes.items()
    )
    roster = Roster(name, 1, now, members)
    signers = {n: h.unlock(settings[n]) for n, h in homes.items()}
    first, *others = homes
    envelope = sign_roster(roster, signers[first].signer)  # `roster create` by the first
    for n in others:  # `roster sign` by every other member
        envelope = sign_roster(roster, signers[n].signer, onto=envelope)
    (root / "roster.json").write_text(
        json.dumps(envelope.to_json(), indent=2, sort_keys=True) + "\n"
    )
    raw = json.dumps(envelope.to_json()).encode()
    for n, home in homes.items():  # `roster import --digest SHA256` at every node
        db = open_database(_db_url(home), migrate=True)
        try:
            with db.session() as session:
                done = import_roster(
                    session, raw, node_id=n, own_keysets=signers[n].keysets, now=now,
                    actor=ACTOR, digest=roster.sha256,
                )  # fmt: skip
        finally:
            db.dispose()
        if len(done.added) != len(homes) - 1:
            raise NodeProcessError(f"{n} pinned {done.added} from the roster, not every member")
    return roster.sha256


def _agree(
    root: Path,
    name: str,
    terms: str,
    homes: Mapping[str, Home],
    settings: Mapping[str, Settings],
    now: datetime,
) -> dict[str, Any]:
    """Step 3: officers certified by their nodes sign one agreement with common terms; every
    node checks it against its pinned keys and places it in its policies."""
    folder = root / "officers"
    folder.mkdir(exist_ok=True)
    ids = tuple(sorted(homes))
    agreement = Agreement(
        f"{name}-terms",
        1,
        f"Common terms of {name} [example]",
        ids,
        (now - timedelta(minutes=1)).replace(microsecond=0),
        (Terms(EVERY, EVERY, "network.yaml", terms),),
    )
    signed = draft_agreement(agreement.payload())
    for n, home in homes.items():
        ed25519, mldsa = SigningKey.generate(), MLDSASigningKey.generate()
        officer = SignerSet(ed25519, mldsa)
        key = folder / f"{n}-officer.key"  # `entente agreement officer-key --no-passphrase`
        key.write_bytes(seal_key(signing_secret(ed25519, mldsa), None, 18))
        key.chmod(0o600)
        cert = OfficerCertificate(n, f"Officer of {n}", "Policy officer [example]",
                                  officer.public, now, now + timedelta(days=730))  # fmt: skip
        envelope = certify_officer(cert, node=home.unlock(settings[n]).signer)  # `certify`
        (folder / f"{n}-officer.cert.json").write_bytes(envelope.to_bytes())
        db = open_database(_db_url(home))
        try:
            with db.session() as session:
                record(session, kind="agreement.officer_certified", actor=ACTOR,
                       detail={"officer": cert.name, "role": cert.role,
                               "fingerprint": cert.fingerprint,
                               "expires": format_time(cert.expires)}, now=now)  # fmt: skip
        finally:
            db.dispose()
        signed = signed.with_signature(officer, envelope)  # `entente agreement sign`
    raw = signed.to_bytes()
    filename = f"{agreement.id}{AGREEMENT_SUFFIX}"
    (root / filename).write_bytes(raw)
    for n, home in homes.items():  # `entente agreement adopt`
        descriptor = verify_descriptor(home.descriptor_envelope(), now=now)
        db = open_database(_db_url(home))
        try:
            held = AgreementKeys(n, [descriptor.keyset], db).held(
                filename, raw, now=now, strict=True
            )
        finally:
            db.dispose()
        if held is None or set(held.signed_by) != set(ids):
            raise NodeProcessError(f"{n} does not find the agreement signed by every member")
        (home.policies_dir / filename).write_bytes(raw)
    return {"id": agreement.id, "version": agreement.version, "sha256": agreement.sha256}


def write_state(network: Network) -> Path:
    """``network.json``: what ``entente network down`` and a person need to find the nodes."""
    path = network.root / STATE_FILE
    state = {
        "network": network.name,
        "roster_sha256": network.roster_sha256,
        "agreement": network.agreement,
        "nodes": [
            {
                "node_id": n,
                "url": node.url,
                "home": str(node.home),
                "fingerprint": network.fingerprints[n],
                "tokens_file": str(network.tokens_file(n)),
                "log": str(node.log_path or node.home.parent / f"{n}.log"),
                "pid": node.proc.pid if node.proc is not None else None,
            }
            for n, node in network.nodes.items()
        ],
    }
    path.write_text(json.dumps(state, indent=2) + "\n")
    return path


def read_state(root: Path) -> dict[str, Any]:
    try:
        state: dict[str, Any] = json.loads((root / STATE_FILE).read_text())
    except (OSError, ValueError) as exc:
        raise NodeProcessError(f"no network state in {root / STATE_FILE}: {exc}") from None
    return state


def _serves(pid: int, home: str) -> bool:
    """Whether ``pid`` is still the ``entente serve`` of ``home`` (a pid may be reused)."""
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    if stat.rsplit(")", 1)[1].split()[0] == "Z":
        return False
    return b"serve" in args and os.fsencode(home) in args


def stop_network(root: Path, *, timeout: float = STOP_SECONDS) -> dict[str, str]:
    """SIGTERM every node of ``root``'s ``network.json`` still running, wait, then SIGKILL
    what remains; node id -> what happened to it."""
    nodes = read_state(root)["nodes"]
    out: dict[str, str] = {}
    running: dict[str, tuple[int, str]] = {}
    for node in nodes:
        pid, home = node.get("pid"), str(node.get("home"))
        if isinstance(pid, int) and _serves(pid, home):
            os.kill(pid, signal.SIGTERM)
            running[node["node_id"]] = (pid, home)
        else:
            out[node["node_id"]] = "not running"
    deadline = time.monotonic() + timeout
    while running and time.monotonic() < deadline:
        for n, (pid, home) in list(running.items()):
            if not _serves(pid, home):
                out[n] = "stopped"
                del running[n]
        time.sleep(0.1)
    for n, (pid, _home) in running.items():
        os.kill(pid, signal.SIGKILL)
        out[n] = "killed"
    return out
