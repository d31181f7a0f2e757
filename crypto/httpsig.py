"""RFC 9421 HTTP Message Signatures with Ed25519, and RFC 9530 ``Content-Digest``.

Pure functions over plain data. A request is a method, an absolute target URI and header field
lines (:class:`Request`); a response is a status and header field lines (:class:`Response`),
signed in the context of the request it answers. The module builds the signature base (RFC 9421
2.5), serializes and strictly parses ``Signature-Input`` and ``Signature`` (4.1, 4.2), and offers
recipes: :func:`sign_request` / :func:`verify_request` and :func:`sign_response` /
:func:`verify_response`.

Entente's profile, which the defaults encode:

* requests cover ``@method``, ``@target-uri`` and ``content-digest`` (every signed request carries
  a ``Content-Digest``, of the empty body when there is none) and carry ``created``, ``expires``,
  ``nonce``, ``keyid`` and ``alg="ed25519"``; the verifier requires ``created``, a fresh one, a
  known ``keyid`` and an unseen ``nonce``;
* requests with a body also cover ``content-type`` (what the receiver parses the body as);
* responses cover ``@status``, ``content-digest``, ``content-type``, ``"@method";req``,
  ``"@target-uri";req`` and the request's own signature, ``"signature";req;key="<label>"``
  (section 2.4: the answer is bound to the one request it answers, so it cannot be replayed
  onto another), and carry ``created``, ``expires``, ``nonce``, ``keyid``, ``alg``. The verifier
  requires all of them (:func:`response_components`); error responses are signed the same way.

Derived components: ``@method``, ``@target-uri``, ``@authority``, ``@scheme``,
``@request-target`` (origin form), ``@path``, ``@query`` and ``@status``; header fields with the
``sf``, ``key``, ``bs`` and ``req`` parameters. ``@query-param`` and trailers (``tr``) are not
supported and fail with :class:`~crypto.errors.VerificationUnavailableError`.

Errors: :class:`~crypto.errors.MalformedError` for input that cannot be parsed or is outside the
profile, :class:`~crypto.errors.VerificationUnavailableError` when verification cannot run (unknown
``keyid``, another algorithm), and :class:`~crypto.errors.VerificationError` when it ran and failed
(bad signature, stale or future ``created``, expired, replayed nonce, a required component not
covered, a body that does not match its digest).

This module does not read bodies from the network, keep the nonce cache, or decide which keys
to trust; it never trusts a ``Host`` header: the verifier passes its own idea of the target URI.

One cohesive specification: RFC 9421 (signature base, the two header fields, the recipes) with
RFC 9530's ``Content-Digest``, kept in one module so that each step numbers its section.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from crypto import _sfv
from crypto.errors import MalformedError, VerificationError, VerificationUnavailableError
from crypto.keys import SigningKey, VerifyKey

__all__ = [
    "ALGORITHM",
    "MAX_COMPONENTS",
    "MAX_FIELD_BYTES",
    "MAX_HEADER_LINES",
    "MAX_SIGNATURES",
    "MAX_SIGNATURE_BASE_BYTES",
    "REQUEST_COMPONENTS",
    "REQUEST_LABEL",
    "RESPONSE_COMPONENTS",
    "Component",
    "ContentDigester",
    "Headers",
    "Request",
    "Response",
    "SignatureInput",
    "VerifiedSignature",
    "content_digest",
    "parse_content_digest",
    "request_components",
    "request_signature_component",
    "response_components",
    "sign_request",
    "sign_response",
    "signature_base",
    "signature_labels",
    "verify_content_digest",
    "verify_request",
    "verify_response",
]

ALGORITHM = "ed25519"  # RFC 9421 3.3.6, the only algorithm this module signs or verifies

MAX_HEADER_LINES = 256  # field lines in one message
MAX_FIELD_BYTES = 8 * 1024  # bytes of one field's combined value, and of the target URI
MAX_SIGNATURES = 8  # labels in Signature-Input / Signature
MAX_COMPONENTS = 32  # covered components in one signature
MAX_SIGNATURE_BASE_BYTES = 64 * 1024  # bytes

_SIG_PARAM_TYPES: dict[str, type] = {
    "created": int,
    "expires": int,
    "nonce": str,
    "alg": str,
    "keyid": str,
    "tag": str,
}
_DERIVED = frozenset(
    {
        "@method",
        "@target-uri",
        "@authority",
        "@scheme",
        "@request-target",
        "@path",
        "@query",
        "@status",
    }
)
_UNSUPPORTED_DERIVED = frozenset({"@query-param", "@signature-params"})
_FIELD_PARAMS = frozenset({"sf", "key", "bs", "req", "tr"})
# Fields known to be Dictionaries (RFC 9530, RFC 9421 4.1-4.2, 5.1): the only ones ";sf" accepts.
_DICTIONARY_FIELDS = frozenset(
    {
        "content-digest",
        "repr-digest",
        "want-content-digest",
        "want-repr-digest",
        "signature",
        "signature-input",
        "accept-signature",
    }
)
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_URI = re.compile(
    r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*)://"
    r"(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._~!$&'()*+,;=%]+)"
    r"(?::(?P<port>[0-9]{1,5}))?"
    r"(?P<path>(?:/[A-Za-z0-9\-._~!$&'()*+,;=:@%]*)*)"
    r"(?:\?(?P<query>[A-Za-z0-9\-._~!$&'()*+,;=:@/?%]*))?"
)
_BAD_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")
_OBS_FOLD = re.compile(r"\r\n[ \t]+")
_DEFAULT_PORTS = {"http": 80, "https": 443}
_DIGESTS: dict[str, Callable[[], Any]] = {
    "sha-256": hashlib.sha256,
    "sha-512": hashlib.sha512,
}
_DIGEST_SIZES = {"sha-256": 32, "sha-512": 64}


# --- Messages ---------------------------------------------------------------------------------

HeadersLike = Mapping[str, str] | Iterable[tuple[str, str]]


class Headers:
    """Header field lines: ordered, case-insensitive, several lines per name kept apart."""

    __slots__ = ("_lines",)

    def __init__(self, fields: HeadersLike | Headers = ()) -> None:
        if isinstance(fields, Headers):
            self._lines: tuple[tuple[str, str], ...] = fields._lines
            return
        items = fields.items() if isinstance(fields, Mapping) else fields
        lines = []
        for name, value in items:
            # RFC 9110 5.1: a field name is a token; compared case-insensitively.
            if not isinstance(name, str) or not _TOKEN.fullmatch(name):
                raise MalformedError("a header field name is a token")
            if not isinstance(value, str):
                raise MalformedError("a header field value is a string")
            lines.append((name.lower(), value))
            if len(lines) > MAX_HEADER_LINES:
                raise MalformedError(f"at most {MAX_HEADER_LINES} header field lines")
        self._lines = tuple(lines)

    def get_all(self, name: str) -> list[str]:
        name = name.lower()
        return [value for n, value in self._lines if n == name]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and any(n == name.lower() for n, _ in self._lines)

    def items(self) -> tuple[tuple[str, str], ...]:
        return self._lines

    def with_fields(self, fields: Mapping[str, str]) -> Headers:
        """A copy with extra field lines appended (what a signer adds)."""
        return Headers([*self._lines, *fields.items()])

    def __repr__(self) -> str:
        return f"Headers({[n for n, _ in self._lines]})"


@dataclass(frozen=True)
class _Uri:
    scheme: str
    host: str
    port: int | None  # None when absent or the scheme's default
    path: str
    query: str | None

    @property
    def authority(self) -> str:
        return self.host if self.port is None else f"{self.host}:{self.port}"


def _parse_uri(uri: str) -> _Uri:
    """An absolute http(s) URI without userinfo or fragment, percent-encoded, ASCII."""
    if not isinstance(uri, str) or len(uri) > MAX_FIELD_BYTES or not uri.isascii():
        raise MalformedError("the target URI is an ASCII absolute URI")
    match = _URI.fullmatch(uri)
    if match is None or _BAD_PERCENT.search(uri):
        raise MalformedError("the target URI is an absolute http(s) URI without a fragment")
    scheme = match["scheme"].lower()
    if scheme not in _DEFAULT_PORTS:
        raise MalformedError("the target URI scheme is http or https")
    port = int(match["port"]) if match["port"] else None
    if port is not None and not 0 < port < 65536:
        raise MalformedError("the target URI port is out of range")
    if port == _DEFAULT_PORTS[scheme]:
        port = None
    return _Uri(scheme, match["host"].lower(), port, match["path"], match["query"])


class Request:
    """An HTTP request as signatures see it: method, absolute target URI, header field lines.

    On the verifying side, build ``target_uri`` from the server's own configured origin and the
    request target, never from a ``Host`` header alone.
    """

    __slots__ = ("headers", "method", "target_uri", "uri")

    def __init__(self, method: str, target_uri: str, headers: HeadersLike | Headers = ()) -> None:
        # RFC 9110 9.1: a method is a case-sensitive token.
        if not isinstance(method, str) or not _TOKEN.fullmatch(method) or len(method) > 32:
            raise MalformedError("a method is a token")
        self.method = method
        self.target_uri = target_uri
        self.uri = _parse_uri(target_uri)
        self.headers = Headers(headers)

    def with_headers(self, fields: Mapping[str, str]) -> Request:
        return Request(self.method, self.target_uri, self.headers.with_fields(fields))

    def __repr__(self) -> str:
        return f"Request({self.method} {self.target_uri})"


class Response:
    """An HTTP response as signatures see it: status code and header field lines."""

    __slots__ = ("headers", "status")

    def __init__(self, status: int, headers: HeadersLike | Headers = ()) -> None:
        if not isinstance(status, int) or isinstance(status, bool) or not 100 <= status <= 999:
            raise MalformedError("a status code is three digits")
        self.status = status
        self.headers = Headers(headers)

    def with_headers(self, fields: Mapping[str, str]) -> Response:
        return Response(self.status, self.headers.with_fields(fields))

    def __repr__(self) -> str:
        return f"Response({self.status})"


# --- Content-Digest (RFC 9530) -------------------------------------------------------------


class ContentDigester:
    """Incremental digests of a (streamed) body, for ``Content-Digest``."""

    __slots__ = ("_hashes",)

    def __init__(self, algorithms: Iterable[str] = ("sha-256",)) -> None:
        self._hashes: dict[str, Any] = {}
        for alg in algorithms:
            if alg not in _DIGESTS:
                raise VerificationUnavailableError(f"unsupported digest algorithm {alg[:32]!r}")
            self._hashes[alg] = _DIGESTS[alg]()
        if not self._hashes:
            raise MalformedError("a digester needs at least one algorithm")

    def update(self, chunk: bytes) -> None:
        for h in self._hashes.values():
            h.update(chunk)

    def digests(self) -> dict[str, bytes]:
        return {alg: h.digest() for alg, h in self._hashes.items()}

    def field_value(self) -> str:
        """The ``Content-Digest`` field value: a Dictionary of Byte Sequences (RFC 9530 2)."""
        members: dict[str, _sfv.Member] = {
            alg: _sfv.Item(digest) for alg, digest in self.digests().items()
        }
        return _sfv.serialize_dictionary(members)

    def verify(self, expected: Mapping[str, bytes]) -> None:
        """Raise :class:`VerificationError` unless every expected digest matches."""
        if not expected:
            raise MalformedError("no digest to compare")
        actual = self.digests()
        for alg, digest in expected.items():
            if alg not in actual:
                raise MalformedError(f"this digester does not compute {alg[:32]!r}")
            if not hmac.compare_digest(actual[alg], digest):
                raise VerificationError("the body does not match its Content-Digest")


def content_digest(body: bytes) -> str:
    """``Content-Digest`` (sha-256) of a whole body."""
    d = ContentDigester()
    d.update(body)
    return d.field_value()


def parse_content_digest(value: str) -> dict[str, bytes]:
    """The sha-256 and sha-512 members of a ``Content-Digest`` value; others are ignored.

    Raises :class:`VerificationUnavailableError` when no supported algorithm is present.
    """
    if len(value) > MAX_FIELD_BYTES:
        raise MalformedError("the Content-Digest field is too large")
    members = _sfv.parse_dictionary(value)
    out: dict[str, bytes] = {}
    for alg, member in members.items():
        # RFC 9530 2: "A recipient MAY ignore any or all digests"; only sha-256 and sha-512 are
        # active in the registry (5), the others are deprecated or insecure.
        if alg not in _DIGESTS:
            continue
        if not isinstance(member, _sfv.Item) or not isinstance(member.value, bytes):
            raise MalformedError(f"the {alg} digest is a byte sequence")
        if len(member.value) != _DIGEST_SIZES[alg]:
            raise MalformedError(f"the {alg} digest has the wrong length")
        out[alg] = member.value
    if not out:
        raise VerificationUnavailableError("Content-Digest carries no sha-256 or sha-512 digest")
    return out


def verify_content_digest(value: str, body: bytes) -> None:
    """Check a whole body against a ``Content-Digest`` value (every supported member)."""
    expected = parse_content_digest(value)
    d = ContentDigester(expected)
    d.update(body)
    d.verify(expected)


# --- Components and signature parameters -----------------------------------------------------


@dataclass(frozen=True)
class Component:
    """A component identifier: a lowercase name and its parameters (RFC 9421 2)."""

    name: str
    params: _sfv.Params = ()

    def __post_init__(self) -> None:
        if not self.name or self.name != self.name.lower() or self.name.strip() != self.name:
            raise MalformedError("a component name is lowercase")
        _sfv.serialize_item(_sfv.Item(self.name, self.params))  # printable ASCII, valid params

    @classmethod
    def parse(cls, text: str) -> Component:
        """A bare name (``content-digest``) or a serialized identifier (``"@method";req``)."""
        if text.startswith('"'):
            item = _sfv.parse_item(text)
            if not isinstance(item.value, str) or isinstance(item.value, _sfv.Token):
                raise MalformedError("a component name is a string")
            return cls(item.value, item.params)
        return cls(text)

    @classmethod
    def of(cls, value: str | Component) -> Component:
        return value if isinstance(value, Component) else cls.parse(value)

    def serialize(self) -> str:
        return _sfv.serialize_item(_sfv.Item(self.name, self.params))

    @property
    def identity(self) -> tuple[str, frozenset[tuple[str, _sfv.BareItem]]]:
        """Equal for identifiers that differ only in parameter order."""
        return self.name, frozenset(self.params)

    def param(self, key: str) -> _sfv.BareItem | None:
        for k, v in self.params:
            if k == key:
                return v
        return None

    def __str__(self) -> str:
        return self.serialize()


def request_signature_component(label: str) -> Component:
    """``"signature";req;key="<label>"``: a response signature covering the request's."""
    return Component("signature", (("req", True), ("key", label)))


