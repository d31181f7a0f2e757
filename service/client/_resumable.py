"""A resumable share's requests and answers without I/O (draft-ietf-httpbis-resumable-upload),
for :meth:`Client.share <service.client.Client.share>` and its async twin with ``resumable=True``.

1. ``POST /v1/artifacts`` with ``Upload-Complete: ?0``, the multipart ``Content-Type`` and
   ``Upload-Length`` (the whole body's length), and an empty body: the node creates an upload
   and answers its URL. (The draft's ``104`` interim answer would give the URL while the body
   streams; the node cannot send one, so the body goes in the appends, where every byte is
   resumable.)
2. ``PATCH`` the upload from the offset with the rest of the body and ``Upload-Complete: ?1``;
   its answer is the share's (201, 202, or the problem a plain share would get).
3. After a lost connection or a busy answer (502, 503, 504), ``HEAD`` the upload for the
   offset the node holds and go to 2; a 409 ``mismatching-upload-offset`` names the offset
   itself. Each such step is one of the share's ``retries`` (:class:`~._protocol.RetryPlan`).

When the last append's answer is lost, ``HEAD`` says the upload is complete, and the last
append sent again (an empty body at the full offset) is answered with the share's first answer
(``Idempotent-Replayed``), within the node's ``ENTENTE_IDEMPOTENCY_TTL_SECONDS``: nothing is
shared twice. An upload that is gone (expired, cancelled, or refused) is an error.
"""

from __future__ import annotations

from dataclasses import dataclass

import httpx

from service.client import _protocol as p
from service.client.errors import UnexpectedAnswerError
from service.client.models import Shared
from service.errors import UsageError

__all__ = [
    "INTEROP",
    "PARTIAL_UPLOAD",
    "Resumable",
    "append_headers",
    "body_length",
    "creation_headers",
]

PARTIAL_UPLOAD = "application/partial-upload"
MISMATCH = "https://iana.org/assignments/http-problem-types#mismatching-upload-offset"
# The draft's interop version ("Draft Version Identification"), sent on every request of an upload.
INTEROP = {"Upload-Draft-Interop-Version": "8"}


def body_length(opened: p.Opened, upload: p.Upload) -> int:
    """The whole multipart body's length; a resumable share needs a source of known size that
    can be read again from any offset."""
    if opened.size is None or not opened.rewindable:
        raise UsageError("a resumable share needs a file, or a stream that can seek")
    return len(upload.head) + opened.size + len(upload.tail)


def creation_headers(upload: p.Upload, length: int) -> dict[str, str]:
    return {
        "Content-Type": upload.headers["Content-Type"],
        "Upload-Complete": "?0",
        "Upload-Length": str(length),
        **INTEROP,
    }


def append_headers(offset: int, length: int) -> dict[str, str]:
    """An append of the body from ``offset`` to its end (``length`` bytes in all)."""
    return {
        "Content-Length": str(length - offset),
        "Content-Type": PARTIAL_UPLOAD,
        "Upload-Offset": str(offset),
        "Upload-Complete": "?1",
        **INTEROP,
    }


def _offset(response: httpx.Response) -> int:
    value = response.headers.get("Upload-Offset", "")
    if not value.isdigit():
        raise UnexpectedAnswerError(f"the node answered {response.status_code} without an offset")
    return int(value)


@dataclass
class Resumable:
    """Where a resumable share stands: ``where`` (the upload's path, once created) and
    ``offset`` (the bytes the node holds; None when it must be asked), then ``done``."""

    plan: p.RetryPlan
    where: str | None = None
    offset: int | None = 0
    done: Shared | None = None

    def request(self) -> tuple[str, str]:
        """The next request's method and path."""
        if self.where is None:
            return "POST", "/v1/artifacts"
        return ("HEAD", self.where) if self.offset is None else ("PATCH", self.where)

    def lost(self, exc: httpx.TransportError) -> float:
        """The connection was lost: the pause before asking for the offset again."""
        pause = self.plan.after_error(exc)
        if self.where is not None:
            self.offset = None
        return pause

    def answered(self, response: httpx.Response) -> float:
        """Read an answer: the pause before the next request (``done`` once it is the share's).
        Raises :class:`~service.client.errors.ProblemError` for a refusal."""
        method, _ = self.request()
        if method == "PATCH" and response.status_code in (201, 202):
            self.done = p.shared(response)
            return 0.0
        if method == "POST" and response.status_code == 201:
            self.where = response.headers.get("Location")
            if not self.where or not self.where.startswith("/v1/uploads/"):
                raise UnexpectedAnswerError("the node created an upload without its Location")
            self.offset = _offset(response)
            return 0.0
        if method == "HEAD" and response.status_code == 204:
            self.offset = _offset(response)
            return 0.0
        if method == "HEAD" and response.status_code == 404:
            raise UnexpectedAnswerError(
                "the upload is gone: it expired, was cancelled, or its share was refused (the "
                "refusal's answer was lost; nothing was shared)"
            )
        if (
            method == "PATCH"
            and response.status_code == 409
            and p.problem_type(response) == MISMATCH
        ):
            doc = p.read_json(response)
            expected = doc.get("expected-offset") if isinstance(doc, dict) else None
            pause = self.plan.after_conflict("the node holds a different offset of the upload")
            if pause is not None:
                self.offset = expected if isinstance(expected, int) else None
                return pause
        pause = self.plan.after_answer(response)
        if pause is None:
            p.check(response)
            raise UnexpectedAnswerError(f"the node answered {response.status_code} to {method}")
        if self.where is not None:
            self.offset = None
        return pause
