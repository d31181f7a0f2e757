"""RFC 9421 Appendix B.2.6 (``../shared/vectors/rfc9421-b26-ed25519.json``), byte for byte."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from crypto.errors import VerificationError
from crypto.httpsig import (
    Component,
    Request,
    SignatureInput,
    sign_request,
    signature_base,
    verify_request,
)
from crypto.keys import SigningKey, VerifyKey
from tests.support import vectors_dir

# DER prefixes of an Ed25519 PKCS#8 private key and SubjectPublicKeyInfo (RFC 8410).
PKCS8_PREFIX = bytes.fromhex("302e020100300506032b657004220420")
SPKI_PREFIX = bytes.fromhex("302a300506032b6570032100")


def _pem_body(pem: str, prefix: bytes) -> bytes:
    lines = [line for line in pem.strip().splitlines() if not line.startswith("-----")]
    der = base64.b64decode("".join(lines), validate=True)
    assert der.startswith(prefix)
    assert len(der) == len(prefix) + 32
    return der[len(prefix) :]


@pytest.fixture
def vector() -> dict[str, Any]:
    data = json.loads((vectors_dir() / "rfc9421-b26-ed25519.json").read_text())
    assert isinstance(data, dict)
    return data


def _request(vector: dict[str, Any]) -> Request:
    r = vector["request"]
    # The example is sent over HTTPS to the Host; @authority comes from the target URI.
    return Request(r["method"], f"https://{r['headers']['Host']}{r['target']}", r["headers"])


@pytest.mark.vectors
def test_b26_signature_base_and_signature(vector: dict[str, Any]) -> None:
    key = SigningKey(_pem_body(vector["private_key_pem"], PKCS8_PREFIX))
    public = VerifyKey(_pem_body(vector["public_key_pem"], SPKI_PREFIX))
    assert key.public == public
    request = _request(vector)
    sig_input = SignatureInput(
        tuple(Component.parse(c) for c in vector["covered_components"]),
        (("created", vector["created"]), ("keyid", vector["keyid"])),
    )
    base = signature_base(request, sig_input)
    assert base == vector["signature_base"].encode("ascii")
    fields = sign_request(
        request,
        key=key,
        keyid=vector["keyid"],
        created=vector["created"],
        nonce=None,
        components=vector["covered_components"],
        label=vector["label"],
        include_alg=False,
    )
    assert fields == {
        "Signature-Input": vector["signature_input"],
        "Signature": vector["signature"],
    }
    # Ed25519 is deterministic: the RFC's signature over the RFC's base.
    raw = base64.b64decode(vector["signature"].split("=", 1)[1].strip(":"))
    public.verify(raw, base)


@pytest.mark.vectors
def test_b26_verifies_except_for_entente_profile(vector: dict[str, Any]) -> None:
    key = VerifyKey(_pem_body(vector["public_key_pem"], SPKI_PREFIX))
    signed = _request(vector).with_headers(
        {"Signature-Input": vector["signature_input"], "Signature": vector["signature"]}
    )
    verified = verify_request(
        signed,
        resolve_key=lambda keyid: key if keyid == vector["keyid"] else None,
        now=vector["created"] + 10,
        nonce_seen=lambda keyid, nonce: False,
        required_components=vector["covered_components"],
        label=vector["label"],
        require_nonce=False,
    )
    assert verified.keyid == vector["keyid"]
    assert [str(c) for c in verified.components] == [f'"{c}"' for c in vector["covered_components"]]
    # Entente's own profile wants a nonce (replay protection) and more coverage.
    with pytest.raises(VerificationError, match="nonce"):
        verify_request(
            signed,
            resolve_key=lambda keyid: key,
            now=vector["created"],
            nonce_seen=lambda keyid, nonce: False,
            required_components=vector["covered_components"],
        )
    with pytest.raises(VerificationError, match="does not cover"):
        verify_request(
            signed,
            resolve_key=lambda keyid: key,
            now=vector["created"],
            nonce_seen=lambda keyid, nonce: False,
            require_nonce=False,
        )