REQUEST_COMPONENTS: tuple[Component, ...] = (
    Component("@method"),
    Component("@target-uri"),
    Component("content-digest"),
)
REQUEST_LABEL = "sig1"  # the label Entente signs requests under
_OPTIONAL = ("content-type", "range", "entente-resume-offset")  # covered when present


def request_components(request: Request) -> tuple[Component, ...]:
    """What a request covers in Entente's profile: :data:`REQUEST_COMPONENTS`, ``content-type``
    when the request has one (its body is parsed by it), ``range`` when it has one (it says
    which bytes the answer carries), and ``entente-resume-offset`` when it has one (it says
    where in a delivery's ciphertext the body's bytes start)."""
    extra = tuple(Component(name) for name in _OPTIONAL if name in request.headers)
    return (*REQUEST_COMPONENTS, *extra)


def response_components(request_label: str = REQUEST_LABEL) -> tuple[Component, ...]:
    """What a response covers in Entente's profile, answering a request signed as
    ``request_label``: its status, body digest and media type, and the request's method,
    target URI and signature (RFC 9421 2.4)."""
    return (
        Component("@status"),
        Component("content-digest"),
        Component("content-type"),
        Component("@method", (("req", True),)),
        Component("@target-uri", (("req", True),)),
        request_signature_component(request_label),
    )


