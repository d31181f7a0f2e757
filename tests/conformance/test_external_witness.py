"""An independent C2SP tlog-witness (aics-witness, from PyPI) cosigns this node's checkpoints
when asked as ``ENTENTE_EXTERNAL_WITNESSES_FILE`` lists it: the plain C2SP ``add-checkpoint``
request (old size, consistency proof, signed checkpoint), its ``cosignature/v1`` line verified
under the configured key, kept with the checkpoint and counted toward the quorum; a witness
that does not follow this log refuses, and the refusal is recorded, not a cosignature."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from crypto.note import NoteVerifier, open_note
from service.audit.checkpoints import latest_checkpoint
from service.audit.entries import log_signer
from service.audit.log import record
from service.audit.models import AuditWitnessSubmission
from service.audit.sequencer import run_sequencer
from service.audit.submission import WitnessReply, submission_step
from service.console._queries import log_status
from tests.conformance.aics_witness import aics_witness
from tests.service.nodekit import Kit, make_node

pytestmark = pytest.mark.aics_witness


class NoPartners:
    """The partners' transport: these nodes have none, so it is never used."""

    async def add_checkpoint(
        self, *, partner_id: str, partner_url: str, body: bytes
    ) -> WitnessReply:
        raise AssertionError(f"asked partner {partner_id}, but there is none")


def _grow(kit: Kit, n: int) -> int:
    with kit.node.db.session() as session:
        for i in range(n):
            record(session, kind="read", actor=f"reader:r{i}", now=kit.node.now())
    run_sequencer(kit.node)
    with kit.node.db.session() as session:
        return latest_checkpoint(session).size


def _submit(kit: Kit) -> None:
    step = submission_step(kit.node, NoPartners())

    async def once() -> None:
        await step()

    asyncio.run(once())


def test_an_independent_witness_cosigns_each_checkpoint_from_the_last(tmp_path: Path) -> None:
    witness = aics_witness(tmp_path / "aics")
    witness_vkey = witness.init("witness.test/aics")
    listed = tmp_path / "witnesses.txt"
    uk = make_node(tmp_path, "uk-aisi", external_witnesses_file=listed)
    us = make_node(tmp_path, "us-aisi", external_witnesses_file=listed)
    signer = log_signer(uk.node)
    witness.add_log(signer.name, signer.verifier.vkey)  # it follows uk-aisi's log, not us-aisi's
    verifier = NoteVerifier.parse(witness_vkey)
    with witness.serving() as url:
        listed.write_text(f"# an independent witness\n{url}  {witness_vkey}\n")
        for _round in range(2):  # the second from the size the witness cosigned: with a proof
            size = _grow(uk, 7)
            _submit(uk)
            with uk.node.db.session() as session:
                cosigned = latest_checkpoint(session, min_cosignatures=1)
                status = log_status(uk.node, session)
                row = session.get(AuditWitnessSubmission, f"external:{verifier.key_id:08x}")
            assert cosigned.size == size
            opened = open_note(cosigned.note, verifiers=[signer.verifier, verifier])
            assert opened.signed_by(verifier) is not None  # the witness's own cosignature
            assert (status.witnesses, status.quorum, status.witnessed_size) == (1, 1, size)
            assert row is not None and row.cosigned_size == size and row.last_error is None

        _grow(us, 3)
        _submit(us)
    with us.node.db.session() as session:
        refused = session.get(AuditWitnessSubmission, f"external:{verifier.key_id:08x}")
        assert latest_checkpoint(session).size > 0
        assert log_status(us.node, session).witnessed_size == 0
    assert refused is not None and refused.cosigned_size == 0
    assert refused.last_error is not None and "refused (404)" in refused.last_error
