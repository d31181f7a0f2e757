"""The ``Idempotency-Key`` request header on the routes that share (``service.idempotency``).

IETF httpapi draft *The Idempotency-Key HTTP Header Field*: the field is an RFC 8941 Item whose
value is a String (``Idempotency-Key: "8e03978e-40d5-43e8-bc93-6894a57f9324"``). Here the key
is 1 to :data:`MAX_KEY_CHARS` characters and carries no parameters; anything else, or the field
sent twice, is a 400 problem (``idempotency-key-malformed``). A request without the field is
carried out as before, with no key.

A response answered again from a key's first result carries ``Idempotent-Replayed: true``, and
is that first response's status, body and ``Location``. This module parses the field, hashes
bodies as they stream, and shapes those responses; what a key means is ``service.idempotency``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any, TypeVar

from fastapi import Request
from fastapi.responses import Response

from service.errors import IdempotencyKeyMalformedError, IdempotencyKeyReusedError, TooLargeError
from service.idempotency import Claim, Replay, Result

T = TypeVar("T")

__all__ = [
    "HEADER",
    "MAX_KEY_CHARS",
    "REPLAYED",
    "HashedPull",
    "answer",
    "carry_out",
    "drain",
    "idempotency_key",
    "parse_sf_string",
    "replay",
]

HEADER = "Idempotency-Key"
REPLAYED = "Idempotent-Replayed"
MAX_KEY_CHARS = 255  # characters of a key (a UUID has 36)


def _malformed(why: str) -> IdempotencyKeyMalformedError:
    return IdempotencyKeyMalformedError(
        f"the Idempotency-Key header must be one quoted string (RFC 8941 sf-string) of 1 to "
        f'{MAX_KEY_CHARS} characters, e.g. "8e03978e-40d5-43e8-bc93-6894a57f9324": {why}'
    )


def parse_sf_string(value: str) -> str:
    """The key in an ``Idempotency-Key`` field value (RFC 8941 4.2, Item with a String bare
    item, 4.2.5); raises :class:`IdempotencyKeyMalformedError`."""
    text = value.strip(" ")  # 4.2 (2): discard leading and trailing SP
    if not text.startswith('"'):
        raise _malformed("it does not start with a double quote")
    out: list[str] = []
    i = 1
    while i < len(text):
        char = text[i]
        if char == "\\":  # 4.2.5 (3.2): only \" and \\ are escapes
            i += 1
            if i >= len(text) or text[i] not in '"\\':
                raise _malformed("a backslash escapes only a double quote or a backslash")
            out.append(text[i])
        elif char == '"':  # 4.2.5 (3.3): the end of the string
            if i != len(text) - 1:
                raise _malformed("something follows the closing quote (no parameters here)")
            if not 1 <= len(out) <= MAX_KEY_CHARS:
                raise _malformed(f"it has {len(out)} characters")
            return "".join(out)
        elif not 0x20 <= ord(char) <= 0x7E:  # 4.2.5 (3.4): visible ASCII and space only
            raise _malformed("it holds a character outside printable ASCII")
        else:
            out.append(char)
        i += 1
    raise _malformed("its closing quote is missing")


def idempotency_key(request: Request) -> str | None:
    """The request's key, or None without the field."""
    values = request.headers.getlist(HEADER)
    if not values:
        return None
    if len(values) > 1:
        raise _malformed("the field appears more than once")
    return parse_sf_string(values[0])


class HashedPull:
    """A body's ``pull`` (see ``service.api.bodies.StreamedBody``) that hashes every chunk."""

    def __init__(self, pull: Callable[[], bytes]) -> None:
        self._pull = pull
        self._sha256 = hashlib.sha256()

    def __call__(self) -> bytes:
        chunk = self._pull()
        self._sha256.update(chunk)
        return chunk

    def hexdigest(self) -> str:
        return self._sha256.hexdigest()


def drain(pull: Callable[[], bytes], limit: int) -> None:
    """Read the rest of a body (to hash it), refusing it once it passes ``limit`` bytes."""
    seen = 0
    while chunk := pull():
        seen += len(chunk)
        if seen > limit:
            raise TooLargeError(f"the request body is larger than {limit} bytes")


def carry_out(claim: Claim, fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` while ``claim`` holds the key: a failure or refusal releases the key (the
    retry is decided afresh); the lease stops being renewed either way. Blocking."""
    try:
        return fn(*args)
    except BaseException:
        claim.release()
        raise
    finally:
        claim.stop()


def replay(found: Replay, fingerprint: str) -> Response:
    """The first result of ``found``'s key, if this request is the one it answered; else the
    draft's 422."""
    if not found.matches(fingerprint):
        raise IdempotencyKeyReusedError(
            "this Idempotency-Key was used for a different request (another route, artifact, "
            "metadata or file): use a new key for a new request"
        )
    return answer(found.result, replayed=True)


def answer(result: Result | None, *, replayed: bool = False) -> Response:
    """The response of ``result`` (the first answer and every replay are the same bytes)."""
    if result is None:  # pragma: no cover - a claim carried out is settled or has raised
        raise RuntimeError("a request with an Idempotency-Key ended without a result")
    headers = {"Location": result.location} if result.location else {}
    if replayed:
        headers[REPLAYED] = "true"
    return Response(
        result.body, status_code=result.status, media_type="application/json", headers=headers
    )