RESPONSE_COMPONENTS: tuple[Component, ...] = response_components()


def signature_labels(message: Request | Response) -> tuple[str, ...]:
    """The labels of the signatures ``message`` carries (its ``Signature-Input`` members)."""
    if "signature-input" not in message.headers:
        return ()
    return tuple(_parse_signature_field(message.headers, "signature-input"))


@dataclass(frozen=True)
class SignatureInput:
    """The covered components and signature parameters of one signature (RFC 9421 2.3)."""

    components: tuple[Component, ...]
    params: _sfv.Params

    def serialize(self) -> str:
        """The ``@signature-params`` value: a parameterized Inner List (RFC 9421 2.3)."""
        # 2.3 (2, 3): the covered components, in order, as an Inner List of Strings.
        items = tuple(_sfv.Item(c.name, c.params) for c in self.components)
        # 2.3 (4, 5): the parameters, in their chosen order.
        return _sfv.serialize_member(_sfv.InnerList(items, self.params))

    def get(self, key: str) -> _sfv.BareItem | None:
        for k, v in self.params:
            if k == key:
                return v
        return None

    @classmethod
    def from_member(cls, member: _sfv.Member) -> SignatureInput:
        """Check one Signature-Input member strictly against RFC 9421 4.1 and the profile."""
        if not isinstance(member, _sfv.InnerList):
            raise MalformedError("a Signature-Input member is an inner list")
        if len(member.items) > MAX_COMPONENTS:
            raise MalformedError(f"a signature covers at most {MAX_COMPONENTS} components")
        components = []
        for item in member.items:
            if not isinstance(item.value, str) or isinstance(item.value, _sfv.Token):
                raise MalformedError("a covered component is a string")
            components.append(Component(item.value, item.params))
        for key, value in member.params:
            expected = _SIG_PARAM_TYPES.get(key)
            if expected is None:
                raise MalformedError(f"unexpected signature parameter {key!r}")
            if not isinstance(value, expected) or isinstance(value, bool | _sfv.Token):
                raise MalformedError(f"the {key!r} signature parameter has the wrong type")
        return cls(tuple(components), member.params)


