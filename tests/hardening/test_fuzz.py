"""Property-based fuzzing of the node against its own OpenAPI document (schemathesis), in-process.

Every operation the document lists is fuzzed with schema-valid and schema-invalid cases
(schemathesis positive and negative generation), with a valid token of each role on ``/v1`` and
``/audit/v1``, and, on ``/federation/v1``, with requests correctly RFC 9421-signed by a pinned
partner but carrying malformed bodies (random bytes, truncated and re-signed deliveries, JSON
that is almost a notice). For every response:

- no 5xx;
- every error is an RFC 9457 problem document (``application/problem+json``, a stable
  ``urn:entente:problem:`` type, ``status`` equal to the HTTP status);
- status code, content type, headers and body conform to the document (schemathesis checks).

Bounded and reproducible: derandomized Hypothesis, a fixed number of examples per operation
and role (``EXAMPLES``), no example database. A failure names the operation and the smallest
case Hypothesis found.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.generation.drivers import CoverageGenerator
from schemathesis.generation.feedback import FeedbackSources
from schemathesis.generation.overrides import Override
from schemathesis.python import asgi as asgi_client
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from crypto.vocab import TLP_LABELS
from service.tokens import Role
from tests.hardening.kit import (
    DELIVERY_TYPE,
    PartnerSignature,
    Trio,
    delivery,
    postgres_database,
    share_sync,
    trio,
)

pytestmark = pytest.mark.slow

# Cases per operation, per role and per mode (positive, negative): the budget of the suite.
EXAMPLES = {"sqlite": 15, "postgres": 5}
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
FAMILIES = {
    "public": ("/healthz", "/.well-known/", "/metrics", "/witness/v1/"),
    "v1": ("/v1/",),
    "audit": ("/audit/v1/",),
    "federation": ("/federation/v1/",),
}
# Generous limits so that the fuzzer measures input handling, not the rate limiter.
LIMITS = {
    "rate_limit_per_minute": 1_000_000,
    # GET /v1/events streams until its lifetime ends: short here, so each fuzzed call ends
    "events_max_stream_seconds": 0.2,
    "events_poll_seconds": 0.05,
    "events_max_wait_seconds": 0.2,  # and its long poll (?wait=) waits no longer
}

# The federation's own media types, and a resumable upload's appends, carry bytes: let
# schemathesis send its binary bodies.
schemathesis.serializer.alias(
    [
        "application/vnd.entente.delivery",
        "application/vnd.entente.delivery-batch",
        "application/partial-upload",
    ],
    "application/octet-stream",
)


@dataclass
class Fuzz:
    nodes: Trio
    schema: Any
    backend: str
    sent_id: str
    received_id: str
    manifest: bytes
    ciphertext: bytes


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def fuzz(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Fuzz]:
    root: Path = tmp_path_factory.mktemp("fuzz")
    with _database(request.param) as url:
        nodes = trio(root, db_url=url, **LIMITS)
        sent = share_sync(nodes.uk, b"sent by uk " * 100)
        # An artifact us-aisi shared with uk-aisi, delivered through the real inbox.
        theirs = share_sync(nodes.us, b"sent by us " * 100, partners=["uk-aisi"])
        manifest, ciphertext = delivery(nodes.us, theirs["id"])
        session = asgi_client.get_client(nodes.uk.app)
        body = manifest + b"\n" + ciphertext
        r = session.post(
            "http://uk-aisi/federation/v1/inbox",
            data=body,
            headers={"Content-Type": DELIVERY_TYPE},
            auth=PartnerSignature(nodes.us.node, nodes.uk.node),
        )
        assert r.status_code == 201, r.text
        from service.audit.sequencer import run_sequencer

        run_sequencer(nodes.uk.node)  # a signed checkpoint exists
        schema = schemathesis.openapi.from_asgi("/openapi.json", nodes.uk.app)
        yield Fuzz(nodes, schema, request.param, sent["id"], theirs["id"], manifest, ciphertext)
        from tests.service.nodekit import CREATED

        while CREATED:
            CREATED.pop().db.dispose()


def _database(backend: str) -> Any:
    from contextlib import nullcontext

    return postgres_database() if backend == "postgres" else nullcontext(None)


@pytest.fixture(autouse=True)
def _dispose_nodes() -> None:  # the module's nodes live as long as the module fixture
    return None


@pytest.fixture(autouse=True)
def _quiet() -> Iterator[None]:
    # Refusals are logged; thousands of them would only slow the run down.
    logging.disable(logging.WARNING)
    yield
    logging.disable(logging.NOTSET)


def _operations(fuzz: Fuzz, family: str) -> list[Any]:
    ops = [r.ok() for r in fuzz.schema.get_all_operations()]
    return [op for op in ops if op.path.startswith(FAMILIES[family])]


def _header(response: Any, name: str) -> str:
    value = response.headers.get(name, "")
    return str(value[0] if isinstance(value, list) else value)  # schemathesis keeps lists


def check_problem(response: Any) -> None:
    """Every error is an RFC 9457 problem document with a stable type."""
    if response.status_code < 400:
        return
    if response.request.method == "HEAD":
        return  # the answer to HEAD has no content (RFC 9110 9.3.2): its problem is not sent
    ctype = _header(response, "content-type")
    if response.status_code == 409 and ctype == "text/x.tlog.size":
        return  # tlog-witness (add-checkpoint) shapes this one answer itself
    assert ctype == "application/problem+json", (response.status_code, ctype, response.text)
    doc = response.json()
    assert doc["type"].startswith("urn:entente:problem:"), doc
    assert doc["status"] == response.status_code, doc
    assert isinstance(doc["title"], str) and isinstance(doc["detail"], str), doc


def _coverage_cases(op: Any) -> list[Any]:
    """Schemathesis's coverage phase: deterministic boundary and type-confusion cases (empty and
    over-long strings, huge and negative numbers, wrong types, missing required parts)."""
    generator = CoverageGenerator(
        operation=op,
        generation_modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE],
        generation_config=op.schema.config.generation_for(operation=op, phase="coverage"),
        auth_storage=None,
        override=Override(),
        feedback=FeedbackSources(),
    )
    return list(generator)


# Values that broke, or could break, a layer below the schema: SQL integer and text limits, path
# handling, SQL quoting, bidirectional text, number parsing.
HOSTILE = (
    "\x00",
    "a\x00b",
    str(1 << 63),
    str(1 << 64),
    str(-(1 << 63) - 1),
    "9" * 400,
    "../../../../etc/passwd",
    "..%2f..%2fetc%2fpasswd",
    "'; DROP TABLE artifacts; --",
    "\u202egnp.exe",
    "1e309",
    "NaN",
    "0001-01-01T00:00:00+14:00",  # no UTC time: before year 1 once converted
    "2026-01-01T00:00:00",  # no time zone
    "",
)


def _hostile_cases(op: Any, coverage: list[Any]) -> Iterator[Any]:
    """Each query and path parameter in turn set to each hostile value, on a valid case."""
    base = next((c for c in coverage if c.meta and c.meta.generation.mode.is_positive), None)
    if base is None:
        return
    for location, params in (("query", op.query), ("path_parameters", op.path_parameters)):
        for param in params:
            for value in HOSTILE:
                if location == "path_parameters" and value == "":
                    continue  # an empty path segment is another route
                case = base.operation.Case(
                    path_parameters=dict(base.path_parameters or {}),
                    query=dict(base.query or {}),
                    headers=dict(base.headers or {}),
                    body=base.body,
                    media_type=base.media_type,
                )
                getattr(case, location)[param.name] = value
                yield case


def _check(case: Any, response: Any) -> None:
    check_problem(response)
    case.validate_response(response, checks=CHECKS)


HOSTILE_METADATA = [
    {"embargo_until": "0001-01-01T00:00:00+14:00"},
    {"expires_at": "0001-01-01T00:00:00+23:59"},
    {"expires_at": "9999-12-31T23:59:59-23:59"},
    {"embargo_until": "2026-01-01T00:00:00"},
    {"title": "a\x00b"},
    {"filename": "../../etc/passwd"},
    {"partners": ["us-aisi\x00"]},
    {"tlp": "TLP:PURPLE"},
]


def _hostile_uploads(op: Any) -> Iterator[Any]:
    """Upload metadata one hostile field away from valid (the schema cannot say it)."""
    if op.label != "POST /v1/artifacts":
        return
    for change in HOSTILE_METADATA:
        meta = {"title": "t", "tlp": "TLP:GREEN", "partners": ["us-aisi"], **change}
        body = {"metadata": json.dumps(meta), "file": b"hostile"}
        yield op.Case(body=body, media_type="multipart/form-data")


def _explicit(op: Any, backend: str) -> list[Any]:
    """Coverage and hostile cases; on PostgreSQL only the hostile ones (the values that reach
    the database's own limits), to keep the second backend's run short."""
    coverage = _coverage_cases(op)
    hostile = list(_hostile_cases(op, coverage)) + list(_hostile_uploads(op))
    return hostile if backend == "postgres" and hostile else coverage + hostile


def _run(
    op: Any,
    strategy: Any,
    call: Callable[[Any, Any], Any],
    examples: int,
    explicit: list[Any] = (),  # type: ignore[assignment]
) -> str | None:
    """Fuzz one operation; the failure (after shrinking) as text, or None."""
    for case in explicit:
        try:
            _check(case, call(case, None))
        except Exception as exc:
            return f"{op.label} (coverage case): {type(exc).__name__}: {str(exc)[:3000]}"

    @settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        database=None,
        phases=[Phase.explicit, Phase.generate, Phase.shrink],
        suppress_health_check=list(HealthCheck),
    )
    @given(drawn=strategy)
    def fuzz_operation(drawn: Any) -> None:
        case, extra = drawn
        _check(case, call(case, extra))

    try:
        fuzz_operation()
    except Unsatisfiable:
        return None  # nothing in the operation's inputs can be made schema-invalid
    except Exception as exc:
        return f"{op.label}: {type(exc).__name__}: {str(exc)[:3000]}"
    return None


def _modes(op: Any) -> list[GenerationMode]:
    has_input = bool(op.path_parameters or op.query or op.headers or op.body)
    return (
        [GenerationMode.POSITIVE, GenerationMode.NEGATIVE]
        if has_input
        else [GenerationMode.POSITIVE]
    )


def _share_metadata() -> st.SearchStrategy[str]:
    """``metadata`` parts that are almost right: the schema only says "a JSON string", so
    schemathesis alone never gets past the JSON parser."""
    offsets = st.integers(-(24 * 60 - 1), 24 * 60 - 1).map(
        lambda minutes: timezone(timedelta(minutes=minutes))
    )
    times = st.one_of(
        st.none(),
        st.datetimes(
            min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31), timezones=offsets
        ).map(datetime.isoformat),
        st.sampled_from(["0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59Z", "2026-01-01", "x"]),
    )
    nodes = st.sampled_from(["us-aisi", "ca-aisi", "uk-aisi", "xx-aisi", "US-AISI", "../us", ""])
    terms = st.sampled_from(["evaluation", "evaluation/red-teaming", "cyber", "", "A", "a/", "é"])
    tlps = st.sampled_from([*TLP_LABELS, "TLP:PURPLE", "tlp:green", "TLP:WHITE", ""])
    names = st.one_of(st.text(max_size=40), st.sampled_from(["../../etc/passwd", "a/b", ".."]))
    meta = st.fixed_dictionaries(
        {"title": st.text(max_size=600), "tlp": tlps, "partners": st.lists(nodes, max_size=3)},
        optional={
            "topics": st.lists(terms, max_size=3),
            "purposes": st.lists(terms, max_size=3),
            "embargo_until": times,
            "expires_at": times,
            "filename": names,
            "onward_approved": st.lists(nodes, max_size=2),
            "unknown": st.integers(),
        },
    )
    return st.one_of(meta.map(json.dumps), st.text(max_size=40))


def _cases(op: Any, fuzz: Fuzz, mode: GenerationMode) -> Any:
    """Schemathesis cases, half of them aimed at real artifact ids (otherwise always 404)."""
    base = op.as_strategy(generation_mode=mode)
    if op.label == "POST /v1/artifacts" and mode is GenerationMode.POSITIVE:
        bodies = st.fixed_dictionaries(
            {"metadata": _share_metadata(), "file": st.binary(max_size=512)}
        )
        return st.one_of(
            base,
            bodies.flatmap(
                lambda body: op.as_strategy(body=body, media_type="multipart/form-data")
            ),
        )
    if "artifact_id" not in {p.name for p in op.path_parameters}:
        return base
    real = st.sampled_from([fuzz.sent_id, fuzz.received_id]).flatmap(
        lambda ident: op.as_strategy(generation_mode=mode, path_parameters={"artifact_id": ident})
    )
    return st.one_of(base, real)


@pytest.mark.parametrize("role", list(Role), ids=[r.value for r in Role])
@pytest.mark.parametrize("family", ["public", "v1", "audit"])
def test_fuzz_with_each_role(fuzz: Fuzz, family: str, role: Role) -> None:
    token = fuzz.nodes.uk.auth(role)
    failures = []

    def call(case: Any, _extra: Any) -> requests.Response:
        response: requests.Response = case.call(headers=token)
        return response

    for op in _operations(fuzz, family):
        explicit = _explicit(op, fuzz.backend)
        examples = EXAMPLES[fuzz.backend]
        if family == "public" and role is not Role.PUBLISHER:
            explicit, examples = [], 3  # no token involved: once is enough
        elif explicit and call(explicit[0], None).status_code == 403:
            explicit, examples = explicit[:1], 3  # the role may not use it: refused up front
        for i, mode in enumerate(_modes(op)):
            strategy = st.tuples(_cases(op, fuzz, mode), st.none())
            failure = _run(op, strategy, call, examples, explicit if i == 0 else [])
            if failure:
                failures.append(f"[{mode.value}] {failure}")
    assert not failures, "\n\n".join(failures)


# --- the federation: correctly signed requests with malformed bodies -----------------------------


def _malformed_deliveries(fuzz: Fuzz) -> st.SearchStrategy[bytes]:
    """Bodies around a real delivery: truncated, bit-flipped, manifest altered, junk appended."""
    whole = fuzz.manifest + b"\n" + fuzz.ciphertext

    def flip(data: bytes, at: int, bit: int) -> bytes:
        i = at % len(data)
        return data[:i] + bytes([data[i] ^ (1 << bit)]) + data[i + 1 :]

    return st.one_of(
        st.binary(max_size=2048),
        st.integers(0, len(whole) - 1).map(lambda n: whole[:n]),
        st.tuples(st.integers(0, 10**9), st.integers(0, 7)).map(lambda t: flip(whole, *t)),
        st.binary(min_size=1, max_size=64).map(lambda junk: whole + junk),
        st.binary(max_size=512).map(lambda junk: fuzz.manifest + b"\n" + junk),
        st.binary(max_size=512).map(lambda junk: junk + b"\n" + fuzz.ciphertext),
    )


def _almost_notices(fuzz: Fuzz) -> st.SearchStrategy[bytes]:
    ids = st.sampled_from([fuzz.sent_id, fuzz.received_id, "art_nope", "../../etc/passwd"])
    notice = st.fixed_dictionaries(
        {
            "type": st.sampled_from(["revocation", "access", "other", ""]),
            "notice_id": st.one_of(st.integers(), st.text(max_size=5), st.none()),
            "artifact_id": st.one_of(ids, st.text(max_size=80)),
            "sha256": st.one_of(st.text(max_size=70), st.just("0" * 64)),
        },
        optional={
            "reason": st.text(max_size=600),
            "reader": st.text(max_size=300),
            "read_at": st.one_of(st.text(max_size=40), st.just("9999-12-31T23:59:59Z")),
        },
    )
    anything = st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
        max_leaves=10,
    )
    return st.one_of(
        notice.map(lambda d: json.dumps(d).encode()),
        anything.map(lambda d: json.dumps(d).encode()),
        st.binary(max_size=256),
    )


def _bodies(fuzz: Fuzz, op: Any) -> st.SearchStrategy[Any]:
    if op.path.endswith("/inbox"):
        return st.one_of(st.none(), _malformed_deliveries(fuzz))
    if op.path.endswith("/notices") or op.method.upper() == "POST":
        return st.one_of(st.none(), _almost_notices(fuzz))
    return st.one_of(st.none(), st.binary(max_size=64))  # a GET with a (signed) body


def test_fuzz_federation_signed_malformed(fuzz: Fuzz) -> None:
    auth = PartnerSignature(fuzz.nodes.us.node, fuzz.nodes.uk.node)
    failures = []

    def call(case: Any, body: Any) -> requests.Response:
        if body is None:
            response: requests.Response = case.call(auth=auth)
            return response
        kwargs = case.as_transport_kwargs(base_url="http://uk-aisi")
        for key in ("json", "data", "files"):
            kwargs.pop(key, None)
        kwargs["data"] = body
        if case.operation.path.endswith("/inbox"):
            kwargs.setdefault("headers", {})["Content-Type"] = DELIVERY_TYPE
        session = asgi_client.get_client(fuzz.nodes.uk.app)
        result: requests.Response = session.request(auth=auth, **kwargs)
        return result

    for op in _operations(fuzz, "federation"):
        for i, mode in enumerate(_modes(op)):
            strategy = st.tuples(_cases(op, fuzz, mode), _bodies(fuzz, op))
            explicit = _explicit(op, fuzz.backend) if i == 0 else []
            failure = _run(op, strategy, call, 2 * EXAMPLES[fuzz.backend], explicit)
            if failure:
                failures.append(f"[{mode.value}] {failure}")
    assert not failures, "\n\n".join(failures)


def test_every_operation_is_fuzzed(fuzz: Fuzz) -> None:
    """No route escapes the fuzzer: each belongs to a fuzzed family and has cases."""
    ops = [r.ok() for r in fuzz.schema.get_all_operations()]
    assert len(ops) >= 20
    for op in ops:
        assert any(op.path.startswith(p) for ps in FAMILIES.values() for p in ps), op.label


def test_document_declares_problems(fuzz: Fuzz) -> None:
    """Each error response in the document is a problem document (FastAPI's default 422 body,
    which this node never sends, is gone); API routes declare their auth and rate limits, and
    every operation the 431 its server answers to an oversized request head and the 503 it
    answers when the database does not answer in time."""
    doc = fuzz.nodes.uk.app.openapi()
    assert "HTTPValidationError" not in doc["components"]["schemas"]
    for path, operations in doc["paths"].items():
        for method, op in operations.items():
            assert {"431", "503"} <= set(op["responses"]), (method, path)
            for code, response in op["responses"].items():
                if int(code) >= 400:
                    assert "application/problem+json" in response["content"], (method, path, code)
            if path.startswith(("/v1/", "/audit/v1/", "/federation/v1/")):
                assert {"401", "422", "429"} <= set(op["responses"]), (method, path)
            if path.startswith(("/v1/", "/audit/v1/")):
                assert op["security"] == [{"bearer": []}]


def test_received_fixture_is_real(fuzz: Fuzz) -> None:
    """The fuzzer's received artifact went through the real inbox (so ids hit real rows)."""
    session = asgi_client.get_client(fuzz.nodes.uk.app)
    r = session.get(
        f"http://uk-aisi/v1/artifacts/{fuzz.received_id}", headers=fuzz.nodes.uk.auth(Role.READER)
    )
    assert r.status_code == 200
    assert r.json()["direction"] == "received"
    assert base64.b64decode(r.json()["manifest"]["payload"])
