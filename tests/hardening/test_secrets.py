"""No secret in any log line or problem document: a full share, deliver, read, notice and revoke
flow between three real nodes logging at DEBUG, plus the refusals a careless client provokes.

What is searched for, in every log line of every node (as bytes and as text) and in every
problem document the flow received:

- the passphrase that unlocks the key files;
- every bearer token, whole and its secret part alone;
- every node's private keys: the ``AGE-SECRET-KEY-1…`` string, the raw X25519 secret and the
  Ed25519 seed (hex, base64, base64url), and the bytes of the encrypted key files;
- every artifact's file key and payload key, recovered from the stored ciphertext with the
  receiving node's identity (hex, base64, base64url): so a file key is looked for, not guessed;
- the plaintext (a random marker, as text, hex and base64 at each of the three alignments).

What this cannot see: a secret transformed in a way not listed (e.g. split across lines, or
encrypted), and anything written somewhere other than the nodes' logs and HTTP answers (such as
core dumps or swap). The log redaction pass (service/logs.py) is a last line of defence; this
test checks that it is not needed, by also looking for "[REDACTED]".
"""

from __future__ import annotations

import base64
import json
import secrets
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from crypto import age
from crypto.age._primitives import hkdf_sha256
from service.home import open_home
from service.settings import Settings
from tests.nodes import PASSPHRASE, Federation, start_federation

pytestmark = pytest.mark.integration

MARKER = f"PLAINTEXT-{secrets.token_hex(12)}".encode()
PLAINTEXT = b"Confidential evaluation finding. " + MARKER + b"\n" + MARKER * 50


def forms(secret: bytes) -> list[bytes]:
    """The encodings a secret could be written in."""
    out = [secret.hex().encode(), secret.hex().upper().encode()]
    for encode in (base64.b64encode, base64.urlsafe_b64encode):
        text = encode(secret)
        out += [text, text.rstrip(b"=")]
    return [s for s in out if len(s) >= 16]


def text_forms(text: bytes) -> list[bytes]:
    """A text secret, and its base64 at each alignment (a fragment inside a larger encoding)."""
    out = [text, text.hex().encode()]
    for shift in range(3):
        encoded = base64.b64encode(b"\0" * shift + text)[4:-4]
        out.append(encoded)
    return [s for s in out if len(s) >= 16]


