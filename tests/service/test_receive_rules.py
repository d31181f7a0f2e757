"""The pure rules of receiving an artifact (service/federation/receive_rules.py): facts in, a
verdict or the error that says why. No database, no node: keys and manifests are made here."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from crypto.age import X25519Identity
from crypto.keys import SigningKey
from crypto.keyset import KeySet
from crypto.sealed import Manifest, ManifestRecipient, disclosure, disclosure_digest, sign_manifest
from service.errors import ConflictError, EntenteError, InvalidInputError, TooLargeError
from service.federation.receive_rules import (
    MAX_HEAD_BYTES,
    SenderFacts,
    Stored,
    check_not_revoked,
    check_recipient,
    check_repeat,
    parse_head,
)

T0 = datetime(2026, 3, 1, tzinfo=UTC)
SENDER = SigningKey.generate()
STRANGER = SigningKey.generate()
ME = X25519Identity.generate().recipient.to_string()
MY_OLD = X25519Identity.generate().recipient.to_string()
SOMEONE = X25519Identity.generate().recipient.to_string()
SALT = bytes(16)
SHOWN = disclosure("uk-aisi", {"allowed": True}, salt=SALT)

FACTS = SenderFacts(
    node_id="uk-aisi",
    sender="us-aisi",
    keysets=[KeySet(SENDER.public)],
    retired={},
    revoked=frozenset({"revoked-1"}),
    recipients=frozenset({ME, MY_OLD}),
    max_artifact_bytes=1000,
)


def manifest(**changes: Any) -> Manifest:
    base: dict[str, Any] = {
        "artifact_id": "a-1",
        "title": "findings",
        "origin": "us-aisi",
        "tlp": "TLP:AMBER",
        "topics": ("evaluation",),
        "purposes": ("evaluation",),
        "created": T0,
        "embargo_until": None,
        "expires_at": None,
        "recipients": (
            ManifestRecipient("us-aisi", SOMEONE),
            ManifestRecipient("uk-aisi", ME),
        ),
        "policy": {},
        "size": 10,
        "sha256": "a" * 64,
        "age_header_sha256": "b" * 64,
    }
    base.update(changes)
    return Manifest(**base)


def head(m: Manifest, *, key: SigningKey = SENDER, shown: object = None) -> bytes:
    envelope = json.loads(sign_manifest(m, key).to_bytes())
    if shown is None:
        return json.dumps(envelope).encode()
    return json.dumps({"manifest": envelope, "disclosure": shown}).encode()


COMMITTED = {"decisions": [{"partner": "uk-aisi", "sha256": disclosure_digest(SHOWN)}]}


@dataclass(frozen=True)
class Case:
    name: str
    run: Callable[[], object]
    res: type[EntenteError] | None  # the error expected, None when the rule passes
    reason: str | None = None  # the problem's ``reason``


CASES = [
    # step 1: the manifest
    Case("signed by the sender", lambda: parse_head(head(manifest()), FACTS), None),
    Case("not JSON", lambda: parse_head(b"{not json", FACTS), InvalidInputError, "manifest"),
    Case(
        "line too large",
        lambda: parse_head(b" " * (MAX_HEAD_BYTES + 1), FACTS),
        InvalidInputError,
        "manifest",
    ),
    Case(
        "signed by a key not pinned for the sender",
        lambda: parse_head(head(manifest(), key=STRANGER), FACTS),
        InvalidInputError,
        "manifest",
    ),
    Case(
        "the sender is not the origin",
        lambda: parse_head(head(manifest(origin="ca-aisi")), FACTS),
        InvalidInputError,
        "manifest",
    ),
    Case(
        "signed by a key retired before the manifest was made",
        lambda: parse_head(
            head(manifest()), replace(FACTS, retired={SENDER.fingerprint: T0 - timedelta(days=1)})
        ),
        InvalidInputError,
        "manifest",
    ),
    Case(
        "signed by a key retired after the manifest was made",
        lambda: parse_head(
            head(manifest()), replace(FACTS, retired={SENDER.fingerprint: T0 + timedelta(days=1)})
        ),
        None,
    ),
    Case("not revoked", lambda: check_not_revoked(manifest(), FACTS), None),
    Case(
        "revoked before it arrived",
        lambda: check_not_revoked(manifest(artifact_id="revoked-1"), FACTS),
        ConflictError,
        "revoked",
    ),
    # step 2: the recipient, the disclosure, the size
    Case("a recipient", lambda: check_recipient(manifest(), None, FACTS), None),
    Case(
        "a recipient under a retired recipient string",
        lambda: check_recipient(
            manifest(recipients=(ManifestRecipient("uk-aisi", MY_OLD),)), None, FACTS
        ),
        None,
    ),
    Case(
        "not a recipient",
        lambda: check_recipient(
            manifest(recipients=(ManifestRecipient("us-aisi", SOMEONE),)), None, FACTS
        ),
        InvalidInputError,
        "not-a-recipient",
    ),
    Case(
        "named, under a recipient string this node never published",
        lambda: check_recipient(
            manifest(recipients=(ManifestRecipient("uk-aisi", SOMEONE),)), None, FACTS
        ),
        InvalidInputError,
        "not-a-recipient",
    ),
    Case(
        "the committed decision, disclosed",
        lambda: check_recipient(manifest(policy=COMMITTED), SHOWN, FACTS),
        None,
    ),
    Case(
        "a committed decision not disclosed",
        lambda: check_recipient(manifest(policy=COMMITTED), None, FACTS),
        InvalidInputError,
        "disclosure",
    ),
    Case(
        "another decision disclosed than the one committed",
        lambda: check_recipient(
            manifest(policy=COMMITTED),
            disclosure("uk-aisi", {"allowed": False}, salt=SALT),
            FACTS,
        ),
        InvalidInputError,
        "disclosure",
    ),
    Case(
        "at the size limit",
        lambda: check_recipient(manifest(size=1000), None, FACTS),
        None,
    ),
    Case(
        "over the size limit",
        lambda: check_recipient(manifest(size=1001), None, FACTS),
        TooLargeError,
        "too-large",
    ),
    # step 4: a repeat delivery
    Case(
        "the same artifact again",
        lambda: check_repeat(Stored("a-1", "a" * 64, "us-aisi", "receipt"), manifest()),
        None,
    ),
    Case(
        "other content under the id",
        lambda: check_repeat(Stored("a-1", "c" * 64, "us-aisi", "receipt"), manifest()),
        ConflictError,
        "conflict",
    ),
    Case(
        "this node's own artifact echoed back",
        lambda: check_repeat(Stored("a-1", "a" * 64, "us-aisi", None), manifest()),
        ConflictError,
        "conflict",
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_receive_rules(case: Case) -> None:
    if case.res is None:
        case.run()
        return
    with pytest.raises(case.res) as caught:
        case.run()
    assert type(caught.value) is case.res
    assert caught.value.extra.get("reason") == case.reason


def test_the_verified_head_carries_the_manifest_and_the_disclosure() -> None:
    m = manifest(policy=COMMITTED)
    verified = parse_head(head(m, shown=SHOWN), FACTS)
    assert verified.manifest == m and verified.shown == SHOWN
    assert check_recipient(verified.manifest, verified.shown, FACTS) == SHOWN


def test_a_repeat_answers_the_receipt_already_issued() -> None:
    stored = Stored("a-1", "a" * 64, "us-aisi", "the receipt")
    assert check_repeat(stored, manifest()) == "the receipt"