# --- The signature base (RFC 9421 2.5) -------------------------------------------------------


def _field_lines(headers: Headers, name: str) -> list[str]:
    lines = headers.get_all(name)
    if not lines:
        raise MalformedError(f"the covered field {name!r} is not in the message")
    out = []
    for line in lines:
        # 2.1 (2): strip leading and trailing whitespace; (3) replace obs-fold with one space.
        out.append(_OBS_FOLD.sub(" ", line).strip(" \t"))
    return out


def _check_value(value: str, what: str) -> str:
    # 2.5: the signature base is US-ASCII; field-content has no CR, LF or other controls.
    if len(value) > MAX_FIELD_BYTES:
        raise MalformedError(f"the value of {what} is too large")
    if not value.isascii() or any((ch < " " and ch != "\t") or ch == "\x7f" for ch in value):
        raise MalformedError(f"the value of {what} has characters a signature cannot cover")
    return value


def _field_value(component: Component, headers: Headers) -> str:
    name = component.name
    params = {k for k, _ in component.params} - {"req"}
    unknown = params - _FIELD_PARAMS
    if unknown:
        raise MalformedError(f"unknown parameter {sorted(unknown)[0]!r} on {name!r}")
    if "tr" in params:
        raise VerificationUnavailableError("trailer fields are not supported")
    if "bs" in params and params & {"sf", "key"}:
        # 2.5 (2.4): incompatible parameters produce an error.
        raise MalformedError("bs cannot be combined with sf or key")
    for flag in ("sf", "bs", "req"):
        value = component.param(flag)
        if value is not None and value is not True:
            raise MalformedError(f"{flag} is a boolean flag")
    lines = _field_lines(headers, name)
    if "bs" in params:
        # 2.1.3: each field line as a Byte Sequence, serialized as a List.
        try:
            wrapped = [_sfv.Item(line.encode("latin-1")) for line in lines]
        except UnicodeEncodeError as exc:
            raise MalformedError(f"the field {name!r} is not made of bytes") from exc
        return _sfv.serialize_list(tuple(wrapped))
    # 2.1 (4): concatenate the values with ", ".
    combined = _check_value(", ".join(lines), repr(name))
    if "key" in params:
        # 2.1.2: the named member of a Dictionary, re-serialized.
        key = component.param("key")
        if not isinstance(key, str) or isinstance(key, _sfv.Token):
            raise MalformedError("the key parameter is a string")
        members = _sfv.parse_dictionary(combined)
        if key not in members:
            raise MalformedError(f"the field {name!r} has no member {key!r}")
        return _sfv.serialize_member(members[key])
    if "sf" in params:
        # 2.1.1: strict serialization; this module knows only Dictionary fields.
        if name not in _DICTIONARY_FIELDS:
            raise VerificationUnavailableError(f"the structured type of {name!r} is not known")
        return _sfv.serialize_dictionary(_sfv.parse_dictionary(combined))
    return combined


