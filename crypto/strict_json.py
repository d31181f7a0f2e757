"""The one JSON loader for everything that comes from outside: strict, bounded, unambiguous.

Signed payloads (DSSE manifests, descriptors, receipts, notices) and request bodies are parsed
here and nowhere else, so that one document has one meaning and one bounded cost:

- **UTF-8 only** (RFC 8259 section 8.1), no byte order mark; lone surrogate escapes
  (``"\\ud800"``) are refused, since no UTF-8 text holds them.
- **Duplicate object keys are refused** (RFC 8259 section 4 leaves their meaning open; a
  signed ``{"tlp": "TLP:RED", "tlp": "TLP:GREEN"}`` must not mean GREEN to one reader and RED
  to another).
- **Bounded**: total length (``max_bytes``), nesting depth (``max_depth``), the length of one
  string (``max_string``) and of one number's text (``max_number``). A 5,000-digit number or
  10,000 nested arrays is a :class:`StrictJSONError`, never a ``RecursionError`` or the
  ``ValueError`` of Python's integer-digit limit.
- ``NaN``, ``Infinity`` and ``-Infinity`` (which Python's ``json`` accepts) are refused.

:class:`StrictJSONError` subclasses :class:`json.JSONDecodeError`, so a caller that already
turns invalid JSON into its own error keeps doing so. This module does no schema validation:
the shape of a document is its reader's business.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

__all__ = ["DEFAULT_LIMITS", "JSONLimits", "StrictJSONError", "loads"]


@dataclass(frozen=True)
class JSONLimits:
    max_bytes: int = 16 << 20  # bytes of the whole document (as UTF-8)
    max_depth: int = 64  # nested arrays and objects
    max_string: int = 4 << 20  # characters of one string (escapes counted as written)
    max_number: int = 64  # characters of one number's text


DEFAULT_LIMITS = JSONLimits()


class StrictJSONError(json.JSONDecodeError):
    """The text is not JSON, or is JSON this loader refuses (see the module docstring)."""

    def __init__(self, msg: str, doc: str = "", pos: int = 0) -> None:
        super().__init__(msg, doc, pos)


# A string token, unrolled so that long strings cost no backtracking: the exact end of a string
# that holds an escaped quote. Strings without one end at the next quote, found by str.find.
_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_BRACKET = re.compile(r"[\[\]{}]")
_NO_BRACKET = frozenset({"", ",", ":", " ", ", ", ": "})  # what most often lies between strings
# A surrogate escape (\\uD800-\\uDFFF). It starts with a literal backslash, so the search
# skips ahead through documents that hold none; each match is then looked at in context.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")
_LOW_ESCAPE = re.compile(r"\\u[dD][c-fC-F][0-9a-fA-F]{2}")


def _lone_surrogate(text: str) -> int | None:
    """Where the first lone surrogate escape starts (a high one not followed by a low one, or
    a low one not preceded by a high one), or None. A backslash that is itself escaped
    (``\\\\ud800``: a backslash, then the letters) starts no escape."""
    paired = -1  # where the low half of the last pair starts
    for match in _SURROGATE_ESCAPE.finditer(text):
        start = match.start()
        if start == paired:
            continue
        run = start
        while run > 0 and text[run - 1] == "\\":
            run -= 1
        if (start - run) % 2:  # an odd number of backslashes before: "\\" then "u..."
            continue
        if text[start + 3] in "89abAB" and _LOW_ESCAPE.match(text, start + 6):
            paired = start + 6
            continue
        return start
    return None


def _check_shape(text: str, limits: JSONLimits) -> None:
    """Depth and string length, in one pass over the strings and brackets only.

    The strings are skipped with ``str.find`` (the closing quote of a string without an escaped
    quote is the next quote) and only a string whose closing quote follows a backslash is matched
    by the regular expression, so a large document of long strings (a catch-up page of base64
    payloads) costs a few find calls per string rather than a regex step per character; a string
    of escaped quotes costs what the expression costs, never more."""
    if text.count("[") + text.count("{") <= limits.max_depth and len(text) <= limits.max_string:
        return  # cannot pass either limit
    depth, pos, size, find = 0, 0, len(text), text.find
    while pos < size:
        quote = find('"', pos)
        stop = size if quote < 0 else quote
        if stop - pos > 2 or text[pos:stop] not in _NO_BRACKET:  # not just "," ":" "",
            for bracket in _BRACKET.finditer(text, pos, stop):
                if bracket.group() in "[{":
                    depth += 1
                    if depth > limits.max_depth:
                        raise StrictJSONError(
                            f"JSON nested deeper than {limits.max_depth} levels",
                            text,
                            bracket.start(),
                        )
                else:
                    depth -= 1
        if quote < 0:
            return
        close = find('"', quote + 1)
        if close > 0 and text[close - 1] == "\\":  # an escaped quote, or an escaped backslash
            match = _STRING.match(text, quote)
            close = -1 if match is None else match.end() - 1
        if close < 0:
            return  # an unterminated string: the parser refuses it
        if close - quote - 1 > limits.max_string:
            raise StrictJSONError(
                f"a JSON string is longer than {limits.max_string} characters", text, quote
            )
        pos = close + 1


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise StrictJSONError(f"duplicate JSON object key {key[:80]!r}")
            seen.add(key)
    return obj


def _refuse_constant(name: str) -> Any:
    raise StrictJSONError(f"{name} is not JSON")


def loads(
    data: bytes | bytearray | memoryview | str, *, limits: JSONLimits = DEFAULT_LIMITS
) -> Any:
    """Parse one JSON document strictly within ``limits``; raise :class:`StrictJSONError`."""
    if isinstance(data, str):
        text = data
        size = len(text)  # a lower bound of its UTF-8 length, enough to refuse early
    else:
        size = len(data)
        if size > limits.max_bytes:
            raise StrictJSONError(f"the JSON document is larger than {limits.max_bytes} bytes")
        try:
            text = bytes(data).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise StrictJSONError("JSON text must be UTF-8", "", exc.start) from None
    if size > limits.max_bytes:
        raise StrictJSONError(f"the JSON document is larger than {limits.max_bytes} bytes")
    if text.startswith("\ufeff"):
        raise StrictJSONError("JSON text must not start with a byte order mark", text, 0)
    _check_shape(text, limits)
    if "\\u" in text and (at := _lone_surrogate(text)) is not None:
        raise StrictJSONError("a JSON string holds a lone surrogate escape", text, at)

    def number(kind: type[int] | type[float]) -> Any:
        def parse(token: str) -> int | float:
            if len(token) > limits.max_number:
                raise StrictJSONError(
                    f"a JSON number is longer than {limits.max_number} characters"
                )
            return kind(token)

        return parse

    try:
        return json.loads(
            text,
            object_pairs_hook=_object,
            parse_int=number(int),
            parse_float=number(float),
            parse_constant=_refuse_constant,
        )
    except StrictJSONError:
        raise
    except json.JSONDecodeError as exc:
        raise StrictJSONError(exc.msg, text, exc.pos) from None
    except (RecursionError, ValueError) as exc:  # belt and braces: limits above prevent these
        raise StrictJSONError(f"JSON refused: {type(exc).__name__}") from None
