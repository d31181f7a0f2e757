"""Interop with the independent PyPI package ``http-message-signatures``, in both directions.

That package reads the wall clock (it has no ``now`` argument), so these tests sign with the
current time.
"""

from __future__ import annotations

import base64
import hashlib
import time
from dataclasses import dataclass
from typing import Any

import pytest
from http_message_signatures import (
    HTTPMessageSigner,
    HTTPMessageVerifier,
    InvalidSignature,
    MappingKeyResolver,
    algorithms,
)
from http_message_signatures.structures import CaseInsensitiveDict

from crypto.errors import VerificationError
from crypto.httpsig import (
    Request,
    Response,
    request_signature_component,
    sign_request,
    sign_response,
    verify_request,
    verify_response,
)
from crypto.keys import SigningKey

URL = "https://uk-aisi.example:8443/federation/v1/inbox?after=42&limit=10"
BODY = b'{"artifact": "finding-7", "tlp": "TLP:AMBER"}'
KEYID = "3f1c0a" * 10 + "ab12"


def _pem(kind: str, der: bytes) -> bytes:
    return (
        f"-----BEGIN {kind}-----\n{base64.b64encode(der).decode()}\n-----END {kind}-----\n".encode()
    )


@dataclass
class Msg:
    """The message shape the package resolves: method, url, headers (and status, request)."""

    method: str
    url: str
    headers: Any


@dataclass
class Resp:
    status_code: int
    headers: Any
    request: Msg


@pytest.fixture
def key() -> SigningKey:
    return SigningKey(bytes(range(32)))


@pytest.fixture
def resolver(key: SigningKey) -> MappingKeyResolver:
    private = bytes.fromhex("302e020100300506032b657004220420") + key.seed
    public = bytes.fromhex("302a300506032b6570032100") + key.public.raw
    return MappingKeyResolver(
        public_keys={KEYID: _pem("PUBLIC KEY", public)},
        private_keys={KEYID: _pem("PRIVATE KEY", private)},
    )


def _resolve(key: SigningKey) -> Any:
    return lambda keyid: key.public if keyid == KEYID else None


def _never_seen(keyid: str, nonce: str) -> bool:
    return False


def test_entente_request_verifies_with_the_package(
    key: SigningKey, resolver: MappingKeyResolver
) -> None:
    now = int(time.time())
    request = Request("POST", URL, {"Content-Type": "application/json"})
    fields = sign_request(
        request, key=key, keyid=KEYID, created=now, expires=now + 60, nonce="n-1", body=BODY
    )
    message = Msg("POST", URL, CaseInsensitiveDict({"Content-Type": "application/json", **fields}))
    verifier = HTTPMessageVerifier(signature_algorithm=algorithms.ED25519, key_resolver=resolver)
    [result] = verifier.verify(
        message, body=BODY, require_components=("@method", "@target-uri", "content-digest")
    )
    assert result.parameters["keyid"] == KEYID
    assert result.nonce == "n-1"
    assert result.body == BODY
    # Tampering is caught on their side too.
    message.method = "PUT"
    with pytest.raises(InvalidSignature):
        verifier.verify(message)


def test_package_request_verifies_with_entente(
    key: SigningKey, resolver: MappingKeyResolver
) -> None:
    headers = CaseInsensitiveDict({"Content-Type": "application/json", "X-Entente-Node": "uk"})
    message = Msg("POST", URL, headers)
    signer = HTTPMessageSigner(signature_algorithm=algorithms.ED25519, key_resolver=resolver)
    signer.sign(
        message,
        key_id=KEYID,
        nonce="their-nonce",
        label="theirs",
        tag="entente-test",
        covered_component_ids=(
            "@method",
            "@target-uri",
            "@authority",
            "@path",
            "@query",
            "@scheme",
            "@request-target",
            "x-entente-node",
            "content-type",  # the profile covers what the body is parsed as
        ),
        body=BODY,
    )
    received = Request("POST", URL, list(headers.items()))
    verified = verify_request(
        received,
        resolve_key=_resolve(key),
        now=int(time.time()),
        nonce_seen=_never_seen,
        tag="entente-test",
    )
    assert verified.label == "theirs"
    assert verified.nonce == "their-nonce"
    assert verified.covers("x-entente-node")
    assert dict(verified.content_digests) == {"sha-256": hashlib.sha256(BODY).digest()}
    tampered = Request("POST", URL.replace("42", "43"), list(headers.items()))
    with pytest.raises(VerificationError):
        verify_request(
            tampered, resolve_key=_resolve(key), now=int(time.time()), nonce_seen=_never_seen
        )


def test_entente_response_verifies_with_the_package(
    key: SigningKey, resolver: MappingKeyResolver
) -> None:
    now = int(time.time())
    request = Request("POST", URL, {"Content-Type": "application/json"})
    req_fields = sign_request(request, key=key, keyid=KEYID, created=now, nonce="n", body=BODY)
    sent = request.with_headers(req_fields)
    response = Response(201, {"Content-Type": "application/json"})
    fields = sign_response(
        response,
        request=sent,
        key=key,
        keyid=KEYID,
        created=now,
        components=(
            "@status",
            "content-digest",
            '"@method";req',
            '"@target-uri";req',
            request_signature_component("sig1"),
        ),
        label="receipt",
        body=b"{}",
    )
    their_request = Msg("POST", URL, CaseInsensitiveDict(list(sent.headers.items())))
    their_response = Resp(
        201, CaseInsensitiveDict({"Content-Type": "application/json", **fields}), their_request
    )
    verifier = HTTPMessageVerifier(signature_algorithm=algorithms.ED25519, key_resolver=resolver)
    [result] = verifier.verify(their_response, body=b"{}")
    assert '"signature";req;key="sig1"' in result.covered_components


def test_package_response_verifies_with_entente(
    key: SigningKey, resolver: MappingKeyResolver
) -> None:
    now = int(time.time())
    request = Request("GET", URL, {})
    sent = request.with_headers(
        sign_request(request, key=key, keyid=KEYID, created=now, nonce="n", body=b"")
    )
    their_request = Msg("GET", URL, CaseInsensitiveDict(list(sent.headers.items())))
    their_response = Resp(200, CaseInsensitiveDict({"Content-Type": "text/plain"}), their_request)
    signer = HTTPMessageSigner(signature_algorithm=algorithms.ED25519, key_resolver=resolver)
    signer.sign(
        their_response,
        key_id=KEYID,
        nonce="their-response-nonce",
        covered_component_ids=(
            "@status",
            '"@method";req',
            '"@target-uri";req',
            '"signature";req;key="sig1"',
            "content-type",
        ),
        body=b"checkpoint\n",
    )
    received = Response(200, list(their_response.headers.items()))
    verified = verify_response(  # the profile's defaults: RESPONSE_COMPONENTS and a nonce
        received, request=sent, resolve_key=_resolve(key), now=int(time.time())
    )
    assert verified.label == "pyhms" and verified.nonce == "their-response-nonce"
    # The response answered this request: another request's signature does not fit it.
    other = request.with_headers(
        sign_request(request, key=key, keyid=KEYID, created=now, nonce="m", body=b"")
    )
    with pytest.raises(VerificationError):
        verify_response(received, request=other, resolve_key=_resolve(key), now=now)