def _derived_value(name: str, message: Request | Response) -> str:
    if name == "@status":
        # 2.2.9: responses only; three digits.
        if not isinstance(message, Response):
            raise MalformedError("@status is not a request component")
        return f"{message.status:03d}"
    if not isinstance(message, Request):
        raise MalformedError(f"{name} in a response needs the req parameter")
    uri = message.uri
    path = uri.path or "/"  # 2.2.6: an empty path is normalized as "/"
    query = "" if uri.query is None else "?" + uri.query
    if name == "@method":
        return message.method  # 2.2.1: case-sensitive, as sent
    if name == "@target-uri":
        return f"{uri.scheme}://{uri.authority}{path}{query}"  # 2.2.2
    if name == "@authority":
        return uri.authority  # 2.2.3: lowercase host, default port omitted
    if name == "@scheme":
        return uri.scheme  # 2.2.4: lowercase
    if name == "@request-target":
        return path + query  # 2.2.5: origin form
    if name == "@path":
        return path  # 2.2.6
    if name == "@query":
        return "?" + (uri.query or "")  # 2.2.7: "?" alone when absent
    raise VerificationUnavailableError(f"unsupported derived component {name}")


def _component_value(
    component: Component, message: Request | Response, request: Request | None
) -> str:
    # 2.5 (2.4): determine the component value.
    req = component.param("req")
    if req is not None:
        if req is not True:
            raise MalformedError("req is a boolean flag")
        # "If the component identifier contains the req parameter and the target message is a
        # request, produce an error"; otherwise the context is the related request.
        if isinstance(message, Request):
            raise MalformedError("the req parameter is only valid in a response signature")
        if request is None:
            raise MalformedError("a req component needs the request the response answers")
        context: Request | Response = request
    else:
        context = message
    name = component.name
    if name.startswith("@"):
        if name in _UNSUPPORTED_DERIVED:
            raise VerificationUnavailableError(f"unsupported derived component {name}")
        if name not in _DERIVED:
            raise VerificationUnavailableError(f"unknown derived component {name[:32]!r}")
        if {k for k, _ in component.params} - {"req"}:
            raise MalformedError(f"unknown parameter on {name}")
        return _check_value(_derived_value(name, context), name)
    if not _TOKEN.fullmatch(name):
        raise MalformedError("a field component name is a field name")
    return _field_value(component, context.headers)


