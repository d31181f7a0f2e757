"""Unit tests for ``crypto.httpsig``: components, signature bases, recipes, digests, tampering."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crypto.errors import MalformedError, VerificationError, VerificationUnavailableError
from crypto.httpsig import (
    MAX_FIELD_BYTES,
    REQUEST_COMPONENTS,
    RESPONSE_COMPONENTS,
    Component,
    ContentDigester,
    Request,
    Response,
    SignatureInput,
    VerifiedSignature,
    content_digest,
    parse_content_digest,
    request_signature_component,
    sign_request,
    sign_response,
    signature_base,
    verify_content_digest,
    verify_request,
    verify_response,
)
from crypto.keys import SigningKey, VerifyKey

NOW = 1_750_000_000
KEY = SigningKey(b"\x11" * 32)
OTHER = SigningKey(b"\x22" * 32)
KEYID = KEY.fingerprint
URL = "https://us-aisi.example/federation/v1/inbox?after=7"
BODY = b'{"hello": "world"}'


def resolve(keyid: str) -> VerifyKey | None:
    return {KEY.fingerprint: KEY.public, OTHER.fingerprint: OTHER.public}.get(keyid)


class Nonces:
    """A nonce cache fake: remembers (keyid, nonce) pairs, says whether one was seen."""

    def __init__(self) -> None:
        self.seen: set[tuple[str, str]] = set()

    def __call__(self, keyid: str, nonce: str) -> bool:
        pair = (keyid, nonce)
        if pair in self.seen:
            return True
        self.seen.add(pair)
        return False


def line(message: Request | Response, component: str, request: Request | None = None) -> str:
    """The signature base line of one component."""
    base = signature_base(
        message, SignatureInput((Component.parse(component),), ()), request=request
    )
    return base.decode().split("\n")[0]


def signed(request: Request | None = None, *, body: bytes = BODY, **kwargs: Any) -> Request:
    request = request or Request("POST", URL, {"Content-Type": "application/json"})
    args: dict[str, Any] = {
        "key": KEY,
        "keyid": KEYID,
        "created": NOW,
        "expires": NOW + 300,
        "nonce": "nonce-1",
        "body": body,
    }
    args.update(kwargs)
    return request.with_headers(sign_request(request, **args))


def verify(request: Request, **kwargs: Any) -> Any:
    args: dict[str, Any] = {"resolve_key": resolve, "now": NOW, "nonce_seen": Nonces()}
    args.update(kwargs)
    return verify_request(request, **args)


# --- Derived components (RFC 9421 2.2 examples).

EXAMPLE = Request("POST", "https://www.example.com/path?param=value", {"Host": "www.example.com"})


@pytest.mark.parametrize(
    ("component", "expected"),
    [
        ("@method", '"@method": POST'),
        ("@target-uri", '"@target-uri": https://www.example.com/path?param=value'),
        ("@authority", '"@authority": www.example.com'),
        ("@scheme", '"@scheme": https'),
        ("@request-target", '"@request-target": /path?param=value'),
        ("@path", '"@path": /path'),
        ("@query", '"@query": ?param=value'),
    ],
)
def test_derived_components(component: str, expected: str) -> None:
    assert line(EXAMPLE, component) == expected


@pytest.mark.parametrize(
    ("uri", "component", "expected"),
    [
        ("https://www.example.com/path?queryString", "@query", "?queryString"),
        ("https://www.example.com/path", "@query", "?"),
        ("https://h.example/p?a=b&baz=bat%2Dman", "@query", "?a=b&baz=bat%2Dman"),
        ("https://WWW.Example.COM:443/", "@authority", "www.example.com"),
        ("http://h.example:80/", "@authority", "h.example"),
        ("http://h.example:8080/", "@authority", "h.example:8080"),
        ("https://h.example", "@path", "/"),
        ("https://h.example", "@target-uri", "https://h.example/"),
        ("HTTPS://h.example/a%2Fb", "@target-uri", "https://h.example/a%2Fb"),
        ("HTTPS://h.example/a", "@scheme", "https"),
        ("https://[2001:db8::1]:8443/x?", "@request-target", "/x?"),
        ("https://[2001:db8::1]:8443/x?", "@authority", "[2001:db8::1]:8443"),
    ],
)
def test_derived_component_normalization(uri: str, component: str, expected: str) -> None:
    assert line(Request("GET", uri), component) == f'"{component}": {expected}'


def test_method_is_case_sensitive() -> None:
    assert line(Request("get", URL), "@method") == '"@method": get'


@pytest.mark.parametrize(
    "uri",
    [
        "/relative/path",
        "ftp://h.example/x",
        "https://user@h.example/x",
        "https://h.example/x#frag",
        "https://h.example/a b",
        "https://h.example/caf\u00e9",
        "https://h.example/%zz",
        "https://h.example:99999/",
        "https:///nohost",
        "https://h.example/" + "a" * MAX_FIELD_BYTES,
    ],
)
def test_target_uri_must_be_absolute_and_clean(uri: str) -> None:
    with pytest.raises(MalformedError):
        Request("GET", uri)


@pytest.mark.parametrize("method", ["", "GET POST", "G\u00c9T", "X" * 33])
def test_method_must_be_a_token(method: str) -> None:
    with pytest.raises(MalformedError):
        Request(method, URL)


# --- Header fields (RFC 9421 2.1 examples).

FIELDS = Request(
    "GET",
    "https://www.example.com/",
    [
        ("Host", "www.example.com"),
        ("Date", "Tue, 20 Apr 2021 02:07:56 GMT"),
        ("X-OWS-Header", "   Leading and trailing whitespace.   "),
        ("X-Obs-Fold-Header", "Obsolete\r\n    line folding."),
        ("Cache-Control", "max-age=60"),
        ("Cache-Control", "   must-revalidate"),
        ("Example-Dict", " a=1,    b=2;x=1;y=2,   c=(a   b   c), d"),
        ("X-Empty-Header", " "),
        ("Example-Header", "value, with, lots"),
        ("Example-Header", "of, commas"),
        ("Content-Digest", "sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:,  md5=:AA==:"),
    ],
)


@pytest.mark.parametrize(
    ("component", "expected"),
    [
        ("host", '"host": www.example.com'),
        ("date", '"date": Tue, 20 Apr 2021 02:07:56 GMT'),
        ("x-ows-header", '"x-ows-header": Leading and trailing whitespace.'),
        ("x-obs-fold-header", '"x-obs-fold-header": Obsolete line folding.'),
        ("cache-control", '"cache-control": max-age=60, must-revalidate'),
        ("example-dict", '"example-dict": a=1,    b=2;x=1;y=2,   c=(a   b   c), d'),
        ("x-empty-header", '"x-empty-header": '),
        ('"example-dict";key="a"', '"example-dict";key="a": 1'),
        ('"example-dict";key="d"', '"example-dict";key="d": ?1'),
        ('"example-dict";key="b"', '"example-dict";key="b": 2;x=1;y=2'),
        ('"example-dict";key="c"', '"example-dict";key="c": (a b c)'),
        (
            '"example-header";bs',
            '"example-header";bs: :dmFsdWUsIHdpdGgsIGxvdHM=:, :b2YsIGNvbW1hcw==:',
        ),
        (
            '"content-digest";sf',
            '"content-digest";sf: sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:, '
            "md5=:AA==:",
        ),
    ],
)
def test_field_components(component: str, expected: str) -> None:
    assert line(FIELDS, component) == expected


def _base(message: Request | Response, *components: str, request: Request | None = None) -> bytes:
    sig_input = SignatureInput(tuple(Component.parse(c) for c in components), ())
    return signature_base(message, sig_input, request=request)


RESPONSE = Response(200, {"Content-Type": "text/plain"})

BASE_ERRORS: list[tuple[str, Request | Response, tuple[str, ...], type[Exception]]] = [
    ("status in a request", EXAMPLE, ("@status",), MalformedError),
    ("req in a request", EXAMPLE, ('"@method";req',), MalformedError),
    ("missing field", EXAMPLE, ("date",), MalformedError),
    ("query-param", EXAMPLE, ('"@query-param";name="param"',), VerificationUnavailableError),
    ("unknown derived", EXAMPLE, ("@fragment",), VerificationUnavailableError),
    ("signature-params covered", EXAMPLE, ("@signature-params",), MalformedError),
    ("trailer", FIELDS, ('"date";tr',), VerificationUnavailableError),
    ("bs with sf", FIELDS, ('"example-dict";bs;sf',), MalformedError),
    ("bs with key", FIELDS, ('"example-dict";bs;key="a"',), MalformedError),
    ("sf of an unknown type", FIELDS, ('"example-dict";sf',), VerificationUnavailableError),
    ("sf not a flag", FIELDS, ('"content-digest";sf=1',), MalformedError),
    ("unknown field parameter", FIELDS, ('"date";foo',), MalformedError),
    ("parameter on derived", EXAMPLE, ('"@method";key="x"',), MalformedError),
    ("missing dictionary member", FIELDS, ('"example-dict";key="zz"',), MalformedError),
    ("key on a non-dictionary", FIELDS, ('"date";key="a"',), MalformedError),
    ("duplicate", EXAMPLE, ("@method", "@path", "@method"), MalformedError),
    (
        "duplicate, params reordered",
        FIELDS,
        ('"example-dict";sf;key="a"', '"example-dict";key="a";sf'),
        MalformedError,
    ),
    ("derived in a response", RESPONSE, ("@method",), MalformedError),
    ("req without the request", RESPONSE, ('"@method";req',), MalformedError),
    ("status with req", RESPONSE, ('"@status";req',), MalformedError),
]


@pytest.mark.parametrize(
    ("message", "components", "error"),
    [pytest.param(m, c, e, id=i) for i, m, c, e in BASE_ERRORS],
)
def test_signature_base_errors(
    message: Request | Response, components: tuple[str, ...], error: type[Exception]
) -> None:
    with pytest.raises(error):
        _base(message, *components)


@pytest.mark.parametrize(
    "value",
    [
        "caf\u00e9",
        "bare\nnewline",
        "bare\rreturn",
        "nul\x00",
        "del\x7f",
        "x" * (MAX_FIELD_BYTES + 1),
    ],
)
def test_field_values_a_signature_cannot_cover(value: str) -> None:
    with pytest.raises(MalformedError):
        _base(Request("GET", URL, {"X-Test": value}), "x-test")


@pytest.mark.parametrize("name", ["Content-Type", "@Method", " date", '"quoted', ""])
def test_component_names_are_lowercase_strings(name: str) -> None:
    with pytest.raises(MalformedError):
        Component.parse(name)


def test_component_identity_ignores_parameter_order() -> None:
    a = Component.parse('"example-dict";sf;key="a"')
    b = Component.parse('"example-dict";key="a";sf')
    assert a.identity == b.identity
    assert a.serialize() == '"example-dict";sf;key="a"'
    assert str(request_signature_component("sig1")) == '"signature";req;key="sig1"'


# --- Sign and verify requests.


def test_request_round_trip() -> None:
    request = signed()
    assert request.headers.get_all("content-digest") == [content_digest(BODY)]
    verified = verify(request)
    assert verified.keyid == KEYID
    assert verified.created == NOW
    assert verified.expires == NOW + 300
    assert verified.nonce == "nonce-1"
    assert verified.label == "sig1"
    # The profile: a request with a body covers its media type too.
    covered = [*REQUEST_COMPONENTS, Component("content-type")]
    assert [str(c) for c in verified.components] == [str(c) for c in covered]
    assert dict(verified.content_digests) == {"sha-256": hashlib.sha256(BODY).digest()}
    # The caller then checks the (streamed) body against the signed digest.
    digester = ContentDigester(verified.content_digests)
    for chunk in (BODY[:5], BODY[5:]):
        digester.update(chunk)
    digester.verify(verified.content_digests)
    wrong = ContentDigester(verified.content_digests)
    wrong.update(BODY + b" ")
    with pytest.raises(VerificationError):
        wrong.verify(verified.content_digests)


def test_signature_input_is_serialized_in_a_fixed_order() -> None:
    fields = sign_request(
        Request("GET", URL),
        key=KEY,
        keyid="k",
        created=NOW,
        expires=NOW + 1,
        nonce="n",
        tag="t",
        body=b"",
    )
    assert fields["Signature-Input"] == (
        'sig1=("@method" "@target-uri" "content-digest")'
        f';created={NOW};expires={NOW + 1};nonce="n";keyid="k";alg="ed25519";tag="t"'
    )
    assert fields["Content-Digest"] == "sha-256=:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=:"


def _replace(request: Request, name: str, value: str) -> Request:
    lines = [(n, v) for n, v in request.headers.items() if n != name.lower()]
    return Request(request.method, request.target_uri, [*lines, (name, value)])


def _edit_input(request: Request, old: str, new: str) -> Request:
    value = request.headers.get_all("signature-input")[0]
    assert old in value
    return _replace(request, "Signature-Input", value.replace(old, new))


TAMPERING: list[tuple[str, Callable[[Request], Request], type[Exception]]] = [
    ("method", lambda r: Request("PUT", r.target_uri, r.headers), VerificationError),
    (
        "path",
        lambda r: Request(r.method, r.target_uri.replace("inbox", "feed"), r.headers),
        VerificationError,
    ),
    (
        "query",
        lambda r: Request(r.method, r.target_uri.replace("7", "8"), r.headers),
        VerificationError,
    ),
    (
        "host",
        lambda r: Request(r.method, r.target_uri.replace("us-aisi", "uk-aisi"), r.headers),
        VerificationError,
    ),
    (
        "scheme",
        lambda r: Request(r.method, r.target_uri.replace("https", "http"), r.headers),
        VerificationError,
    ),
    (
        "digest header",
        lambda r: _replace(r, "Content-Digest", content_digest(b"other body")),
        VerificationError,
    ),
    (
        "created",
        lambda r: _edit_input(r, f"created={NOW}", f"created={NOW + 1}"),
        VerificationError,
    ),
    (
        "expires",
        lambda r: _edit_input(r, f"expires={NOW + 300}", f"expires={NOW + 301}"),
        VerificationError,
    ),
    ("nonce", lambda r: _edit_input(r, '"nonce-1"', '"nonce-2"'), VerificationError),
    (
        "keyid, to another known key",
        lambda r: _edit_input(r, KEYID, OTHER.fingerprint),
        VerificationError,
    ),
    (
        "keyid, to an unknown key",
        lambda r: _edit_input(r, KEYID, "nobody"),
        VerificationUnavailableError,
    ),
    (
        "coverage dropped",
        lambda r: _edit_input(r, ' "content-digest"', ""),
        VerificationError,
    ),
    (
        "content-type coverage dropped",
        lambda r: _edit_input(r, ' "content-type"', ""),
        VerificationError,
    ),
    (
        "alg",
        lambda r: _edit_input(r, '"ed25519"', '"rsa-pss-sha512"'),
        VerificationUnavailableError,
    ),
    (
        "signature bytes",
        lambda r: _replace(r, "Signature", "sig1=:" + base64.b64encode(bytes(64)).decode() + ":"),
        VerificationError,
    ),
]


@pytest.mark.parametrize(("tamper", "error"), [pytest.param(t, e, id=i) for i, t, e in TAMPERING])
def test_tampering_is_detected(
    tamper: Callable[[Request], Request], error: type[Exception]
) -> None:
    good = signed()
    verify(good)
    with pytest.raises(error):
        verify(tamper(good))


def test_tampered_body_fails_its_digest() -> None:
    verified = verify(signed())
    with pytest.raises(VerificationError):
        verify_content_digest(signed().headers.get_all("content-digest")[0], BODY + b"!")
    digester = ContentDigester()
    digester.update(b"another body")
    with pytest.raises(VerificationError):
        digester.verify(verified.content_digests)


@pytest.mark.parametrize(
    ("now", "kwargs", "match"),
    [
        (NOW - 31, {}, "future"),
        (NOW + 300 + 31, {"expires": None}, "too old"),
        (NOW + 100, {"expires": NOW + 60}, "expired"),
    ],
)
def test_time_checks(now: int, kwargs: dict[str, Any], match: str) -> None:
    request = signed(**kwargs)
    with pytest.raises(VerificationError, match=match):
        verify(request, now=now)


@pytest.mark.parametrize("now", [NOW - 30, NOW, NOW + 300 + 30])
def test_clock_skew_is_tolerated(now: int) -> None:
    """30 s either side of the window is accepted, and the signature is reported as signed."""
    verified = verify(signed(expires=None), now=now)
    assert isinstance(verified, VerifiedSignature)
    assert (verified.keyid, verified.created, verified.expires) == (KEYID, NOW, None)
    assert verified.nonce == "nonce-1"
    # One second beyond either edge is refused: the tolerance is exactly the skew.
    if now != NOW:
        with pytest.raises(VerificationError):
            verify(signed(expires=None), now=now - 1 if now < NOW else now + 1)


def test_expires_before_created_is_refused() -> None:
    with pytest.raises(MalformedError):
        signed(expires=NOW - 1)


def test_replayed_nonce_is_refused_and_only_signed_nonces_are_recorded() -> None:
    nonces = Nonces()
    request = signed()
    verify(request, nonce_seen=nonces)
    with pytest.raises(VerificationError, match="replay"):
        verify(request, nonce_seen=nonces)
    forged = _edit_input(signed(nonce="fresh"), '"fresh"', '"other"')
    with pytest.raises(VerificationError):
        verify(forged, nonce_seen=nonces)
    assert (KEYID, "other") not in nonces.seen
    with pytest.raises(VerificationError, match="nonce"):
        verify(signed(nonce=None))


def test_required_components() -> None:
    request = signed(components=("@method", "@target-uri"), body=b"")
    with pytest.raises(VerificationError, match="content-digest"):
        verify(request)
    verify(request, required_components=("@method", "@target-uri"))
    with pytest.raises(MalformedError):
        verify(request, required_components=())


def test_unsigned_and_unknown_signatures() -> None:
    with pytest.raises(VerificationUnavailableError):
        verify(Request("GET", URL))
    with pytest.raises(VerificationUnavailableError):
        verify(signed(label="other"), label="sig1")
    with pytest.raises(VerificationUnavailableError):
        verify(signed(tag="a"), tag="b")


def test_several_signatures_are_chosen_by_label_or_tag() -> None:
    first = signed(tag="federation")
    second_fields = sign_request(
        first, key=OTHER, keyid=OTHER.fingerprint, created=NOW, nonce="n2", label="proxy"
    )
    both = first.with_headers(second_fields)
    assert len(both.headers.get_all("signature-input")) == 2
    with pytest.raises(MalformedError, match="several"):
        verify(both)
    assert verify(both, tag="federation").keyid == KEYID
    assert verify(both, label="proxy").keyid == OTHER.fingerprint
    with pytest.raises(MalformedError, match="already"):
        sign_request(first, key=KEY, keyid=KEYID, created=NOW, nonce="x", label="sig1")


MALFORMED_INPUTS = [
    ("not a dictionary", "sig1=(", "sig1=:AA==:"),
    ("not an inner list", 'sig1="@method";created=1', "sig1=:AA==:"),
    ("component is a token", "sig1=(method);created=1", "sig1=:AA==:"),
    ("unknown parameter", 'sig1=("@method");created=1;foo="bar"', "sig1=:AA==:"),
    ("created is a string", 'sig1=("@method");created="1"', "sig1=:AA==:"),
    ("keyid is a token", 'sig1=("@method");created=1;keyid=k', "sig1=:AA==:"),
    ("created is a boolean", 'sig1=("@method");created', "sig1=:AA==:"),
    ("signature is a string", 'sig1=("@method");created=1', 'sig1="AA=="'),
    ("signature has params", 'sig1=("@method");created=1', "sig1=:AA==:;x"),
    ("no matching signature", 'sig1=("@method");created=1', "sig2=:AA==:"),
    ("duplicate label", 'sig1=("@method");created=1, sig1=("@path");created=1', "sig1=:AA==:"),
    ("too many", ", ".join(f's{i}=("@method")' for i in range(9)), "s0=:AA==:"),
    (
        "too many components",
        "sig1=(" + " ".join(f'"x-{i}"' for i in range(33)) + ")",
        "sig1=:AA==:",
    ),
]


@pytest.mark.parametrize(
    ("sig_input", "signature"),
    [pytest.param(i, s, id=n) for n, i, s in MALFORMED_INPUTS],
)
def test_malformed_signature_fields(sig_input: str, signature: str) -> None:
    request = Request("GET", URL, {"Signature-Input": sig_input, "Signature": signature})
    with pytest.raises(MalformedError):
        verify(
            request, label="sig1" if "sig1" in sig_input and "too many" not in sig_input else None
        )


def test_signature_of_the_wrong_length() -> None:
    request = _replace(signed(), "Signature", "sig1=:" + base64.b64encode(bytes(63)).decode() + ":")
    with pytest.raises(VerificationError, match="64 bytes"):
        verify(request)


def test_signing_input_checks() -> None:
    request = Request("GET", URL, {"Content-Digest": content_digest(b"")})
    for kwargs in (
        {"components": ()},
        {"label": "Sig"},
        {"body": b""},
        {"components": ("@status",)},
        {"components": ["x-missing"]},
    ):
        args: dict[str, Any] = {"key": KEY, "keyid": KEYID, "created": NOW, "nonce": "n"}
        args.update(kwargs)
        with pytest.raises(MalformedError):
            sign_request(request, **args)


def test_signature_fields_survive_a_proxy_that_folds_field_lines() -> None:
    first = signed(tag="federation")
    both = first.with_headers(
        sign_request(
            first, key=OTHER, keyid=OTHER.fingerprint, created=NOW, nonce="n2", label="proxy"
        )
    )
    folded: dict[str, str] = {}
    for name, value in both.headers.items():
        folded[name.title()] = (
            f"{folded[name.title()]}, {value}" if name.title() in folded else value
        )
    proxied = Request(both.method, both.target_uri, folded)
    assert len(proxied.headers.get_all("signature-input")) == 1
    assert verify(proxied, label="sig1").keyid == KEYID
    assert verify(proxied, label="proxy").keyid == OTHER.fingerprint


@settings(max_examples=60, deadline=None)
@given(
    method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH"]),
    path=st.from_regex(r"(/[A-Za-z0-9._~%-]{0,8}){0,4}", fullmatch=True).filter(
        lambda p: "%" not in p
    ),
    query=st.one_of(st.none(), st.from_regex(r"[A-Za-z0-9=&._~-]{0,16}", fullmatch=True)),
    body=st.binary(max_size=64),
    header=st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=20),
)
def test_any_signed_request_verifies_and_a_changed_header_fails(
    method: str, path: str, query: str | None, body: bytes, header: str
) -> None:
    uri = "https://node.example" + path + ("" if query is None else "?" + query)
    request = Request(method, uri, {"X-Entente-Test": header})
    components = (*REQUEST_COMPONENTS, Component("x-entente-test"), Component("@query"))
    signed_request = signed(request, body=body, components=components)
    verified = verify(signed_request, required_components=components)
    assert verified.covers("x-entente-test")
    with pytest.raises(VerificationError):
        verify(_replace(signed_request, "X-Entente-Test", header + "!"))


# --- Responses.


def _signed_response(request: Request, **kwargs: Any) -> Response:
    response = Response(201, {"Content-Type": "application/json"})
    args: dict[str, Any] = {
        "request": request,
        "key": OTHER,
        "keyid": OTHER.fingerprint,
        "created": NOW,
        "body": b'{"receipt": 1}',
        "nonce": "r0",
        "components": RESPONSE_COMPONENTS,
    }
    args.update(kwargs)
    return response.with_headers(sign_response(response, **args))


def test_response_round_trip_bound_to_the_request() -> None:
    request = signed()
    response = _signed_response(request)
    verified = verify_response(response, request=request, resolve_key=resolve, now=NOW)
    assert verified.keyid == OTHER.fingerprint and verified.nonce == "r0"
    # The profile's response covers the request's signature and the media type (RFC 9421 2.4).
    assert verified.covers(request_signature_component("sig1"))
    assert verified.covers("content-type")
    assert verified.content_digests["sha-256"] == hashlib.sha256(b'{"receipt": 1}').digest()
    base = _base(response, '"signature";req;key="sig1"', "@status", request=request).decode()
    assert base.startswith('"signature";req;key="sig1": :')
    assert '"@status": 201' in base


def test_response_tampering() -> None:
    request = signed()
    response = _signed_response(request)
    other_request = signed(nonce="nonce-2")
    with pytest.raises(VerificationError):
        verify_response(response, request=other_request, resolve_key=resolve, now=NOW)
    changed = Response(200, response.headers)
    with pytest.raises(VerificationError):
        verify_response(changed, request=request, resolve_key=resolve, now=NOW)
    moved = Request(request.method, request.target_uri.replace("inbox", "feed"), request.headers)
    with pytest.raises(VerificationError):
        verify_response(response, request=moved, resolve_key=resolve, now=NOW)
    for weaker in (
        ("@status", "content-digest"),
        ("@status", "content-digest", "content-type", '"@method";req', '"@target-uri";req'),
        tuple(c for c in RESPONSE_COMPONENTS if c.name != "content-type"),
    ):
        with pytest.raises(VerificationError, match="does not cover"):
            verify_response(
                _signed_response(request, components=weaker),
                request=request,
                resolve_key=resolve,
                now=NOW,
            )
    with pytest.raises(VerificationError, match="no nonce"):
        verify_response(
            _signed_response(request, nonce=None), request=request, resolve_key=resolve, now=NOW
        )
    nonces = Nonces()
    with_nonce = _signed_response(request, nonce="r1")
    verify_response(with_nonce, request=request, resolve_key=resolve, now=NOW, nonce_seen=nonces)
    with pytest.raises(VerificationError, match="replay"):
        verify_response(
            with_nonce, request=request, resolve_key=resolve, now=NOW, nonce_seen=nonces
        )


# --- Content-Digest (RFC 9530).


def test_content_digest_values() -> None:
    # RFC 9530 Appendix B / RFC 9421 examples for {"hello": "world"}.
    assert content_digest(BODY) == "sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:"
    sha512 = (
        "sha-512=:WZDPaVn/7XgHaAy8pmojAkGWoRx2UFChF41A2svX+TaPm+AbwAgBWnrIiYllu7BNNyealdVLvRwE"
        "mTHWXvJwew==:"
    )
    verify_content_digest(sha512, BODY)
    both = ContentDigester(["sha-256", "sha-512"])
    both.update(BODY)
    assert both.field_value() == content_digest(BODY) + ", " + sha512
    verify_content_digest(both.field_value(), BODY)
    with pytest.raises(VerificationError):
        verify_content_digest(sha512, BODY + b"\n")


@pytest.mark.parametrize(
    ("value", "error"),
    [
        ("md5=:AAAAAAAAAAAAAAAAAAAAAA==:", VerificationUnavailableError),
        ("", VerificationUnavailableError),
        ("sha-256=:AAAA:", MalformedError),
        ('sha-256="X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE="', MalformedError),
        ("sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:,", MalformedError),
        ("sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:, sha-256=:AA==:", MalformedError),
        ("sha-256=" + "A" * MAX_FIELD_BYTES, MalformedError),
    ],
)
def test_malformed_content_digests(value: str, error: type[Exception]) -> None:
    with pytest.raises(error):
        parse_content_digest(value)


def test_unknown_digest_algorithms_are_ignored() -> None:
    value = "md5=:AAAAAAAAAAAAAAAAAAAAAA==:, " + content_digest(BODY)
    assert parse_content_digest(value) == {"sha-256": hashlib.sha256(BODY).digest()}
    with pytest.raises(VerificationUnavailableError):
        ContentDigester(["md5"])
    with pytest.raises(MalformedError):
        ContentDigester([])
    with pytest.raises(MalformedError):
        ContentDigester().verify({"sha-512": bytes(64)})


@settings(max_examples=50, deadline=None)
@given(chunks=st.lists(st.binary(max_size=100), max_size=8))
def test_streamed_digest_equals_whole_body(chunks: list[bytes]) -> None:
    digester = ContentDigester()
    for chunk in chunks:
        digester.update(chunk)
    assert digester.field_value() == content_digest(b"".join(chunks))
