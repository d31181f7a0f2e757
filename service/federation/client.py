"""Signed calls from this node to one partner: the one client for every partner call (the
federation API, delivery, pulls, notices, and the submission of checkpoints to a partner's
witness, ``service.audit.submission``).

Every request is RFC 9421-signed with this node's key; every answer, refusals included, must carry
a valid signature by the partner's pinned key, bound to this request's own signature, covering
its ``Content-Type`` and with a nonce, and a body matching its ``Content-Digest``, or it is not
believed. Whatever goes wrong on the way (connection refused, timeout, 5xx, a bad or missing
signature) the caller sees one error, :class:`service.errors.PartnerUnavailableError`; a signed
4xx problem document from the partner is :class:`PartnerRefusedError` carrying its detail. A
transport failure becomes that error in one place, :meth:`PartnerClient._stream`, the boundary
every request passes through.

Synchronous (httpx.Client) by design: the delivery and pull workers run it on worker threads,
where streaming a blob up or down needs no bridging between event loop and thread; the witness
submission, an asyncio worker, calls :meth:`PartnerClient.post_raw` on a worker thread too.

This module does not decide what a partner's answer means: its callers do (a delivery's
receipt, a feed page, a witness's cosignature).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

from crypto import httpsig, strict_json
from crypto.errors import CryptoError
from crypto.keys import SigningKey
from service.errors import PartnerRefusedError, PartnerUnavailableError
from service.federation.paced import PacedStream
from service.federation.signing import (
    digest_value,
    sign_request_headers,
    verify_response_from,
)
from service.models import Partner
from service.node import Node
from service.partners import partner_keys

__all__ = [
    "BATCH_TYPE",
    "DELIVERY_TYPE",
    "RESUME_HEADER",
    "PartnerClient",
    "RawReply",
    "Reply",
    "head_key",
]

MAX_REPLY_BYTES = 1 << 20  # bytes of a JSON reply (a feed page may be larger: see pull.py)
DELIVERY_TYPE = "application/vnd.entente.delivery"
BATCH_TYPE = "application/vnd.entente.delivery-batch"
RESUME_HEADER = "Entente-Resume-Offset"  # signed: where in the ciphertext a delivery's body resumes


def head_key(manifest_line: bytes) -> str:
    """The name of a delivery's partial at its receiver: the SHA-256 of its first line (the
    same for every attempt; ``service.federation.inbox_partial``)."""
    return hashlib.sha256(manifest_line).hexdigest()


@dataclass(frozen=True)
class Reply:
    status: int
    data: Any


@dataclass(frozen=True)
class RawReply:
    """An answer as bytes (:meth:`PartnerClient.post_raw`): its status, media type (without
    parameters) and body, cut at the caller's limit."""

    status: int
    content_type: str
    body: bytes


