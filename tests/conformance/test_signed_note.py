"""The C2SP signed-note example (``../shared/vectors/signed-note-example.json``)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from crypto.errors import MalformedError, VerificationError, VerificationUnavailableError
from crypto.note import NoteVerifier, open_note, parse_note
from tests.support import vectors_dir


@pytest.fixture
def example() -> dict[str, Any]:
    data = json.loads((vectors_dir() / "signed-note-example.json").read_text())
    assert isinstance(data, dict)
    return data


@pytest.mark.vectors
def test_example_verifies(example: dict[str, Any]) -> None:
    verifier = NoteVerifier.parse(example["verifier_key"])
    assert verifier.vkey == example["verifier_key"]
    assert f"{verifier.key_id:08x}" == "530d903a"
    opened = open_note(example["note"].encode("utf-8"), verifiers=[verifier])
    assert opened.text == example["text"]
    assert [(s.name, s.key_id) for s in opened.verified] == [("example.com/foo", 0x530D903A)]
    assert opened.unverified == ()


@pytest.mark.vectors
@pytest.mark.parametrize(
    ("tamper", "error"),
    [
        (lambda n: n.replace("example message", "exemplary message"), VerificationError),
        (lambda n: n.replace("This", "That"), VerificationError),
        (lambda n: n.replace("Uw2QOkn8", "Uw2QOkn9"), VerificationError),
        # A different key ID with the same name is someone else's signature: ignored, so unsigned.
        (lambda n: n.replace("Uw2QOkn8", "Uw2QPkn8"), VerificationUnavailableError),
        (
            lambda n: n.replace("example.com/foo U", "example.com/bar U"),
            VerificationUnavailableError,
        ),
        (lambda n: n.replace("\n\n", "\n"), MalformedError),
        (lambda n: n.replace("\u2014", "-"), MalformedError),
        (lambda n: n.rstrip("\n"), MalformedError),
    ],
)
def test_tampered_example_fails(
    example: dict[str, Any], tamper: Any, error: type[Exception]
) -> None:
    verifier = NoteVerifier.parse(example["verifier_key"])
    tampered = tamper(example["note"])
    assert tampered != example["note"]
    with pytest.raises(error):
        open_note(tampered.encode("utf-8"), verifiers=[verifier])


@pytest.mark.vectors
def test_example_parses_without_keys(example: dict[str, Any]) -> None:
    note = parse_note(example["note"].encode("utf-8"))
    assert note.text == example["text"]
    assert note.to_bytes() == example["note"].encode("utf-8")
