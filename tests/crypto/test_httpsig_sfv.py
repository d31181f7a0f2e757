"""``crypto._sfv`` (RFC 8941), checked against RFC examples and against ``http-sf`` (mnot)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import http_sf
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crypto import _sfv
from crypto._sfv import InnerList, Item, Token
from crypto.errors import MalformedError

FUZZ = settings(max_examples=200, deadline=None)


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        # RFC 9421 2.1.1 and 2.1.2 examples.
        ("a=1,    b=2;x=1;y=2,   c=(a   b   c)", "a=1, b=2;x=1;y=2, c=(a b c)"),
        ("a=1, b=2;x=1;y=2, c=(a   b    c), d", "a=1, b=2;x=1;y=2, c=(a b c), d"),
        # RFC 8941 examples.
        ('en="Applepie", da=:w4ZibGV0w6ZydGU=:', 'en="Applepie", da=:w4ZibGV0w6ZydGU=:'),
        ("a=?0, b, c; foo=bar", "a=?0, b, c;foo=bar"),
        ("rating=1.5, feelings=(joy sadness)", "rating=1.5, feelings=(joy sadness)"),
        ("a=(1 2), b=3, c=4;aa=bb, d=(5 6);valid", "a=(1 2), b=3, c=4;aa=bb, d=(5 6);valid"),
        ("", ""),
        ("a=-0.50, b=1.000, c=-12", "a=-0.5, b=1.0, c=-12"),
        ('s="with \\"quotes\\" and \\\\"', 's="with \\"quotes\\" and \\\\"'),
        ("t=:AA:", "t=:AA==:"),  # missing padding is tolerated, and added back
    ],
)
def test_dictionary_examples(text: str, canonical: str) -> None:
    assert _sfv.serialize_dictionary(_sfv.parse_dictionary(text)) == canonical


def test_parsed_values() -> None:
    d = _sfv.parse_dictionary('a=1, b="x", c=tok, d=:AQI=:, e=?1, f=1.25, g=(1 "2");p')
    assert d["a"] == Item(1)
    assert d["b"] == Item("x")
    assert isinstance(d["c"], Item)
    assert isinstance(d["c"].value, Token)
    assert d["d"] == Item(b"\x01\x02")
    assert d["e"] == Item(True)
    assert d["f"] == Item(Decimal("1.25"))
    assert d["g"] == InnerList((Item(1), Item("2")), (("p", True),))
    assert _sfv.parse_list("1, (a b);q=?0") == [
        Item(1),
        InnerList((Item(Token("a")), Item(Token("b"))), (("q", False),)),
    ]
    assert _sfv.parse_item('  "x";a=1  ') == Item("x", (("a", 1),))


@pytest.mark.parametrize(
    "text",
    [
        "a=1,",
        "a=1,,b=2",
        "A=1",
        "a=1 b=2",
        "a=(1 2",
        "a=(1,2)",
        'a="unterminated',
        'a="bad \\n escape"',
        "a=:not base64!:",
        "a=:AAAA",
        "a=?2",
        "a=1.",
        "a=1.2345",
        "a=1234567890123456",
        "a=1234567890123.5",
        "a=1;b=2;b=3",
        "a=1, a=2",
        "a=@1659578233",
        'a=%"display"',
        "a=\u00e9",
    ],
)
def test_strict_parse_errors(text: str) -> None:
    with pytest.raises(MalformedError):
        _sfv.parse_dictionary(text)


@pytest.mark.parametrize(
    "value",
    [1 << 60, "caf\u00e9", "line\nbreak", Token("bad token"), Token(""), Decimal("1e13"), 1.5],
)
def test_strict_serialize_errors(value: Any) -> None:
    with pytest.raises(MalformedError):
        _sfv.serialize_bare_item(value)


def test_bad_keys_are_not_serialized() -> None:
    with pytest.raises(MalformedError):
        _sfv.serialize_dictionary({"Upper": Item(1)})
    with pytest.raises(MalformedError):
        _sfv.serialize_item(Item(1, (("", 1),)))


# --- Differential tests against http-sf, the RFC 8941 author's implementation.


def _reject_duplicates(key: str, context: str) -> None:
    raise ValueError(f"duplicate {context} key {key}")


def _theirs(text: str, kind: str) -> str | None:
    try:
        parsed = http_sf.parse(text.encode(), tltype=kind, on_duplicate_key=_reject_duplicates)
    except (ValueError, TypeError):
        return None
    if not parsed and kind != "item":
        return ""  # http-sf declines to serialize an empty container
    return http_sf.ser(parsed)


def _ours(text: str, kind: str) -> str | None:
    try:
        if kind == "dictionary":
            return _sfv.serialize_dictionary(_sfv.parse_dictionary(text))
        if kind == "list":
            return _sfv.serialize_list(_sfv.parse_list(text))
        return _sfv.serialize_item(_sfv.parse_item(text))
    except MalformedError:
        return None


# No HTAB (http-sf trims it around a whole field, RFC 8941 only SP), no "@" or "%" (RFC 9651).
FIELD_TEXT = st.text(alphabet='abz*-_.019 ,;=():"?\\AZ/+', max_size=40)


@FUZZ
@given(text=FIELD_TEXT, kind=st.sampled_from(["dictionary", "list", "item"]))
def test_parsing_agrees_with_http_sf(text: str, kind: str) -> None:
    assert _ours(text, kind) == _theirs(text, kind)


KEYS = st.from_regex(r"[a-z*][a-z0-9_\-.*]{0,6}", fullmatch=True)
BARE = st.one_of(
    st.booleans(),
    st.integers(min_value=-999_999_999_999_999, max_value=999_999_999_999_999),
    st.decimals(min_value=-(10**11), max_value=10**11, places=3, allow_nan=False),
    st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=12),
    st.from_regex(r"[A-Za-z*][A-Za-z0-9!#$%&'*+\-.^_`|~:/]{0,8}", fullmatch=True).map(Token),
    st.binary(max_size=12),
)
PARAMS = st.dictionaries(KEYS, BARE, max_size=3).map(lambda d: tuple(d.items()))
ITEMS = st.builds(Item, BARE, PARAMS)
MEMBERS = st.one_of(ITEMS, st.builds(InnerList, st.lists(ITEMS, max_size=3).map(tuple), PARAMS))


@settings(max_examples=100, deadline=None)
@given(members=st.dictionaries(KEYS, MEMBERS, max_size=4))
def test_serialization_agrees_with_http_sf(members: dict[str, Any]) -> None:
    ours = _sfv.serialize_dictionary(members)
    assert _theirs(ours, "dictionary") == ours
    assert _sfv.serialize_dictionary(_sfv.parse_dictionary(ours)) == ours