class PartnerClient:
    def __init__(self, node: Node, http: httpx.Client | None = None) -> None:
        self.node = node
        timeout = httpx.Timeout(node.settings.request_timeout_seconds, connect=5.0)
        self.http = http or httpx.Client(
            timeout=timeout, limits=httpx.Limits(max_connections=32, max_keepalive_connections=16)
        )

    def close(self) -> None:
        self.http.close()

    def _prepare(
        self,
        url: str,
        method: str,
        digest: str,
        content_type: str | None,
        key: SigningKey | None = None,
        extra: dict[str, str] | None = None,
    ) -> tuple[str, dict[str, str], httpsig.Request]:
        headers = {"Content-Type": content_type} if content_type else {}
        headers.update(extra or {})  # signed too (``Range``: httpsig.request_components)
        headers.update(
            sign_request_headers(
                self.node, method=method, url=url, headers=headers, content_digest=digest, key=key
            )
        )
        return url, headers, httpsig.Request(method, url, headers)

    @contextmanager
    def _stream(
        self, partner_id: str, method: str, url: str, **request: Any
    ) -> Iterator[httpx.Response]:
        """The response to one request, read by the caller inside the block: the boundary
        where a transport failure (refused, reset, timed out, while sending or reading) becomes
        :class:`PartnerUnavailableError`, for every call of this client. Its body must keep up
        (:class:`service.federation.paced.PacedStream`)."""
        settings = self.node.settings
        try:
            with self.http.stream(method, url, **request) as response:
                if isinstance(response.stream, httpx.SyncByteStream):
                    response.stream = PacedStream(
                        response.stream,
                        partner_id,
                        min_rate=settings.request_body_min_rate,
                        window_seconds=settings.request_body_rate_window_seconds,
                    )
                yield response
        except httpx.HTTPError as exc:
            raise PartnerUnavailableError(f"{partner_id} is unreachable: {_why(exc)}") from None

    def _check(
        self, partner: Partner | str, signed: httpsig.Request, response: httpx.Response
    ) -> httpsig.VerifiedSignature:
        partner_id = partner if isinstance(partner, str) else partner.node_id
        with self.node.db.session() as session:
            keys = partner_keys(session, partner_id)
        try:
            return verify_response_from(
                self.node,
                partner_keys=keys.keys,
                retired=keys.retired,
                request=signed,
                status=response.status_code,
                headers=list(response.headers.multi_items()),
            )
        except CryptoError as exc:
            raise PartnerUnavailableError(
                f"{partner_id} answered without a valid signature: {exc}"
            ) from None

    def _refusal(
        self, partner: Partner, signed: httpsig.Request, response: httpx.Response
    ) -> PartnerUnavailableError:
        """The error for a non-2xx answer. A 4xx is the partner's refusal
        (:class:`PartnerRefusedError`, which may stop retries) only when it is signed like any
        answer and its body matches its digest; an unsigned one proves nothing (a proxy, or
        someone on the path) and is retried like an unreachable partner."""
        body = bytearray()
        for chunk in response.iter_bytes(1 << 16):
            body += chunk
            if len(body) > MAX_REPLY_BYTES:
                break
        status = response.status_code
        error: PartnerUnavailableError
        if 400 <= status < 500:
            try:
                verified = self._check(partner, signed, response)
                digester = httpsig.ContentDigester()
                digester.update(bytes(body))
                digester.verify(verified.content_digests)
                problem = _problem(bytes(body))
            except (PartnerUnavailableError, CryptoError) as exc:
                why = exc.message if isinstance(exc, PartnerUnavailableError) else str(exc)
                error = PartnerUnavailableError(
                    f"{partner.node_id} answered ({status}) without a valid signature: {why}"
                )
            else:
                detail = str(problem.get("detail") or response.reason_phrase)[:500]
                error = PartnerRefusedError(
                    f"{partner.node_id} refused ({status}): {detail}",
                    status=status,
                    problem=problem,
                )
        else:
            detail = str(_problem(bytes(body)).get("detail") or response.reason_phrase)[:500]
            error = PartnerUnavailableError(f"{partner.node_id} failed ({status}): {detail}")
        error.retry_after = retry_after_seconds(response.headers.get("retry-after"))
        return error

    def _json(
        self,
        partner: Partner,
        signed: httpsig.Request,
        response: httpx.Response,
        limit: int = MAX_REPLY_BYTES,
    ) -> Reply:
        if response.status_code >= 300:
            raise self._refusal(partner, signed, response)
        verified = self._check(partner, signed, response)
        body = bytearray()
        for chunk in response.iter_bytes(1 << 16):
            body += chunk
            if len(body) > limit:
                raise PartnerUnavailableError(f"{partner.node_id} sent an oversized reply")
        digester = httpsig.ContentDigester()
        digester.update(bytes(body))
        try:
            digester.verify(verified.content_digests)
            data = strict_json.loads(body)
        except (CryptoError, ValueError, RecursionError) as exc:
            # ValueError: not JSON, not UTF-8, or a number too long to convert; RecursionError:
            # nested too deep. A signed reply is still the partner's input, never trusted.
            why = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
            raise PartnerUnavailableError(f"{partner.node_id} sent a bad reply: {why}") from None
        return Reply(response.status_code, data)

    def call_json(
        self,
        partner: Partner,
        method: str,
        path: str,
        payload: Any | None = None,
        *,
        key: SigningKey | None = None,
        max_reply_bytes: int = MAX_REPLY_BYTES,
    ) -> Reply:
        """A small signed request (JSON body or none) and its verified JSON reply.

        ``key`` signs instead of the node's current key (a rotated descriptor's push only).
        """
        body = b"" if payload is None else json.dumps(payload, separators=(",", ":")).encode()
        digest = digest_value(hashlib.sha256(body).digest())
        ctype = "application/json" if payload is not None else None
        url, headers, signed = self._prepare(partner.url + path, method, digest, ctype, key)
        with self._stream(partner.node_id, method, url, content=body, headers=headers) as response:
            return self._json(partner, signed, response, max_reply_bytes)

    def deliver(
        self,
        partner: Partner,
        *,
        manifest_line: bytes,
        blob: str,
        size: int,
        resume: bool = False,
    ) -> Reply:
        """POST a delivery: the manifest line, a newline, then the ciphertext blob, streamed.

        With ``resume`` (a retry of a large delivery), first asks how many bytes of it the
        partner kept from a cut attempt (``service.federation.inbox_partial``) and sends only
        the rest, from there, under a signed ``Entente-Resume-Offset``. The partner verifies
        the whole; a refusal of a resumed delivery is retried (the partner dropped what it
        held, and the next attempt sends it whole), never final."""
        offset = self._held_offset(partner, manifest_line, size) if resume else 0
        digester = hashlib.sha256()
        digester.update(manifest_line + b"\n")
        with self.node.blobs.open(blob, offset=offset) as fh:
            while data := fh.read(1 << 20):
                digester.update(data)
        digest = digest_value(digester.digest())

        def body() -> Iterator[bytes]:
            yield manifest_line + b"\n"
            with self.node.blobs.open(blob, offset=offset) as fh:
                while data := fh.read(1 << 16):
                    yield data

        extra = {RESUME_HEADER: str(offset)} if offset else None
        url, headers, signed = self._prepare(
            partner.url + "/federation/v1/inbox", "POST", digest, DELIVERY_TYPE, extra=extra
        )
        headers["Content-Length"] = str(len(manifest_line) + 1 + size - offset)
        try:
            with self._stream(
                partner.node_id, "POST", url, content=body(), headers=headers
            ) as response:
                reply = self._json(partner, signed, response)
        except PartnerRefusedError as exc:
            if not offset:
                raise
            error = PartnerUnavailableError(
                f"{exc.message} (the delivery resumed at byte {offset}; the next attempt "
                "sends it whole)"
            )
            error.retry_after = exc.retry_after
            raise error from None
        if offset:
            self.node.metrics.resumed.labels("sent").inc()
            self.node.metrics.resumed_bytes.labels("sent").inc(offset)
        return reply

    def _held_offset(self, partner: Partner, manifest_line: bytes, size: int) -> int:
        """How many bytes of this delivery's ciphertext the partner holds from a cut attempt;
        0 when none, when it cannot say (a node that does not resume answers 404; an answer
        that does not verify), or when its answer is not a number below ``size``: then the
        delivery goes whole, as before."""
        path = f"/federation/v1/inbox/partial/{head_key(manifest_line)}"
        try:
            reply = self.call_json(partner, "GET", path)
        except PartnerUnavailableError:
            return 0
        held = reply.data.get("offset") if isinstance(reply.data, dict) else None
        if isinstance(held, int) and not isinstance(held, bool) and 0 < held < size:
            return held
        return 0

    def deliver_batch(self, partner: Partner, items: list[tuple[bytes, bytes]]) -> Reply:
        """POST several small deliveries in one request (``application/vnd.entente.delivery-
        batch``): for each, the manifest line, a newline, the ciphertext length in decimal, a
        newline, the ciphertext. The reply holds one result per item, in order."""
        parts: list[bytes] = []
        for manifest_line, ciphertext in items:
            parts += [manifest_line, b"\n", str(len(ciphertext)).encode(), b"\n", ciphertext]
        body = b"".join(parts)
        digest = digest_value(hashlib.sha256(body).digest())
        url, headers, signed = self._prepare(
            partner.url + "/federation/v1/inbox", "POST", digest, BATCH_TYPE
        )
        with self._stream(partner.node_id, "POST", url, content=body, headers=headers) as response:
            return self._json(partner, signed, response, MAX_REPLY_BYTES * 4)

    @contextmanager
    def download(
        self, partner: Partner, path: str, *, offset: int = 0
    ) -> Iterator[_VerifiedStream]:
        """GET a signed stream (a payload); the digest is checked when it has been read.

        With ``offset``, asks for the bytes from there on (a signed ``Range: bytes=N-``); the
        stream's ``offset`` says where the answer starts: there (a 206 whose signed
        ``Content-Range`` says so), or 0 (the partner sent the whole)."""
        digest = digest_value(hashlib.sha256(b"").digest())
        extra = {"Range": f"bytes={offset}-"} if offset else None
        url, headers, signed = self._prepare(partner.url + path, "GET", digest, None, extra=extra)
        with self._stream(partner.node_id, "GET", url, headers=headers) as response:
            if response.status_code >= 300:
                raise self._refusal(partner, signed, response)
            verified = self._check(partner, signed, response)
            start: int | None = 0
            if response.status_code == 206:
                start = _range_start(response.headers.get("content-range", ""), offset)
            if start is None:
                raise PartnerUnavailableError(
                    f"{partner.node_id} answered a range that was not asked for"
                )
            yield _VerifiedStream(partner.node_id, response, verified, offset=start)

    def post_raw(
        self,
        partner_id: str,
        url: str,
        body: bytes,
        *,
        content_type: str,
        limit: int,
        signed_when: Callable[[int, str], bool],
    ) -> RawReply:
        """POST ``body`` to ``url``, an endpoint of the partner's outside the federation API
        (its witness), and return the answer as bytes, cut at ``limit``.

        An answer for which ``signed_when(status, media_type)`` holds is believed only with a
        valid signature by the partner's pinned key over a matching body (else
        :class:`PartnerUnavailableError`); any other is returned unverified, for the caller to
        treat as the failure it is.
        """
        digest = digest_value(hashlib.sha256(body).digest())
        url, headers, signed = self._prepare(url, "POST", digest, content_type)
        with self._stream(partner_id, "POST", url, content=body, headers=headers) as response:
            content = response.read()
            media_type = response.headers.get("content-type", "").split(";")[0].strip()
            if signed_when(response.status_code, media_type):
                verified = self._check(partner_id, signed, response)
                digester = httpsig.ContentDigester()
                digester.update(content)
                try:
                    digester.verify(verified.content_digests)
                except CryptoError as exc:
                    raise PartnerUnavailableError(
                        f"{partner_id} answered without a valid signature: {exc}"
                    ) from None
            return RawReply(response.status_code, media_type, content[:limit])