def wait_for(check: Callable[[], Any], what: str, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := check():
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    federation = start_federation(
        tmp_path_factory.mktemp("secrets"),
        ENTENTE_LOG_LEVEL="DEBUG",
        ENTENTE_SYNC_INTERVAL_SECONDS="0.2",
        ENTENTE_RETRY_BASE_SECONDS="0.2",
        ENTENTE_RETRY_MAX_SECONDS="1",
    )
    yield federation
    federation.stop()


class Client:
    """Records every problem document the flow receives."""

    def __init__(self) -> None:
        self.problems: list[bytes] = []

    def __call__(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        r = httpx.request(method, url, timeout=30, **kwargs)
        if r.status_code >= 400:
            assert r.headers["content-type"] == "application/problem+json", r.text
            self.problems.append(r.content)
        return r


def upload(meta: dict[str, Any], content: bytes) -> tuple[bytes, dict[str, str]]:
    b = "entente-secrets"
    body = (
        f'--{b}\r\nContent-Disposition: form-data; name="metadata"\r\n\r\n'.encode()
        + json.dumps(meta).encode()
        + f'\r\n--{b}\r\nContent-Disposition: form-data; name="file"; filename="f"\r\n\r\n'.encode()
        + content
        + f"\r\n--{b}--\r\n".encode()
    )
    return body, {"Content-Type": f"multipart/form-data; boundary={b}"}


def run_flow(fed: Federation, call: Client) -> str:
    """Share at uk-aisi, deliver to us-aisi, read there, notice back; the artifact id."""
    uk, us = fed.nodes["uk-aisi"], fed.nodes["us-aisi"]
    meta = {
        "title": "Joint evaluation of model X",
        "tlp": "TLP:AMBER",  # carries `inform`: the read goes back to the origin as a notice
        "topics": ["evaluation/red-teaming"],
        "purposes": ["evaluation"],
        "partners": ["us-aisi"],
    }
    body, headers = upload(meta, PLAINTEXT)
    r = call("POST", f"{uk.url}/v1/artifacts", content=body,
             headers={**headers, **fed.auth("uk-aisi", "publisher")})  # fmt: skip
    assert r.status_code == 201, r.text
    ident: str = r.json()["id"]

    def delivered() -> bool:
        d = call("GET", f"{uk.url}/v1/artifacts/{ident}", headers=fed.auth("uk-aisi", "auditor"))
        return bool(d.json()["deliveries"][0]["state"] == "delivered")

    wait_for(delivered, "the delivery")
    read = call("GET", f"{us.url}/v1/artifacts/{ident}/content",
                headers=fed.auth("us-aisi", "reader"))  # fmt: skip
    assert read.content == PLAINTEXT

    def notified() -> bool:
        q = call("GET", f"{uk.url}/audit/v1/entries", params={"kind": "access_notice.received"},
                 headers=fed.auth("uk-aisi", "auditor"))  # fmt: skip
        return bool(q.json()["entries"])

    wait_for(notified, "the access notice")
    return ident


def run_refusals_and_revoke(fed: Federation, call: Client, ident: str) -> None:
    uk, us = fed.nodes["uk-aisi"], fed.nodes["us-aisi"]
    meta = {"title": "t", "topics": [], "purposes": [], "partners": ["us-aisi"]}
    # Refusals a careless client provokes, each answered with a problem document.
    token = fed.tokens["uk-aisi"]["publisher"]
    wrong = token[:-8] + ("A" * 8 if not token.endswith("A" * 8) else "B" * 8)
    call("GET", f"{uk.url}/v1/partners", headers={"Authorization": f"Bearer {wrong}"})
    call("GET", f"{uk.url}/v1/partners", headers={"Authorization": f"Basic {token}"})
    call("GET", f"{uk.url}/v1/partners", headers={"Authorization": token})
    call("GET", f"{uk.url}/v1/artifacts", params={"cursor": token},
         headers=fed.auth("uk-aisi", "reader"))  # fmt: skip
    call("GET", f"{uk.url}/audit/v1/entries", headers=fed.auth("uk-aisi", "reader"))
    bad, bad_headers = upload({**meta, "tlp": token}, PLAINTEXT)
    call("POST", f"{uk.url}/v1/artifacts", content=bad,
         headers={**bad_headers, **fed.auth("uk-aisi", "publisher")})  # fmt: skip
    call("GET", f"{us.url}/federation/v1/feed", headers={"Authorization": f"Bearer {token}"})
    call("POST", f"{uk.url}/v1/artifacts/{ident}/revoke", params={"reason": "superseded"},
         headers=fed.auth("uk-aisi", "publisher"))  # fmt: skip

    def revoked() -> bool:
        r = call("GET", f"{us.url}/v1/artifacts/{ident}", headers=fed.auth("us-aisi", "reader"))
        return r.status_code == 410

    wait_for(revoked, "the revocation")


def node_secrets(fed: Federation) -> dict[str, list[bytes]]:
    found: dict[str, list[bytes]] = {"passphrase": [PASSPHRASE.encode()]}
    for node_id, node in fed.nodes.items():
        for role, token in fed.tokens[node_id].items():
            found[f"{node_id} {role} token"] = [token.encode(), token.split("_", 2)[2].encode()]
        keys = open_home(node.home).unlock(Settings(home=node.home, passphrase=PASSPHRASE))
        identity_text = keys.identity.to_string().encode()
        found[f"{node_id} age identity"] = [
            identity_text,
            identity_text.lower(),
            *forms(keys.identity.secret),
        ]
        found[f"{node_id} signing key"] = forms(keys.signing.seed)
        for path in sorted((node.home / "keys").rglob("*.key")):
            data = path.read_bytes()
            found[f"{node_id} key file {path.name}"] = [
                data[i : i + 48] for i in range(0, len(data) - 47, 200)
            ]
    return found


def file_keys(fed: Federation) -> dict[str, list[bytes]]:
    """Each stored ciphertext's file key and payload key, unwrapped with its node's identity."""
    found: dict[str, list[bytes]] = {}
    for node_id, node in fed.nodes.items():
        keys = open_home(node.home).unlock(Settings(home=node.home, passphrase=PASSPHRASE))
        for blob in sorted((node.home / "blobs").glob("??/??/*")):
            with open(blob, "rb") as fh:
                decryptor = age.Decryptor.parse(fh, armor=False)
                stanzas = decryptor.header.stanzas  # X25519 or hybrid (post-quantum) stanzas
                file_key = next(
                    (k for i in keys.all_identities if (k := i.unwrap(stanzas)) is not None), None
                )
                assert file_key is not None, f"{node_id} cannot open its own blob {blob.name}"
                nonce = fh.read(16)
            payload_key = hkdf_sha256(file_key, nonce, b"payload")
            found[f"{node_id} file key of {blob.name[:12]}"] = forms(file_key) + forms(payload_key)
    return found


def test_no_secret_in_logs_or_problems(fed: Federation) -> None:
    call = Client()
    ident = run_flow(fed, call)
    keys = file_keys(fed)  # while both copies exist (the revocation deletes the received one)
    run_refusals_and_revoke(fed, call, ident)
    fed.stop()  # flush and close every log
    logs = {node_id: node.log_path.read_bytes() for node_id, node in fed.nodes.items()
            if node.log_path is not None}  # fmt: skip
    assert all(b'"level": "debug"' in data for data in logs.values()), "not logging at DEBUG"
    assert len(call.problems) >= 6
    haystacks = {f"{node_id} log": data for node_id, data in logs.items()}
    haystacks.update({f"problem {i}": doc for i, doc in enumerate(call.problems)})
    needles = {**node_secrets(fed), **keys, "plaintext": text_forms(MARKER)}
    assert len([k for k in needles if "file key" in k]) >= 2  # sent and received copies
    leaks = [
        f"{what} in {where}"
        for what, forms_ in needles.items()
        for form in forms_
        for where, data in haystacks.items()
        if form in data
    ]
    assert leaks == []
    # The redaction pass did not have to step in either.
    assert not any(b"[REDACTED]" in data for data in haystacks.values())
