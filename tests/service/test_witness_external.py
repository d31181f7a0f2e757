"""ENTENTE_EXTERNAL_WITNESSES_FILE: each line a witness's URL and cosigner key; a file that
cannot be used is one clear error naming the line (``serve`` stops on it at start)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from crypto.keys import SigningKey
from crypto.note import Cosigner, NoteSigner
from service.audit.errors import WitnessConfigError
from service.audit.witness_external import external_witnesses

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
)
def test_a_file_that_cannot_be_used_names_the_line(tmp_path: Path, line: str, why: str) -> None:
    listed = tmp_path / "w.txt"
    listed.write_text(f"# witnesses\n{line}\n")
    with pytest.raises(WitnessConfigError, match=re.escape(why)) as caught:
        external_witnesses(listed)
    assert "line 2" in caught.value.message or "line 3" in caught.value.message
    with pytest.raises(WitnessConfigError, match="cannot read"):
        external_witnesses(tmp_path / "missing.txt")
