"""The webhook's pure parts: where one may go (the URL rule), how a delivery is signed (checked
with the ``standardwebhooks`` package receivers use), and the secret's storage."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from standardwebhooks import Webhook as Verifier
from standardwebhooks import WebhookVerificationError

from service.artifacts.events import Event
from service.errors import InvalidInputError, KeyStoreError
from service.models import Artifact
from service.settings import Settings
from service.webhooks.destinations import check_url, is_loopback
from service.webhooks.signing import event_body, message_id, signed_headers
from service.webhooks.subscriptions import new_secret, open_secret, parse_events, seal_secret
from tests.service.nodekit import make_node

PARTNERS = [("uk-aisi", "http://127.0.0.1:8443"), ("ca-aisi", "https://ca.example.org")]
ALLOWED = ("hooks.internal", "10.0.0.7", "fd00::7")

# (url, the reason it is refused, or None when it is accepted)
CASES = [
    ("http://127.0.0.1:9000/hook", None),
    ("http://127.1.2.3:9000/hook", None),
    ("http://localhost:9000/hook", None),
    ("http://LOCALHOST.:9000/hook", None),
    ("http://[::1]:9000/hook", None),
    ("https://hooks.internal/entente?x=1", None),
    ("http://10.0.0.7:8080/", None),
    ("http://[fd00::7]:8080/", None),
    ("http://127.0.0.1:8443/hook", "partner"),  # the UK node's host:port
    ("http://localhost:8443/", "partner"),  # the same address by another loopback name
    ("http://[::ffff:127.0.0.1]:8443/", "partner"),
    ("http://[::1]:8443/", "partner"),
    ("https://ca.example.org/hook", "host"),  # not local (and a partner's)
    ("http://example.org/hook", "host"),
    ("http://10.0.0.8/hook", "host"),
    ("http://hooks.internal.evil.org/", "host"),
    ("http://2130706433/", "host"),  # 127.0.0.1 as a number: judged as written, not resolved
    ("ftp://127.0.0.1/hook", "scheme"),
    ("file:///etc/passwd", "scheme"),
    ("127.0.0.1:9000/hook", "scheme"),
    ("http://user:pass@127.0.0.1:9000/", "credentials"),
    ("http://127.0.0.1:9000/#frag", "malformed"),
    ("http://127.0.0.1:99999/", "malformed"),
    ("http:///hook", "malformed"),
    ("http://127.0.0.1:9000/a b", "malformed"),
    ("http://127.0.0.1:9000/\x00", "malformed"),
    ("http://127.0.0.1/" + "a" * 2048, "malformed"),
]


@pytest.mark.parametrize(("url", "reason"), CASES, ids=[c[0][:50] for c in CASES])
def test_the_url_rule(url: str, reason: str | None) -> None:
    if reason is None:
        assert check_url(url, allowed_hosts=ALLOWED, partners=PARTNERS) == url
        return
    with pytest.raises(InvalidInputError) as refused:
        check_url(url, allowed_hosts=ALLOWED, partners=PARTNERS)
    assert refused.value.extra["reason"] == reason


def test_a_partner_on_an_allowed_host_is_still_refused() -> None:
    partners = [("us-aisi", "https://hooks.internal:443")]
    with pytest.raises(InvalidInputError) as refused:
        check_url("https://hooks.internal/x", allowed_hosts=ALLOWED, partners=partners)
    assert refused.value.extra["reason"] == "partner" and "us-aisi" in refused.value.message
    # another port of that host is not the partner
    assert check_url("http://hooks.internal:9000/", allowed_hosts=ALLOWED, partners=partners)


def test_loopback_is_judged_from_the_text() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("localhost.example.org") and not is_loopback("10.0.0.1")


def test_the_allowed_hosts_setting_is_parsed_and_checked() -> None:
    settings = Settings(webhook_allowed_hosts="Hooks.Internal, 10.0.0.7,[fd00::7]")  # type: ignore[arg-type]
    assert settings.webhook_allowed_hosts == ("hooks.internal", "10.0.0.7", "fd00::7")
    with pytest.raises(ValueError, match="not host names"):
        Settings(webhook_allowed_hosts="hooks.internal/path")  # type: ignore[arg-type]


def _event(cursor: int = 7) -> Event:
    now = datetime.now(UTC)
    artifact = Artifact(
        id="art_1", direction="received", origin="uk-aisi", sender="uk-aisi", title="notes",
        tlp="TLP:GREEN", created_at=now, recorded_at=now, size=3, sha256="0" * 64,
        ciphertext_size=10, header_sha256="1" * 64, manifest="{}", blob="b" * 64,
    )  # fmt: skip
    return Event(cursor, "arrived", artifact, now)


def test_a_delivery_verifies_with_standardwebhooks() -> None:
    secret = new_secret()
    assert secret.startswith("whsec_")
    body = event_body(_event(), node_id="us-aisi")
    headers = signed_headers(secret, msg_id=message_id(7), body=body, now=datetime.now(UTC))
    assert headers["webhook-id"] == "evt_7"
    assert headers["webhook-signature"].startswith("v1,")
    payload = Verifier(secret).verify(body, headers)
    assert payload["type"] == "artifact.arrived"
    assert payload["data"] == {
        "id": 7, "event": "arrived", "node": "us-aisi", "artifact_id": "art_1",
        "origin": "uk-aisi", "title": "notes", "tlp": "TLP:GREEN",
        "recorded_at": payload["timestamp"],
    }  # fmt: skip
    assert json.loads(body) == payload  # nothing else: no content, digest or recipients


def test_a_wrong_secret_a_changed_body_or_an_old_timestamp_fail() -> None:
    secret = new_secret()
    body = event_body(_event(), node_id="us-aisi")
    headers = signed_headers(secret, msg_id="evt_7", body=body, now=datetime.now(UTC))
    with pytest.raises(WebhookVerificationError):
        Verifier(new_secret()).verify(body, headers)
    with pytest.raises(WebhookVerificationError):
        Verifier(secret).verify(body.replace(b"notes", b"nodes"), headers)
    with pytest.raises(WebhookVerificationError):
        Verifier(secret).verify(body, {**headers, "webhook-id": "evt_8"})
    old = signed_headers(
        secret, msg_id="evt_7", body=body, now=datetime.now(UTC) - timedelta(hours=1)
    )
    with pytest.raises(WebhookVerificationError, match="too old"):
        Verifier(secret).verify(body, old)


def test_the_secret_is_sealed_to_the_node_and_opens_only_with_its_keys(tmp_path: Path) -> None:
    uk = make_node(tmp_path, "uk-aisi")
    us = make_node(tmp_path, "us-aisi", post_quantum=False)
    for kit in (uk, us):
        secret = new_secret()
        sealed = seal_secret(kit.node.keys, secret)
        assert secret not in sealed and secret.removeprefix("whsec_") not in sealed
        assert open_secret(kit.node.keys, sealed) == secret
    with pytest.raises(KeyStoreError):
        open_secret(uk.node.keys, seal_secret(us.node.keys, new_secret()))
    with pytest.raises(KeyStoreError):
        open_secret(uk.node.keys, "not base64!")


def test_event_filters() -> None:
    assert parse_events(None) == ["arrived", "deleted", "revoked"]
    assert parse_events(["revoked", "arrived", "arrived"]) == ["arrived", "revoked"]
    for bad in ([], ["arrive"]):
        with pytest.raises(InvalidInputError) as refused:
            parse_events(bad)
        assert refused.value.extra["reason"] == "events"