def signature_base(
    message: Request | Response,
    signature_input: SignatureInput,
    *,
    request: Request | None = None,
) -> bytes:
    """The RFC 9421 2.5 signature base; ``request`` is the request a response answers."""
    seen: set[tuple[str, frozenset[tuple[str, _sfv.BareItem]]]] = set()
    # 2.5 (1): let the output be an empty string.
    lines: list[str] = []
    size = 0
    # 2.5 (2): for each covered component, in order:
    for component in signature_input.components:
        if component.name == "@signature-params":
            raise MalformedError("@signature-params is never a covered component")
        if component.identity in seen:
            raise MalformedError(f"the component {component} is covered twice")
        seen.add(component.identity)
        # (2.1-2.3) the serialized identifier, ":", " "; (2.4, 2.5) its value; (2.6) "\n".
        line = f"{component.serialize()}: {_component_value(component, message, request)}\n"
        size += len(line)
        if size > MAX_SIGNATURE_BASE_BYTES:
            raise MalformedError("the signature base is too large")
        lines.append(line)
    # 2.5 (3): the "@signature-params" line, without a final newline.
    lines.append(f'"@signature-params": {signature_input.serialize()}')
    # 2.5 (4): return the output.
    return "".join(lines).encode("ascii")


# --- Signing (RFC 9421 3.1, 4) ---------------------------------------------------------------


def _check_label(label: str) -> None:
    _sfv.serialize_dictionary({label: _sfv.Item(True)})  # a label is a dictionary key


def _existing_labels(headers: Headers) -> set[str]:
    labels: set[str] = set()
    for name in ("signature-input", "signature"):
        if name in headers:
            labels |= set(_parse_signature_field(headers, name))
    return labels


def _sign(
    message: Request | Response,
    *,
    request: Request | None,
    key: SigningKey,
    keyid: str,
    created: int,
    expires: int | None,
    nonce: str | None,
    components: Sequence[str | Component],
    label: str,
    tag: str | None,
    include_alg: bool,
) -> dict[str, str]:
    _check_label(label)
    if label in _existing_labels(message.headers):
        raise MalformedError(f"the message already carries a signature labelled {label!r}")
    if expires is not None and expires < created:
        raise MalformedError("expires is before created")
    if not components:
        raise MalformedError("a signature covers at least one component")
    if len(components) > MAX_COMPONENTS:
        raise MalformedError(f"a signature covers at most {MAX_COMPONENTS} components")
    # 3.1 (2-4): creation time, expiry, the ordered covered components and their parameters.
    params: list[tuple[str, _sfv.BareItem]] = [("created", created)]
    if expires is not None:
        params.append(("expires", expires))
    if nonce is not None:
        params.append(("nonce", nonce))
    params.append(("keyid", keyid))
    if include_alg:
        params.append(("alg", ALGORITHM))
    if tag is not None:
        params.append(("tag", tag))
    sig_input = SignatureInput(tuple(Component.of(c) for c in components), tuple(params))
    # 3.1 (5): the signature base; (6) HTTP_SIGN, Ed25519 (3.3.6); (7) the output value.
    signature = key.sign(signature_base(message, sig_input, request=request))
    # 4.1, 4.2: one Dictionary member each, under the same label.
    return {
        "Signature-Input": f"{label}={sig_input.serialize()}",
        "Signature": _sfv.serialize_dictionary({label: _sfv.Item(signature)}),
    }


def _with_digest(
    message: Request | Response, body: bytes | None
) -> tuple[dict[str, str], Request | Response]:
    if body is None:
        return {}, message
    if "content-digest" in message.headers:
        raise MalformedError("the message already carries a Content-Digest")
    added = {"Content-Digest": content_digest(body)}
    return added, message.with_headers(added)


def sign_request(
    request: Request,
    *,
    key: SigningKey,
    keyid: str,
    created: int,
    nonce: str | None,
    expires: int | None = None,
    components: Sequence[str | Component] | None = None,
    label: str = REQUEST_LABEL,
    tag: str | None = None,
    include_alg: bool = True,
    body: bytes | None = None,
) -> dict[str, str]:
    """Sign ``request``; return the header fields to add (``Signature-Input``, ``Signature``).

    ``components`` defaults to the profile's (:func:`request_components`: with
    ``content-type`` when the request has one).

    With ``body``, a sha-256 ``Content-Digest`` of it is computed, covered if listed in
    ``components``, and returned with the other fields. Without it, a covered
    ``content-digest`` must already be in the request's headers (see :class:`ContentDigester`
    for streamed bodies).
    """
    added, message = _with_digest(request, body)
    fields = _sign(
        message,
        request=None,
        key=key,
        keyid=keyid,
        created=created,
        expires=expires,
        nonce=nonce,
        components=request_components(request) if components is None else components,
        label=label,
        tag=tag,
        include_alg=include_alg,
    )
    return {**added, **fields}


