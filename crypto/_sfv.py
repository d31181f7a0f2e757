"""RFC 8941 Structured Field Values: a small, strict parser and serializer.

Private to ``crypto/`` (RFC 9421 signatures and RFC 9530 digests). It implements the parsing
algorithms of RFC 8941 section 4.2 and the serialization algorithms of section 4.1 for Lists,
Dictionaries and Items, with two deliberate restrictions:

* a repeated Dictionary key or Parameter key is an error rather than "last one wins", because two
  parsers that disagree on which duplicate counts can be made to verify different things;
* the RFC 9651 additions (Dates ``@``, Display Strings ``%``) are not supported.

Every failure raises :class:`~crypto.errors.MalformedError`. Inputs are bounded by the callers.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation

from crypto.errors import MalformedError

__all__ = [
    "BareItem",
    "InnerList",
    "Item",
    "Member",
    "Params",
    "Token",
    "parse_dictionary",
    "parse_item",
    "parse_list",
    "serialize_bare_item",
    "serialize_dictionary",
    "serialize_item",
    "serialize_list",
    "serialize_member",
]


class Token(str):
    """An sf-token, kept apart from an sf-string."""

    __slots__ = ()


BareItem = bool | int | Decimal | str | bytes  # str includes Token
Params = tuple[tuple[str, BareItem], ...]


@dataclass(frozen=True)
class Item:
    value: BareItem
    params: Params = ()


@dataclass(frozen=True)
class InnerList:
    items: tuple[Item, ...]
    params: Params = ()


Member = Item | InnerList

_DIGITS = "0123456789"
_LCALPHA = "abcdefghijklmnopqrstuvwxyz"
_ALPHA = _LCALPHA + _LCALPHA.upper()
_KEY_FIRST = frozenset(_LCALPHA + "*")
_KEY_CHARS = frozenset(_LCALPHA + _DIGITS + "_-.*")
_TCHAR = frozenset("!#$%&'*+-.^_`|~" + _DIGITS + _ALPHA)
_TOKEN_FIRST = frozenset(_ALPHA + "*")
_TOKEN_CHARS = _TCHAR | frozenset(":/")
_BASE64_CHARS = frozenset(_ALPHA + _DIGITS + "+/=")
_MAX_INTEGER = 999_999_999_999_999


class _Parser:
    __slots__ = ("pos", "text")

    def __init__(self, text: str) -> None:
        # RFC 8941 4.2: convert the input to an ASCII string, or fail.
        if not text.isascii():
            raise MalformedError("a structured field is ASCII")
        self.text = text
        self.pos = 0

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def take(self) -> str:
        ch = self.peek()
        self.pos += 1
        return ch

    def skip_sp(self) -> None:
        while self.peek() == " ":
            self.pos += 1

    def skip_ows(self) -> None:
        while self.peek() in (" ", "\t") and self.peek():
            self.pos += 1

    def done(self) -> bool:
        return self.pos >= len(self.text)

    def finish(self) -> None:
        # 4.2 (6, 7): discard leading SP; anything left is a failure.
        self.skip_sp()
        if not self.done():
            raise MalformedError("unexpected characters after a structured field")

    # 4.2.1 Parsing a List
    def parse_list(self) -> list[Member]:
        members: list[Member] = []
        while not self.done():
            members.append(self.parse_member())
            self.skip_ows()
            if self.done():
                return members
            if self.take() != ",":
                raise MalformedError("list members are separated by commas")
            self.skip_ows()
            if self.done():
                raise MalformedError("a structured field list ends with a comma")
        return members

    # 4.2.1.1 Parsing an Item or Inner List
    def parse_member(self) -> Member:
        if self.peek() == "(":
            return self.parse_inner_list()
        return self.parse_item()

    # 4.2.1.2 Parsing an Inner List
    def parse_inner_list(self) -> InnerList:
        if self.take() != "(":
            raise MalformedError("an inner list starts with '('")
        items: list[Item] = []
        while not self.done():
            self.skip_sp()
            if self.peek() == ")":
                self.pos += 1
                return InnerList(tuple(items), self.parse_params())
            items.append(self.parse_item())
            if self.peek() not in (" ", ")") or not self.peek():
                raise MalformedError("inner list items are separated by spaces")
        raise MalformedError("an inner list ends with ')'")

    # 4.2.2 Parsing a Dictionary
    def parse_dictionary(self) -> dict[str, Member]:
        members: dict[str, Member] = {}
        while not self.done():
            key = self.parse_key()
            member: Member
            if self.peek() == "=":
                self.pos += 1
                member = self.parse_member()
            else:
                member = Item(True, self.parse_params())
            if key in members:
                raise MalformedError("a dictionary key is repeated")
            members[key] = member
            self.skip_ows()
            if self.done():
                return members
            if self.take() != ",":
                raise MalformedError("dictionary members are separated by commas")
            self.skip_ows()
            if self.done():
                raise MalformedError("a structured field dictionary ends with a comma")
        return members

    # 4.2.3 Parsing an Item
    def parse_item(self) -> Item:
        value = self.parse_bare_item()
        return Item(value, self.parse_params())

    # 4.2.3.1 Parsing a Bare Item
    def parse_bare_item(self) -> BareItem:
        ch = self.peek()
        if ch == "-" or (ch and ch in _DIGITS):
            return self.parse_number()
        if ch == '"':
            return self.parse_string()
        if ch and ch in _TOKEN_FIRST:
            return self.parse_token()
        if ch == ":":
            return self.parse_byte_sequence()
        if ch == "?":
            return self.parse_boolean()
        raise MalformedError("not a structured field item")

    # 4.2.3.2 Parsing Parameters
    def parse_params(self) -> Params:
        params: dict[str, BareItem] = {}
        while self.peek() == ";":
            self.pos += 1
            self.skip_sp()
            key = self.parse_key()
            value: BareItem = True
            if self.peek() == "=":
                self.pos += 1
                value = self.parse_bare_item()
            if key in params:
                raise MalformedError("a parameter is repeated")
            params[key] = value
        return tuple(params.items())

    # 4.2.3.3 Parsing a Key
    def parse_key(self) -> str:
        start = self.pos
        if self.peek() not in _KEY_FIRST or not self.peek():
            raise MalformedError("a key starts with a lowercase letter or '*'")
        while self.peek() and self.peek() in _KEY_CHARS:
            self.pos += 1
        return self.text[start : self.pos]

    # 4.2.4 Parsing an Integer or Decimal
    def parse_number(self) -> int | Decimal:
        sign = 1
        if self.peek() == "-":
            self.pos += 1
            sign = -1
        if not self.peek() or self.peek() not in _DIGITS:
            raise MalformedError("a number starts with a digit")
        start = self.pos
        is_decimal = False
        while True:
            ch = self.peek()
            if ch and ch in _DIGITS:
                self.pos += 1
            elif ch == "." and not is_decimal:
                if self.pos - start > 12:
                    raise MalformedError("a decimal has at most 12 integer digits")
                is_decimal = True
                self.pos += 1
            else:
                break
            length = self.pos - start
            if (not is_decimal and length > 15) or (is_decimal and length > 16):
                raise MalformedError("a number has too many digits")
        number = self.text[start : self.pos]
        if not is_decimal:
            return sign * int(number)
        if number.endswith("."):
            raise MalformedError("a decimal has fractional digits")
        if len(number) - number.index(".") - 1 > 3:
            raise MalformedError("a decimal has at most 3 fractional digits")
        return Decimal(number) * sign

    # 4.2.5 Parsing a String
    def parse_string(self) -> str:
        self.pos += 1  # the opening DQUOTE
        out: list[str] = []
        while not self.done():
            ch = self.take()
            if ch == "\\":
                nxt = self.take()
                if nxt not in ('"', "\\") or not nxt:
                    raise MalformedError("a string escapes only '\"' and '\\'")
                out.append(nxt)
            elif ch == '"':
                return "".join(out)
            elif not " " <= ch <= "~":
                raise MalformedError("a string holds printable ASCII only")
            else:
                out.append(ch)
        raise MalformedError("a string ends with '\"'")

    # 4.2.6 Parsing a Token
    def parse_token(self) -> Token:
        start = self.pos
        self.pos += 1
        while self.peek() and self.peek() in _TOKEN_CHARS:
            self.pos += 1
        return Token(self.text[start : self.pos])

    # 4.2.7 Parsing a Byte Sequence
    def parse_byte_sequence(self) -> bytes:
        self.pos += 1  # the opening ":"
        end = self.text.find(":", self.pos)
        if end < 0:
            raise MalformedError("a byte sequence ends with ':'")
        b64 = self.text[self.pos : end]
        self.pos = end + 1
        if not _BASE64_CHARS.issuperset(b64):
            raise MalformedError("a byte sequence is base64")
        # "parsers SHOULD NOT fail when '=' padding is not present"
        try:
            return base64.b64decode(b64 + "=" * (-len(b64) % 4), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise MalformedError("a byte sequence is base64") from exc

    # 4.2.8 Parsing a Boolean
    def parse_boolean(self) -> bool:
        self.pos += 1  # "?"
        ch = self.take()
        if ch == "1":
            return True
        if ch == "0":
            return False
        raise MalformedError("a boolean is ?0 or ?1")


def parse_list(text: str) -> list[Member]:
    p = _Parser(text)
    p.skip_sp()
    result = p.parse_list()
    p.finish()
    return result


def parse_dictionary(text: str) -> dict[str, Member]:
    p = _Parser(text)
    p.skip_sp()
    result = p.parse_dictionary()
    p.finish()
    return result


def parse_item(text: str) -> Item:
    p = _Parser(text)
    p.skip_sp()
    result = p.parse_item()
    p.finish()
    return result


# 4.1.1 Serializing a List
def serialize_list(members: list[Member] | tuple[Member, ...]) -> str:
    return ", ".join(serialize_member(m) for m in members)


def serialize_member(member: Member) -> str:
    if isinstance(member, InnerList):
        return serialize_inner_list(member)
    return serialize_item(member)


# 4.1.1.1 Serializing an Inner List
def serialize_inner_list(inner: InnerList) -> str:
    return "(" + " ".join(serialize_item(i) for i in inner.items) + ")" + _params(inner.params)


# 4.1.1.2 Serializing Parameters
def _params(params: Params) -> str:
    out: list[str] = []
    for key, value in params:
        out.append(";" + _key(key))
        if value is not True:
            out.append("=" + serialize_bare_item(value))
    return "".join(out)


# 4.1.1.3 Serializing a Key
def _key(key: str) -> str:
    if not key or key[0] not in _KEY_FIRST or not _KEY_CHARS.issuperset(key):
        raise MalformedError("not a structured field key")
    return key


# 4.1.2 Serializing a Dictionary
def serialize_dictionary(members: dict[str, Member]) -> str:
    out: list[str] = []
    for key, member in members.items():
        if isinstance(member, Item) and member.value is True:
            out.append(_key(key) + _params(member.params))
        else:
            out.append(_key(key) + "=" + serialize_member(member))
    return ", ".join(out)


# 4.1.3 Serializing an Item
def serialize_item(item: Item) -> str:
    return serialize_bare_item(item.value) + _params(item.params)


# 4.1.3.1 Serializing a Bare Item
def serialize_bare_item(value: BareItem) -> str:
    if isinstance(value, bool):
        return "?1" if value else "?0"  # 4.1.9
    if isinstance(value, Token):
        if not value or value[0] not in _TOKEN_FIRST or not _TOKEN_CHARS.issuperset(value):
            raise MalformedError("not a structured field token")
        return str(value)  # 4.1.7
    if isinstance(value, str):
        if not all(" " <= ch <= "~" for ch in value):
            raise MalformedError("a structured field string is printable ASCII")
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'  # 4.1.6
    if isinstance(value, int):
        if not -_MAX_INTEGER <= value <= _MAX_INTEGER:
            raise MalformedError("a structured field integer has at most 15 digits")
        return str(value)  # 4.1.4
    if isinstance(value, Decimal):
        return _decimal(value)
    if isinstance(value, bytes):
        return ":" + base64.b64encode(value).decode("ascii") + ":"  # 4.1.8
    raise MalformedError("not a structured field bare item")


# 4.1.5 Serializing a Decimal
def _decimal(value: Decimal) -> str:
    try:
        rounded = value.quantize(Decimal("0.001"), rounding=ROUND_HALF_EVEN)
    except InvalidOperation as exc:
        raise MalformedError("not a structured field decimal") from exc
    if abs(rounded) >= Decimal(10) ** 12:
        raise MalformedError("a structured field decimal has at most 12 integer digits")
    text = f"{rounded:f}"
    whole, _, fraction = text.partition(".")
    fraction = fraction.rstrip("0") or "0"
    if whole == "-0":
        whole = "0" if fraction == "0" else "-0"
    return f"{whole}.{fraction}"
