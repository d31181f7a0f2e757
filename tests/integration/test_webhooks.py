"""Outgoing webhooks between real nodes: shares from uk-aisi arrive at us-aisi, whose webhooks
(created with ``entente webhook add``) POST each arrival to a receiver in this test, which
verifies every delivery's signature with ``standardwebhooks`` as a real receiver would.

Three receivers on one loopback server: one that always answers 204 sees each arrival exactly
once, in order; one that fails twice and then succeeds still sees each once, in order (the retry
path); one that always fails ends with its subscription disabled and a ``webhook.disabled``
audit entry."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from standardwebhooks import Webhook as Verifier
from standardwebhooks import WebhookVerificationError

from tests.integration.test_events import share
from tests.integration.test_federation import wait_for
from tests.nodes import Federation, base_env, run_cli, start_federation

pytestmark = pytest.mark.integration

N = 4


class Receivers(ThreadingHTTPServer):
    """Webhook receivers on 127.0.0.1, one per path: ``/ok`` answers 204, ``/flaky`` 500 to its
    first two requests, ``/down`` always 500. Every request's signature is verified first."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.secrets: dict[str, str] = {}  # path -> secret
        self.seen: dict[str, list[dict[str, Any]]] = {"/ok": [], "/flaky": [], "/down": []}
        self.requests: dict[str, int] = dict.fromkeys(self.seen, 0)
        self.bad_signatures = 0
        self.lock = threading.Lock()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}{path}"


class _Handler(BaseHTTPRequestHandler):
    server: Receivers

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        server = self.server
        with server.lock:
            try:
                payload = Verifier(server.secrets[self.path]).verify(body, dict(self.headers))
            except (KeyError, WebhookVerificationError):
                server.bad_signatures += 1
                status = 400
            else:
                server.requests[self.path] += 1
                n = server.requests[self.path]
                ok = self.path == "/ok" or (self.path == "/flaky" and n > 2)
                if ok:
                    server.seen[self.path].append(payload)
                status = 204 if ok else 500
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        return None


@pytest.fixture
def receivers() -> Iterator[Receivers]:
    server = Receivers()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    federation = start_federation(
        tmp_path_factory.mktemp("webhooks"),
        ("uk-aisi", "us-aisi"),
        ENTENTE_SYNC_INTERVAL_SECONDS="0.1",
        ENTENTE_CHECKPOINT_INTERVAL_SECONDS="0.2",
        ENTENTE_WEBHOOK_POLL_SECONDS="0.1",
        ENTENTE_WEBHOOK_RETRY_BASE_SECONDS="0.2",
        ENTENTE_WEBHOOK_MAX_ATTEMPTS="3",
        ENTENTE_WEBHOOK_TIMEOUT_SECONDS="2",
    )
    yield federation
    federation.stop()


def admin_env(fed: Federation) -> dict[str, str]:
    """``entente webhook`` talking to us-aisi with its admin token."""
    token = fed.auth("us-aisi", "admin")["Authorization"].split()[1]
    return base_env(ENTENTE_URL=fed.nodes["us-aisi"].url, ENTENTE_TOKEN=token)


def cli(fed: Federation, *args: str) -> Any:
    done = run_cli("webhook", *args, "--json", env=admin_env(fed))
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_a_receiver_sees_each_delivery_once_with_a_valid_signature(
    fed: Federation, receivers: Receivers
) -> None:
    us = fed.nodes["us-aisi"]
    hooks = {}
    for path in ("/ok", "/flaky", "/down"):
        created = cli(fed, "add", receivers.url(path), "--event", "arrived")
        receivers.secrets[path] = created["secret"]
        hooks[path] = created["id"]
    uk = fed.nodes["uk-aisi"].url  # a partner of us-aisi, on loopback like the receivers
    refused = run_cli("webhook", "add", f"{uk}/hook", env=admin_env(fed))
    assert refused.returncode != 0 and "422" in refused.stderr

    ids = share(fed, N)
    wait_for(lambda: len(receivers.seen["/ok"]) >= N, timeout=60, what="the deliveries")
    wait_for(lambda: len(receivers.seen["/flaky"]) >= N, timeout=60, what="the retried ones")

    def disabled() -> bool:
        listed = {w["id"]: w for w in cli(fed, "list")}
        return listed[hooks["/down"]]["state"] == "disabled"

    wait_for(disabled, timeout=60, what="the failing receiver's subscription to be disabled")

    for path in ("/ok", "/flaky"):
        got = [p["data"]["artifact_id"] for p in receivers.seen[path]]
        assert got == ids, path  # each once, in the order they arrived
        assert all(p["type"] == "artifact.arrived" for p in receivers.seen[path])
    assert receivers.requests["/flaky"] == N + 2
    assert receivers.requests["/down"] == 3  # ENTENTE_WEBHOOK_MAX_ATTEMPTS, then no more
    assert receivers.bad_signatures == 0

    listed = {w["id"]: w for w in cli(fed, "list")}
    assert listed[hooks["/ok"]]["state"] == listed[hooks["/flaky"]]["state"] == "active"
    assert listed[hooks["/down"]]["failures"] == 3
    assert all("secret" not in w for w in listed.values())

    auditor = fed.auth("us-aisi", "auditor")

    def disabled_entries() -> list[dict[str, Any]]:
        r = httpx.get(
            f"{us.url}/audit/v1/entries", params={"kind": "webhook.disabled"}, headers=auditor
        )
        assert r.status_code == 200, r.text
        return list(r.json()["entries"])

    [entry] = wait_for(disabled_entries, timeout=30, what="the webhook.disabled entry")
    detail = json.loads(entry["detail"]) if isinstance(entry["detail"], str) else entry["detail"]
    assert detail["webhook_id"] == hooks["/down"] and detail["attempts"] == 3

    removed = run_cli("webhook", "remove", hooks["/ok"], env=admin_env(fed))
    assert removed.returncode == 0, removed.stderr
    assert hooks["/ok"] not in {w["id"] for w in cli(fed, "list")}