def sign_response(
    response: Response,
    *,
    request: Request,
    key: SigningKey,
    keyid: str,
    created: int,
    nonce: str | None = None,
    expires: int | None = None,
    components: Sequence[str | Component] = RESPONSE_COMPONENTS,
    label: str = "sig1",
    tag: str | None = None,
    include_alg: bool = True,
    body: bytes | None = None,
) -> dict[str, str]:
    """Sign ``response`` in the context of ``request``; return the header fields to add.

    Add :func:`request_signature_component` to ``components`` to bind the response to the
    request's own signature.
    """
    added, message = _with_digest(response, body)
    fields = _sign(
        message,
        request=request,
        key=key,
        keyid=keyid,
        created=created,
        expires=expires,
        nonce=nonce,
        components=components,
        label=label,
        tag=tag,
        include_alg=include_alg,
    )
    return {**added, **fields}


# --- Verifying (RFC 9421 3.2) ----------------------------------------------------------------


@dataclass(frozen=True)
class VerifiedSignature:
    """What a verified signature vouches for."""

    label: str
    keyid: str
    created: int
    expires: int | None
    nonce: str | None
    tag: str | None
    components: tuple[Component, ...]
    content_digests: Mapping[str, bytes]  # the covered Content-Digest, empty if not covered

    def covers(self, component: str | Component) -> bool:
        identity = Component.of(component).identity
        return any(c.identity == identity for c in self.components)


def _parse_signature_field(headers: Headers, name: str) -> dict[str, _sfv.Member]:
    # 4.1, 4.2: Dictionaries; several field lines combine with ", " (RFC 9110 5.3).
    value = ", ".join(headers.get_all(name))
    if len(value) > MAX_FIELD_BYTES:
        raise MalformedError(f"the {name} field is too large")
    members = _sfv.parse_dictionary(value)
    if len(members) > MAX_SIGNATURES:
        raise MalformedError(f"at most {MAX_SIGNATURES} signatures in one message")
    return members


def _select(
    headers: Headers, *, label: str | None, tag: str | None
) -> tuple[str, SignatureInput, bytes]:
    # 3.2 (1): parse Signature and Signature-Input and choose the signature to verify.
    if "signature-input" not in headers or "signature" not in headers:
        raise VerificationUnavailableError("the message is not signed")
    inputs = _parse_signature_field(headers, "signature-input")
    signatures = _parse_signature_field(headers, "signature")
    if label is not None:
        candidates = [label] if label in inputs else []
    elif tag is not None:
        candidates = [
            name
            for name, member in inputs.items()
            if isinstance(member, _sfv.InnerList) and ("tag", tag) in member.params
        ]
    else:
        candidates = list(inputs)
    if not candidates:
        raise VerificationUnavailableError("no signature matches the expected label or tag")
    if len(candidates) > 1:
        raise MalformedError("several signatures match; name the label or tag to verify")
    chosen = candidates[0]
    # 3.2 (1.2): the chosen Signature needs its Signature-Input, and the reverse.
    if chosen not in signatures:
        raise MalformedError(f"no Signature member for the label {chosen!r}")
    # 3.2 (2): the Signature-Input member as a parameterized Inner List.
    sig_input = SignatureInput.from_member(inputs[chosen])
    # 3.2 (3): the Signature member as a Byte Sequence.
    member = signatures[chosen]
    if not isinstance(member, _sfv.Item) or not isinstance(member.value, bytes) or member.params:
        raise MalformedError("a Signature member is a byte sequence")
    return chosen, sig_input, member.value


