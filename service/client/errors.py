"""What leaves the client when a node refuses a request or cannot be reached.

Every error the client raises is a :class:`service.errors.RemoteError` (the ``entente`` command
line prints its message on one line and exits 1), or a :class:`service.errors.UsageError` for
arguments it refuses before talking to a node, or :class:`FileExistsError` for a download that
would overwrite a file:

    RemoteError
    ├── ProblemError            the node answered a refusal (an RFC 9457 problem document): its
    │                           status, ``type``, title, detail, and for a policy denial the
    │                           partner, rule and MOU clause
    ├── NodeUnreachableError    no answer: the connection failed, was lost or timed out (after
    │                           the retries the request allows)
    └── UnexpectedAnswerError   an answer that is not the API's: not JSON where JSON was due,
                                a download whose bytes do not match the node's SHA-256

Transport exceptions of httpx never leave the client; they become :class:`NodeUnreachableError`.
"""

from __future__ import annotations

from typing import Any

from service.errors import RemoteError

__all__ = ["NodeUnreachableError", "ProblemError", "RemoteError", "UnexpectedAnswerError"]


def _text(problem: dict[str, Any], name: str) -> str | None:
    value = problem.get(name)
    return value if isinstance(value, str) else None


class ProblemError(RemoteError):
    """The node refused the request. ``str(error)`` is the line the command line prints:
    ``403: <detail> [rule <rule>, <clause>]`` (the bracket only for a refusal that names an MOU
    clause). ``problem`` is the whole document as the node sent it (``{}`` when the answer had
    none, e.g. a proxy's error page: then ``detail`` is the HTTP reason phrase)."""

    def __init__(self, status: int, problem: dict[str, Any], *, reason: str = "") -> None:
        detail = _text(problem, "detail") or reason
        clause = _text(problem, "clause")
        rule = problem.get("rule")
        extra = f" [rule {rule}, {clause}]" if clause else ""
        super().__init__(f"{status}: {detail}{extra}")
        # EntenteError's class-level ``status`` and ``title`` are what a node would answer for
        # it; a ProblemError carries the status and title the node did answer.
        self.status = status  # type: ignore[misc]
        self.title = _text(problem, "title") or reason  # type: ignore[misc]
        self.type = _text(problem, "type") or "about:blank"
        self.detail = detail
        self.rule = rule if isinstance(rule, str) else None
        self.clause = clause
        self.partner = _text(problem, "partner")
        self.problem = problem


class NodeUnreachableError(RemoteError):
    """The node could not be reached, or the connection was lost before a whole answer."""


class UnexpectedAnswerError(RemoteError):
    """The node (or something in front of it) answered what the API never answers."""