class _VerifiedStream:
    """A response body as a file-like reader that checks Content-Digest at its end."""

    def __init__(
        self,
        partner: str,
        response: httpx.Response,
        verified: httpsig.VerifiedSignature,
        *,
        offset: int = 0,
    ) -> None:
        self.offset = offset  # where in the payload these bytes start
        self._partner = partner
        self._response = response
        self._iter = response.iter_bytes(1 << 16)
        self._digester = httpsig.ContentDigester()
        self._expected = verified.content_digests
        self._buf = b""
        self._done = False

    def chunks(self) -> Iterator[bytes]:
        """The body as it arrives, for a caller that keeps every byte received (a broken
        connection loses none); the digest is checked at its end (instead of ``read``)."""
        for chunk in self._response.iter_bytes():
            self._digester.update(chunk)
            yield chunk
        self._done = True
        self._verify()

    def _verify(self) -> None:
        try:
            self._digester.verify(self._expected)
        except CryptoError as exc:
            raise PartnerUnavailableError(
                f"{self._partner} sent a payload that does not match its digest: {exc}"
            ) from None

    def read(self, n: int = -1, /) -> bytes:
        while not self._done and (n < 0 or len(self._buf) < n):
            try:
                chunk = next(self._iter)
            except StopIteration:
                self._done = True
                self._verify()
                break
            self._digester.update(chunk)
            self._buf += chunk
        if n < 0:
            out, self._buf = self._buf, b""
        else:
            out, self._buf = self._buf[:n], self._buf[n:]
        return out


