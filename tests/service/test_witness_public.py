"""This node as a C2SP tlog-witness for a log that is no partner's (``POST
/witness/v1/add-checkpoint``): no HTTP authentication, the checkpoint's signature by a key in
ENTENTE_WITNESSED_LOGS_FILE authenticates it; the spec's answers, evidence of a fork kept, every
refusal in the audit log. On SQLite and PostgreSQL (``db_url``)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from sqlmodel import select

from crypto import merkle
from crypto.keys import SigningKey
from crypto.note import (
    AddCheckpointRequest,
    Checkpoint,
    NoteSigner,
    parse_signature_lines,
    sign_checkpoint,
    verify_cosignature,
)
from service.app import create_app
from service.audit.models import WitnessEvidence, WitnessLog
from service.audit.witness import witness_cosigner
from service.audit.witness_public import WITNESS_LOG_OWNER, witnessed_logs
from service.node import Node
from tests.service.audit_fixtures import make_node

ORIGIN = "example.org/transparency/log-1"
URL = "/witness/v1/add-checkpoint"


@dataclass
class Log:
    """A transparency log of someone else's: its key and its leaves."""

    signer: NoteSigner
    leaves: list[bytes]

    def request(self, old: int, size: int, *, signer: NoteSigner | None = None) -> bytes:
        store = merkle.MemoryHashStore(self.leaves[:size])
        root = merkle.root_from_leaf_hashes(self.leaves[:size])
        note = sign_checkpoint(Checkpoint(ORIGIN, size, root), signer=signer or self.signer)
        proof = merkle.consistency_proof(old, size, store) if 0 < old < size else []
        return AddCheckpointRequest(old, tuple(proof), note).to_bytes()


@dataclass
class Witness:
    node: Node
    client: httpx.AsyncClient
    logs_file: Path


@pytest.fixture
def log() -> Log:
    leaves = [merkle.leaf_hash(f"entry {i}".encode()) for i in range(12)]
    return Log(NoteSigner(ORIGIN, SigningKey.generate()), leaves)


@pytest.fixture
def witness(tmp_path: Path, db_url: str, log: Log) -> Iterator[Witness]:
    logs_file = tmp_path / "witnessed-logs"
    logs_file.write_text(f"# logs we witness for anyone\n\n{log.signer.verifier.vkey}\n")
    node = make_node(tmp_path, "us-aisi", db_url)
    node.settings = node.settings.model_copy(update={"witnessed_logs_file": logs_file})
    transport = httpx.ASGITransport(app=create_app(node), client=("203.0.113.5", 40000))
    yield Witness(
        node, httpx.AsyncClient(transport=transport, base_url="http://us-aisi"), logs_file
    )
    node.db.dispose()


def _problem(r: httpx.Response, status: int) -> dict[str, object]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json"), r.headers
    body: dict[str, object] = r.json()
    return body


async def test_a_listed_log_is_cosigned_and_followed(witness: Witness, log: Log) -> None:
    r = await witness.client.post(URL, content=log.request(0, 3))
    assert r.status_code == 200, r.text
    (line,) = parse_signature_lines(r.text)
    verifier = witness_cosigner(witness.node).verifier
    checkpoint = Checkpoint(ORIGIN, 3, merkle.root_from_leaf_hashes(log.leaves[:3]))
    assert verify_cosignature(checkpoint, line, verifier=verifier) > 0

    r = await witness.client.post(URL, content=log.request(3, 8))  # grows, with a proof from 3
    assert r.status_code == 200, r.text
    with witness.node.db.session() as session:
        state = session.get(WitnessLog, ORIGIN)
        assert state is not None and state.size == 8 and state.partner == WITNESS_LOG_OWNER

    # A client that believes the witness holds size 3: the spec's 409, the held size as body.
    r = await witness.client.post(URL, content=log.request(3, 10))
    assert r.status_code == 409
    assert r.headers["content-type"] == "text/x.tlog.size" and r.text == "8\n"

    # The held checkpoint is published, freshly cosigned, as for partners' logs.
    held = await witness.client.get("/witness/v1/checkpoint", params={"origin": ORIGIN})
    assert held.status_code == 200 and held.text.startswith(f"{ORIGIN}\n8\n")


async def test_refusals_are_the_specs_and_audited(witness: Witness, log: Log) -> None:
    stranger = NoteSigner(ORIGIN, SigningKey.generate())  # the right origin, another key
    other = Log(NoteSigner("example.org/not-listed", SigningKey.generate()), log.leaves)
    other_body = AddCheckpointRequest(
        0, (), sign_checkpoint(Checkpoint("example.org/not-listed", 2, log.leaves[0]),
                               signer=other.signer)
    ).to_bytes()  # fmt: skip
    assert "does not follow" in str(
        _problem(await witness.client.post(URL, content=other_body), 404)
    )
    forged = log.request(0, 3, signer=stranger)
    assert "not signed by the log's key" in str(
        _problem(await witness.client.post(URL, content=forged), 403)
    )
    _problem(await witness.client.post(URL, content=b"old 1\n\nnot a note"), 422)
    _problem(await witness.client.post(URL, content=b""), 422)
    assert (await witness.client.post(URL, content=log.request(0, 4))).status_code == 200
    over = log.request(0, 4).replace(b"old 0\n", b"old 9\n", 1)
    _problem(await witness.client.post(URL, content=over), 400)

    # Each refusal is in the witness's audit log (anonymous ones summarised per source).
    with witness.node.db.engine.connect() as conn:
        rows = conn.execute(
            sa.text("SELECT kind, actor, detail FROM audit_entries WHERE kind = 'request.refused'")
        ).all()
    paths = [json.loads(r.detail).get("path") for r in rows]
    assert URL in paths, rows


async def test_a_fork_is_refused_and_kept_as_evidence(witness: Witness, log: Log) -> None:
    assert (await witness.client.post(URL, content=log.request(0, 5))).status_code == 200
    forked = Log(log.signer, [*log.leaves[:3], *(merkle.leaf_hash(b"rewritten") for _ in range(9))])
    # The honest proof from 5 of the forked tree does not lead from the root the witness holds.
    body = forked.request(5, 8)
    problem = _problem(await witness.client.post(URL, content=body), 422)
    assert "inconsistent" in str(problem["detail"])
    with witness.node.db.session() as session:
        (evidence,) = session.exec(select(WitnessEvidence)).all()
        assert evidence.origin == ORIGIN and evidence.size == 8 and evidence.cosigned_size == 5
        assert bytes(evidence.request) == body
    with witness.node.db.engine.connect() as conn:
        actors = conn.execute(
            sa.text("SELECT actor FROM audit_entries WHERE kind = 'witness.refused'")
        ).scalars().all()  # fmt: skip
    assert actors == [f"log:{ORIGIN}"]


async def test_no_list_no_log_and_a_broken_list_is_named(witness: Witness, log: Log) -> None:
    witness.node.settings = witness.node.settings.model_copy(update={"witnessed_logs_file": None})
    _problem(await witness.client.post(URL, content=log.request(0, 2)), 404)
    broken = witness.logs_file.with_name("broken")
    broken.write_text("not a key\n")
    with pytest.raises(Exception, match=r"broken, line 1: not a C2SP verifier key"):
        witnessed_logs(broken)
    witness.node.settings = witness.node.settings.model_copy(update={"witnessed_logs_file": broken})
    problem = _problem(await witness.client.post(URL, content=log.request(0, 2)), 503)
    assert "line 1" in str(problem["detail"])