def _verify(
    message: Request | Response,
    *,
    request: Request | None,
    resolve_key: Callable[[str], VerifyKey | None],
    now: int,
    max_skew: int,
    max_age: int,
    required_components: Sequence[str | Component],
    nonce_seen: Callable[[str, str], bool] | None,
    require_nonce: bool,
    label: str | None,
    tag: str | None,
) -> VerifiedSignature:
    if not required_components:
        raise MalformedError("verification needs at least one required component")
    if max_skew < 0 or max_age < 0:
        raise MalformedError("max_skew and max_age are not negative")
    required = [Component.of(c) for c in required_components]
    chosen, sig_input, signature = _select(message.headers, label=label, tag=tag)

    # 3.2 (4): the parameters and coverage against this document and the application (3.2.1).
    created = sig_input.get("created")
    expires = sig_input.get("expires")
    keyid = sig_input.get("keyid")
    nonce = sig_input.get("nonce")
    alg = sig_input.get("alg")
    sig_tag = sig_input.get("tag")
    if not isinstance(created, int):
        raise VerificationError("the signature has no created time")
    if not isinstance(keyid, str):
        raise VerificationError("the signature has no keyid")
    if require_nonce and not isinstance(nonce, str):
        raise VerificationError("the signature has no nonce")
    if tag is not None and sig_tag != tag:
        raise VerificationError("the signature has the wrong tag")
    covered = {c.identity for c in sig_input.components}
    for component in required:
        if component.identity not in covered:
            raise VerificationError(f"the signature does not cover {component}")
    if created > now + max_skew:
        raise VerificationError("the signature was created in the future")
    if created < now - max_age - max_skew:
        raise VerificationError("the signature is too old")
    if isinstance(expires, int):
        if expires < created:
            raise VerificationError("the signature expires before it was created")
        if expires < now - max_skew:
            raise VerificationError("the signature has expired")

    # 3.2 (5): the key material for keyid; an unknown key means no verification can run.
    key = resolve_key(keyid)
    if key is None:
        raise VerificationUnavailableError("unknown keyid")
    # 3.2 (6): the algorithm is Ed25519 by configuration; an explicit alg must agree.
    if alg is not None and alg != ALGORITHM:
        raise VerificationUnavailableError("unsupported signature algorithm")
    # 3.2 (7): re-create the signature base from the received message.
    base = signature_base(message, sig_input, request=request)
    # 3.2 (8, 9): HTTP_VERIFY with Ed25519 (3.3.6).
    if len(signature) != 64:
        raise VerificationError("an Ed25519 signature is 64 bytes")
    try:
        key.verify(signature, base)
    except VerificationError:
        raise VerificationError("the HTTP message signature does not verify") from None

    # 3.2.1 "Enforcing uniqueness of the nonce parameter", after the signature verified, so
    # that only signed nonces ever reach the cache.
    if nonce_seen is not None and isinstance(nonce, str) and nonce_seen(keyid, nonce):
        raise VerificationError("the nonce was already used (replay)")

    digests: Mapping[str, bytes] = MappingProxyType({})
    if any(
        c.name == "content-digest" and {k for k, _ in c.params} <= {"sf"}
        for c in sig_input.components
    ):
        digests = MappingProxyType(
            parse_content_digest(", ".join(_field_lines(message.headers, "content-digest")))
        )
    return VerifiedSignature(
        label=chosen,
        keyid=keyid,
        created=created,
        expires=expires if isinstance(expires, int) else None,
        nonce=nonce if isinstance(nonce, str) else None,
        tag=sig_tag if isinstance(sig_tag, str) else None,
        components=sig_input.components,
        content_digests=digests,
    )


def verify_request(
    request: Request,
    *,
    resolve_key: Callable[[str], VerifyKey | None],
    now: int,
    nonce_seen: Callable[[str, str], bool],
    max_skew: int = 30,  # seconds of clock difference tolerated either way
    max_age: int = 300,  # seconds after ``created`` a signature is still accepted
    required_components: Sequence[str | Component] | None = None,
    require_nonce: bool = True,
    label: str | None = None,
    tag: str | None = None,
) -> VerifiedSignature:
    """Verify the signature on ``request`` (RFC 9421 3.2) under Entente's profile.

    ``nonce_seen(keyid, nonce)`` must atomically record the pair and return whether it was
    already recorded; it is called only for signatures that verified. A signature without a
    nonce fails unless ``require_nonce=False`` (for signers outside the profile, such as the
    RFC's own examples).
    ``required_components`` defaults to the profile's (:func:`request_components`: with
    ``content-type`` when the request has one, since the body is parsed by it).
    With ``content-digest`` covered, the caller must still check the body against
    :attr:`VerifiedSignature.content_digests` (:class:`ContentDigester`).
    """
    return _verify(
        request,
        request=None,
        resolve_key=resolve_key,
        now=now,
        max_skew=max_skew,
        max_age=max_age,
        required_components=(
            request_components(request) if required_components is None else required_components
        ),
        nonce_seen=nonce_seen,
        require_nonce=require_nonce,
        label=label,
        tag=tag,
    )


def verify_response(
    response: Response,
    *,
    request: Request,
    resolve_key: Callable[[str], VerifyKey | None],
    now: int,
    max_skew: int = 30,  # seconds
    max_age: int = 300,  # seconds
    required_components: Sequence[str | Component] = RESPONSE_COMPONENTS,
    nonce_seen: Callable[[str, str], bool] | None = None,
    require_nonce: bool = True,
    label: str | None = None,
    tag: str | None = None,
) -> VerifiedSignature:
    """Verify the signature on ``response`` to ``request``.

    ``request`` is the request as this client sent it, with its ``Signature`` fields (the
    profile's response covers ``"signature";req``). A nonce is required unless
    ``require_nonce=False``; it is checked against a cache only when ``nonce_seen`` is given
    (the response is bound to its request's signature, whose nonce the receiver checked).
    """
    return _verify(
        response,
        request=request,
        resolve_key=resolve_key,
        now=now,
        max_skew=max_skew,
        max_age=max_age,
        required_components=required_components,
        nonce_seen=nonce_seen,
        require_nonce=require_nonce or nonce_seen is not None,
        label=label,
        tag=tag,
    )
