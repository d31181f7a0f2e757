"""Also seen: federation response signatures (RFC 9421) covered the request's method and URI but
not the request's own signature (section 2.4, ``;req``), carried no nonce, left ``Content-Type``
unsigned, and error responses (problem documents) were not signed at all, so a partner could not
tell a real refusal from a forged one.

Now every federation response, refusals included, covers ``"signature";req``, ``content-type``,
``@status`` and ``content-digest`` and carries a nonce; the partner client requires all of it,
and believes a refusal only when it is signed. Requests with a body cover ``content-type`` too.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import httpx
import pytest
from http_message_signatures import HTTPMessageVerifier, MappingKeyResolver, algorithms
from http_message_signatures.structures import CaseInsensitiveDict

from crypto import _sfv, httpsig
from crypto.errors import CryptoError
from service.errors import PartnerRefusedError, PartnerUnavailableError
from service.federation.client import PartnerClient
from service.federation.signing import (
    digest_value,
    sign_request_headers,
    verify_response_from,
)
from service.models import Partner
from service.partners import partner_verify_keys
from tests.conformance.test_httpsig_interop import Msg, Resp, _pem
from tests.hardening.kit import Trio, trio
from tests.service.test_federation_sync import PortalTransport

FEED = "/federation/v1/feed?after=0"
MISSING = "/federation/v1/artifacts/art_00000000000000000000000000/payload"


def _request(nodes: Trio, method: str, path: str, body: bytes = b"", **headers: str):
    sender, receiver = nodes.us.node, nodes.uk.node
    url = receiver.home.url + path
    signed = sign_request_headers(
        sender,
        method=method,
        url=url,
        headers=headers,
        content_digest=digest_value(hashlib.sha256(body).digest()),
    )
    return url, {**headers, **signed}


async def _send(nodes: Trio, method: str, path: str, body: bytes = b"", **headers: str):
    url, sent = _request(nodes, method, path, body, **headers)
    async with nodes.uk.client() as c:
        r = await c.request(method, path, content=body, headers=sent)
    return httpsig.Request(method, url, sent), r


def _verify(nodes: Trio, request: httpsig.Request, r: httpx.Response) -> httpsig.VerifiedSignature:
    with nodes.us.node.db.session() as session:
        keys = partner_verify_keys(session, "uk-aisi")
    verified = verify_response_from(
        nodes.us.node,
        partner_keys=keys,
        request=request,
        status=r.status_code,
        headers=list(r.headers.multi_items()),
    )
    digester = httpsig.ContentDigester()
    digester.update(r.content)
    digester.verify(verified.content_digests)
    return verified


def _covered(r: httpx.Response) -> list[str]:
    [member] = _sfv.parse_dictionary(r.headers["signature-input"]).values()
    assert isinstance(member, _sfv.InnerList)
    return [_sfv.serialize_item(i) for i in member.items]


@pytest.fixture
def nodes(tmp_path: Path) -> Trio:
    return trio(tmp_path)


async def test_a_response_covers_the_request_signature_content_type_and_a_nonce(
    nodes: Trio,
) -> None:
    request, r = await _send(nodes, "GET", FEED)
    assert r.status_code == 200, r.text
    covered = _covered(r)
    assert '"signature";req;key="sig1"' in covered
    assert '"content-type"' in covered
    assert {'"@status"', '"content-digest"', '"@method";req', '"@target-uri";req'} <= set(covered)
    verified = _verify(nodes, request, r)
    assert verified.nonce and len(verified.nonce) >= 16
    # Bound to this request's signature: the same answer does not fit another request to the
    # same URI (a replayed or swapped response).
    other, _ = await _send(nodes, "GET", FEED)
    with pytest.raises(CryptoError):
        _verify(nodes, other, r)
    # Content-Type is covered: changing it breaks the signature.
    swapped = httpx.Response(
        r.status_code,
        headers=[
            (k, "text/html" if k.lower() == "content-type" else v) for k, v in r.headers.items()
        ],
        content=r.content,
    )
    with pytest.raises(CryptoError):
        _verify(nodes, request, swapped)


async def test_a_refusal_is_signed_too(nodes: Trio) -> None:
    request, r = await _send(nodes, "GET", MISSING)
    assert r.status_code == 404, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert '"signature";req;key="sig1"' in _covered(r)
    _verify(nodes, request, r)
    # A refusal of the signature itself (a stale request) is signed as well, bound to it.
    url, _ = _request(nodes, "GET", FEED)
    old = int(time.time()) - 3600
    stale = httpsig.Request("GET", url, {})
    fields = httpsig.sign_request(
        stale,
        key=nodes.us.node.keys.signing,
        keyid=nodes.us.node.keys.signing.fingerprint,
        created=old,
        expires=old + 300,
        nonce="stale-1",
        body=b"",
    )
    async with nodes.uk.client() as c:
        r = await c.get(FEED, headers=fields)
    assert r.status_code == 401, r.text
    _verify(nodes, stale.with_headers(fields), r)


def test_the_client_believes_only_signed_refusals(nodes: Trio) -> None:
    transport = PortalTransport({"uk-aisi": nodes.uk.app})
    try:
        client = PartnerClient(nodes.us.node, http=httpx.Client(transport=transport))
        with nodes.us.node.db.session() as session:
            uk = session.get(Partner, "uk-aisi")
            assert uk is not None
        with pytest.raises(PartnerRefusedError) as refused:
            client.call_json(uk, "GET", MISSING)
        assert refused.value.status_code == 404
        client.close()
    finally:
        transport.close()

    def forged(request: httpx.Request) -> httpx.Response:
        problem = b'{"type":"urn:entente:problem:forbidden","status":403,"detail":"go away"}'
        return httpx.Response(
            403, headers={"Content-Type": "application/problem+json"}, content=problem
        )

    client = PartnerClient(nodes.us.node, http=httpx.Client(transport=httpx.MockTransport(forged)))
    with pytest.raises(PartnerUnavailableError) as unavailable:
        client.call_json(uk, "GET", FEED)
    # Not a refusal the sender would give up on: an unsigned 403 proves nothing.
    assert not isinstance(unavailable.value, PartnerRefusedError)
    assert "signature" in unavailable.value.message
    client.close()


async def test_request_content_type_is_covered(nodes: Trio) -> None:
    body = b'{"receipts": []}'
    _, sent = _request(nodes, "POST", "/federation/v1/receipts", body, **{
        "Content-Type": "application/json"
    })  # fmt: skip
    assert "content-type" in sent["Signature-Input"]
    changed = {**sent, "Content-Type": "application/vnd.entente.delivery-batch"}
    async with nodes.uk.client() as c:
        r = await c.post("/federation/v1/receipts", content=body, headers=changed)
    assert r.status_code == 401, r.text


async def test_responses_verify_with_the_independent_implementation(nodes: Trio) -> None:
    request, r = await _send(nodes, "GET", FEED)
    uk = nodes.uk.node.keys.signing
    public = bytes.fromhex("302a300506032b6570032100") + uk.public.raw
    resolver = MappingKeyResolver(
        public_keys={uk.fingerprint: _pem("PUBLIC KEY", public)}, private_keys={}
    )
    their_request = Msg("GET", request.target_uri, CaseInsensitiveDict(request.headers.items()))
    their_response = Resp(r.status_code, CaseInsensitiveDict(r.headers.items()), their_request)
    verifier = HTTPMessageVerifier(signature_algorithm=algorithms.ED25519, key_resolver=resolver)
    [result] = verifier.verify(their_response, body=r.content)
    assert '"signature";req;key="sig1"' in result.covered_components
    assert '"content-type"' in result.covered_components
