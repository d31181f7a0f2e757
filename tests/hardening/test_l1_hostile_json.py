"""L1: hostile JSON in signed partner requests, and aborted uploads.

Found: deeply nested JSON or a 5,000-digit number in a notice, receipts, a descriptor or a
delivery's manifest answered 500 with a traceback (``RecursionError``; the ``ValueError`` of
Python's integer-digit limit). Every such body now goes through ``crypto.strict_json``: each is
an ordinary 4xx problem document, audited, leaving the database and blob store as they were.

Found too: an upload whose client went away logged a ``ClientDisconnect`` traceback. A client
disconnect is an ordinary end: logged at info without a traceback, and nothing is left behind.
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from crypto import strict_json
from crypto.dsse import sign_envelope
from crypto.sealed import MANIFEST_PAYLOAD_TYPE
from service.tokens import Role
from tests.hardening.kit import meta, snapshot
from tests.hardening.test_bad_input import (
    Bad,
    Env,
    R,
    check_refusal,
    deliver,
    fed_call,
    sqlite_env,
)
from tests.service.nodekit import UPLOAD_HEADERS, upload_body

__all__ = ["sqlite_env"]

DEEP = b"[" * 100_000 + b"]" * 100_000
LONG_NUMBER = b"9" * 5000
HOSTILE = {"deep": DEEP, "long-number": LONG_NUMBER}


def _in_object(value: bytes) -> bytes:
    return b'{"type":"access","notice_id":' + value + b',"receipts":' + value + b"}"


def _signed_manifest(e: Env, value: bytes) -> bytes:
    """A manifest line whose payload holds ``value``, signed by us-aisi (a pinned partner)."""
    payload = b'{"_type":"https://in-toto.io/Statement/v1","x":' + value + b"}"
    envelope = sign_envelope(MANIFEST_PAYLOAD_TYPE, payload, [e.nodes.us.node.keys.signing])
    return json.dumps(json.loads(envelope.to_bytes()), separators=(",", ":")).encode()


@pytest.mark.parametrize("what", list(HOSTILE))
async def test_notices_receipts_descriptor(sqlite_env: Env, what: str) -> None:
    e, value = sqlite_env, HOSTILE[what]
    for path in ("/federation/v1/notices", "/federation/v1/receipts"):
        for body in (value, _in_object(value)):
            send = fed_call("POST", path, body)
            await check_refusal(e, send, Bad(send, 422, "invalid-input", R))
    envelope = b'{"payloadType":"x","payload":"e30","signatures":' + value + b"}"
    send = fed_call("POST", "/federation/v1/descriptor", envelope)
    await check_refusal(e, send, Bad(send, 422, "invalid-input", R))


@pytest.mark.parametrize("what", list(HOSTILE))
async def test_inbox_manifest_line(sqlite_env: Env, what: str) -> None:
    e, value = sqlite_env, HOSTILE[what]
    raw = b'{"payloadType":"x","payload":"e30","signatures":[],"x":' + value + b"}"
    for line in (raw, _signed_manifest(e, value)):
        send = deliver(lambda e, line=line: line + b"\n" + e.fresh_ciphertext)  # type: ignore[misc]
        await check_refusal(e, send, Bad(send, 422, "invalid-input", "receive.rejected"))


@pytest.mark.parametrize(
    ("text", "why"),
    [
        (DEEP, "nested deeper"),
        (b'{"a":' * 65 + b"1" + b"}" * 65, "nested deeper"),
        (LONG_NUMBER, "number is longer"),
        (b"[1." + b"0" * 5000 + b"]", "number is longer"),
        (b"[NaN]", "not JSON"),
        (b'"\\ud800"', "lone surrogate"),
        (b"\xef\xbb\xbf{}", "byte order mark"),
        (b'"\xff"', "UTF-8"),
    ],
)
def test_loader_refuses_with_a_clear_error(text: bytes, why: str) -> None:
    with pytest.raises(strict_json.StrictJSONError, match=why):
        strict_json.loads(text)


# Pieces of a JSON string's source: escaped and literal backslashes, surrogate escapes alone and
# in pairs, ordinary escapes and text.
_PIECES = [
    r"\\",
    r"\ud800",
    r"\udbff",
    r"\udc00",
    r"\uDFFF",
    r"\u00e9",
    r"\n",
    "u",
    "d800",
    "dc00",
    "a",
    "é",
]


@given(st.lists(st.sampled_from(_PIECES), max_size=12))
@example([r"\\", "u", "dc00"])  # a backslash, then the text "udc00": refused until 2026-12-06
@example([r"\\", r"\\", r"\ud800", r"\udc00"])  # a backslash, then a pair
def test_loader_refuses_exactly_the_strings_that_decode_to_a_lone_surrogate(
    pieces: list[str],
) -> None:
    """The oracle is Python's own decoder: a string is refused if and only if what it decodes
    to holds a code point no UTF-8 text can (U+D800 to U+DFFF)."""
    text = '["' + "".join(pieces) + '"]'
    decoded = json.loads(text)[0]
    lone = any(0xD800 <= ord(ch) <= 0xDFFF for ch in decoded)
    if lone:
        with pytest.raises(strict_json.StrictJSONError, match="lone surrogate"):
            strict_json.loads(text)
    else:
        assert strict_json.loads(text) == [decoded]


def test_loader_checks_surrogates_of_a_large_document_by_searching_for_escapes() -> None:
    """A 40 KB document with one ordinary escape (a manifest naming 20 hybrid recipients, an
    accented title) and a pair: accepted; a lone escape at its end: refused where it is."""
    body = ",".join(f'"{"q" * 1959}"' for _ in range(20))
    good = '{"t":"caf\\u00e9 \\ud83d\\ude00","r":[' + body + "]}"
    assert strict_json.loads(good)["t"] == "café \U0001f600"
    bad = good[:-1] + ',"x":"\\udc00"}'
    with pytest.raises(strict_json.StrictJSONError, match="lone surrogate") as info:
        strict_json.loads(bad)
    assert info.value.pos == bad.index("\\udc00")


# The shape check as it was before strings were skipped with str.find (2026-12-07): one regex
# step per character. The loader must refuse and accept exactly what it did.
_TOKENS = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]', re.DOTALL)


def _shape_by_regex(text: str, limits: strict_json.JSONLimits) -> None:
    if text.count("[") + text.count("{") <= limits.max_depth and len(text) <= limits.max_string:
        return
    depth = 0
    for match in _TOKENS.finditer(text):
        lexeme = match.group()
        if lexeme in "[{":
            depth += 1
            if depth > limits.max_depth:
                raise strict_json.StrictJSONError(
                    f"JSON nested deeper than {limits.max_depth} levels", text, match.start()
                )
        elif lexeme in "]}":
            depth -= 1
        elif len(lexeme) - 2 > limits.max_string:
            raise strict_json.StrictJSONError(
                f"a JSON string is longer than {limits.max_string} characters",
                text,
                match.start(),
            )


def _outcome(
    text: str, limits: strict_json.JSONLimits, check: Any = None
) -> tuple[str, Any, int | None]:
    saved = strict_json._check_shape
    if check is not None:
        strict_json._check_shape = check
    try:
        return ("ok", strict_json.loads(text, limits=limits), None)
    except strict_json.StrictJSONError as exc:
        return ("refused", exc.msg, exc.pos)
    finally:
        strict_json._check_shape = saved


_SMALL = strict_json.JSONLimits(max_depth=3, max_string=4)
_SHAPES = ["[", "]", "{", "}", '"', "\\", '\\"', "\\\\", "ab", "abcde", ",", ":", "1", " "]
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=12,
)


@given(st.lists(st.sampled_from(_SHAPES), max_size=40).map("".join))
@example('["abcde"]')
@example('[[[["x"]]]]')
@example('["a\\"bcde", "]]]]]"]')
@example('["ab\\\\", [[[[1]]]]]')
def test_the_shape_check_refuses_what_the_regex_check_refused(text: str) -> None:
    """Any text, well-formed or not: accepted with the same value or refused by both; where the
    text is JSON, refused with the same message at the same place."""
    mine, theirs = _outcome(text, _SMALL), _outcome(text, _SMALL, _shape_by_regex)
    assert mine[0] == theirs[0], (text, mine, theirs)
    if mine[0] == "ok":
        assert mine[1] == theirs[1]
        return
    try:
        json.loads(text)
    except ValueError:
        return  # not JSON: which refusal comes first may differ
    assert mine == theirs, text


@given(_JSON)
def test_the_shape_check_agrees_on_json_documents(value: Any) -> None:
    for text in (json.dumps(value), json.dumps(value, ensure_ascii=False, indent=1)):
        assert _outcome(text, _SMALL) == _outcome(text, _SMALL, _shape_by_regex), text


def test_loader_limits_are_parameters() -> None:
    small = strict_json.JSONLimits(max_bytes=10, max_depth=2, max_string=3, max_number=3)
    assert strict_json.loads(b"[[1]]", limits=small) == [[1]]
    for text, why in [
        (b"[[[1]]]", "nested deeper"),
        (b'["abcd"]', "string is longer"),
        (b"[1234]", "number is longer"),
        (b"[" + b" " * 20 + b"]", "larger than"),
    ]:
        with pytest.raises(strict_json.StrictJSONError, match=why):
            strict_json.loads(text, limits=small)


# --- an upload whose client goes away ------------------------------------------------------------


async def test_aborted_upload_logs_no_traceback_and_leaves_nothing(
    sqlite_env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    """The ASGI app itself, fed half an upload and then ``http.disconnect``."""
    e = sqlite_env
    body = upload_body(meta(), b"x" * 60_000)  # under the module's 64 KiB artifact limit
    headers = [(k.lower().encode(), v.encode()) for k, v in UPLOAD_HEADERS.items()]
    headers += [(k.lower().encode(), v.encode()) for k, v in e.uk.auth(Role.PUBLISHER).items()]
    headers.append((b"content-length", str(len(body)).encode()))
    scope: dict[str, Any] = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": "/v1/artifacts", "raw_path": b"/v1/artifacts",
        "query_string": b"", "root_path": "", "headers": headers,
        "client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 80),
    }  # fmt: skip
    messages = [
        {"type": "http.request", "body": body[:30_000], "more_body": True},
        {"type": "http.disconnect"},
    ]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        if messages:
            return messages.pop(0)
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    before = snapshot(e.uk.node)
    caplog.set_level(logging.DEBUG)
    await e.uk.app(scope, receive, send)
    after = snapshot(e.uk.node)
    assert (after.rows, after.blobs, after.temporary) == (
        before.rows,
        before.blobs,
        before.temporary,
    ), "an aborted upload left something behind"
    tracebacks = [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    assert tracebacks == [], [r.getMessage() for r in tracebacks]
    assert any("disconnect" in r.getMessage().lower() for r in caplog.records), [
        r.getMessage() for r in caplog.records
    ]