def _problem(body: bytes) -> dict[str, Any]:
    """A problem document's members, or nothing when the body is not a JSON object."""
    try:
        problem = strict_json.loads(body)
    except (ValueError, RecursionError):
        return {}
    return problem if isinstance(problem, dict) else {}


def retry_after_seconds(value: str | None, *, now: datetime | None = None) -> float | None:
    """A ``Retry-After`` header (RFC 9110 section 10.2.3: delay-seconds or an HTTP date) as
    seconds from ``now``; ``None`` when absent or malformed, 0 for a date already past."""
    if value is None:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return float(min(int(value), 1 << 31))
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None  # an HTTP date is always GMT; a date without a zone is not one
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def _why(exc: httpx.HTTPError) -> str:
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0][:200]


def _range_start(content_range: str, asked: int) -> int | None:
    """``asked`` when a 206's ``Content-Range`` is ``bytes <asked>-<last>/<size>`` with the
    range reaching the end (what ``bytes=N-`` asks for), else None."""
    unit, _, spec = content_range.strip().partition(" ")
    span, _, size = spec.partition("/")
    first, _, last = span.partition("-")
    if unit != "bytes" or not (first.isdigit() and last.isdigit() and size.isdigit()):
        return None
    if int(first) != asked or int(last) != int(size) - 1 or asked == 0:
        return None
    return asked
