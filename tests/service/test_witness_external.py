"""ENTENTE_EXTERNAL_WITNESSES_FILE: each line a witness's URL and cosigner key; a file that
cannot be used is one clear error naming the line (``serve`` stops on it at start). And how
often the witnesses are asked (ENTENTE_WITNESS_INTERVAL_SECONDS)."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest

from crypto.keys import SigningKey
from crypto.note import Cosigner, NoteSigner
from service.audit.errors import WitnessConfigError
from service.audit.submission import all_witnesses, submission_step, witnesses_in_use
from service.audit.witness_external import external_witnesses
from tests.conformance.test_external_witness import NoPartners
from tests.service.nodekit import make_node, pin

WITNESS = Cosigner("witness.test/w1", SigningKey.generate()).verifier.vkey
LOG_KEY = NoteSigner("example.org/log", SigningKey.generate()).verifier.vkey


def test_the_listed_witnesses_are_read_with_their_keys(tmp_path: Path) -> None:
    listed = tmp_path / "w.txt"
    listed.write_text(f"# comment\n\nhttps://w.example.org/prefix/  {WITNESS}  # trailing\n")
    (witness,) = external_witnesses(listed)
    assert witness.url == "https://w.example.org/prefix"
    assert witness.verifier.vkey == WITNESS
    assert witness.key == f"external:{witness.verifier.key_id:08x}"
    assert external_witnesses(None) == ()


@pytest.mark.parametrize(
    ("line", "why"),
    [
        (f"ftp://w.example.org {WITNESS}", "is not an http(s) URL"),
        (f"https://w.example.org {LOG_KEY}", "cosignature/v1 key (type 0x04)"),
        ("https://w.example.org not-a-key", "not a C2SP verifier key"),
        (WITNESS, "want the witness's URL, then its verifier key"),
        (f"https://a.example.org {WITNESS}\nhttps://b.example.org {WITNESS}", "listed twice"),
    ],
    # ids without the keys, which are made afresh in each process: pytest-xdist's workers
    # must collect the same test ids
    ids=["ftp-url", "log-key", "not-a-key", "no-url", "listed-twice"],
)
def test_a_file_that_cannot_be_used_names_the_line(tmp_path: Path, line: str, why: str) -> None:
    listed = tmp_path / "w.txt"
    listed.write_text(f"# witnesses\n{line}\n")
    with pytest.raises(WitnessConfigError, match=re.escape(why)) as caught:
        external_witnesses(listed)
    assert "line 2" in caught.value.message or "line 3" in caught.value.message
    with pytest.raises(WitnessConfigError, match="cannot read"):
        external_witnesses(tmp_path / "missing.txt")


@pytest.mark.parametrize(("setting", "pause"), [(None, 2.0), (10.0, 10.0)])
def test_the_witnesses_are_asked_every_witness_interval(
    tmp_path: Path, setting: float | None, pause: float
) -> None:
    """The worker asks again after ``ENTENTE_WITNESS_INTERVAL_SECONDS`` (unset: every checkpoint
    interval), so the witnessing work per second is bounded whatever the share rate."""
    kit = make_node(tmp_path, "uk-aisi", checkpoint_interval_seconds=2.0,
                    witness_interval_seconds=setting)  # fmt: skip
    step = submission_step(kit.node, NoPartners())

    async def once() -> float:
        return await step()

    assert asyncio.run(once()) == pause


def test_a_list_broken_since_start_leaves_the_partners_witnessing(tmp_path: Path) -> None:
    """``serve`` refuses a broken list at start; one broken afterwards costs only the external
    witnesses (the error is reported), never the partners' witnessing or the console's quorum."""
    listed = tmp_path / "w.txt"
    listed.write_text(f"https://w.example.org {WITNESS}\n")
    uk, us = (
        make_node(tmp_path, "uk-aisi", external_witnesses_file=listed),
        make_node(tmp_path, "us-aisi"),
    )
    pin(uk, us)
    (external,) = external_witnesses(listed)
    assert witnesses_in_use(uk.node) == (["us-aisi", external.key], None)
    listed.write_text("https://w.example.org not-a-key\n")  # an edit that breaks it
    witnesses, broken = witnesses_in_use(uk.node)
    assert witnesses == ["us-aisi"]
    assert broken is not None and "not a C2SP verifier key" in broken.message
    with pytest.raises(WitnessConfigError):
        all_witnesses(uk.node)
