"""Who is using the console: the session cookie checked on every request, forms read with
bounds, and cross-site POSTs refused. Cookie and CSRF formats are in ``_session``.

Only the ``auditor`` and ``admin`` roles may use the console. The token row and the session's
row are read on every request, so revoking a token ends its console sessions at once and
signing out ends that session at every replica. Every refusal of credentials is an
``auth.refused`` audit event, like the API's.
"""

from __future__ import annotations

from typing import Annotated
from urllib.parse import parse_qsl, urlsplit

from fastapi import Depends, Request

from service.audit.refusals import audit_refusal
from service.console._render import LoginRequired, console_cookie
from service.console._session import SESSION_COOKIE, ConsoleKeys, SessionClaims
from service.console._session_store import session_state
from service.errors import ForbiddenError, InvalidInputError, TooLargeError
from service.models import Token
from service.node import Node
from service.tokens import Principal, Role
from service.web import NodeDep

__all__ = [
    "CONSOLE_ROLES",
    "ConsoleUser",
    "audit_auth_refused",
    "check_same_origin",
    "console_keys",
    "epoch",
    "live_session",
    "read_form",
    "require_session",
]

CONSOLE_ROLES = frozenset({Role.AUDITOR, Role.ADMIN})
MAX_FORM_BYTES = 8 * 1024  # bytes in a console form body
MAX_FORM_FIELDS = 16


def console_keys(node: Node) -> ConsoleKeys:
    return ConsoleKeys(seed=node.keys.signing.seed, node_id=node.node_id)


def epoch(node: Node) -> int:
    return int(node.now().timestamp())


def audit_auth_refused(node: Node, request: Request, *, reason: str, actor: str) -> None:
    # An anonymous one is summarised per source and window (service.audit.refusals).
    audit_refusal(
        request,
        node,
        kind="auth.refused",
        actor=actor,
        reason=reason,
        detail={
            "method": request.method,
            "path": request.url.path[:300],
            "reason": reason,
            "via": "console",
        },
        decision=None,
    )


def live_session(node: Node, value: str) -> tuple[SessionClaims | None, Principal | None, str]:
    """The claims and principal of a live session cookie, or ``None`` and why not."""
    try:
        claims = console_keys(node).open(value, now=epoch(node))
    except ValueError as exc:
        return None, None, f"session {exc}"
    with node.db.session() as session:
        row = session.get(Token, claims.token_id)
        state = session_state(
            session, session_id=claims.session_id, token_id=claims.token_id, now=node.now()
        )
    if row is None:
        return claims, None, "unknown"
    if row.revoked_at is not None:
        return claims, None, "revoked"
    if row.role not in CONSOLE_ROLES:
        return claims, None, f"role {row.role} may not use the console"
    if state != "live":
        return claims, None, f"session {state}"
    return claims, Principal(token_id=row.id, name=row.name, role=Role(row.role)), ""


def require_session(request: Request, node: NodeDep) -> Principal:
    """The signed-in auditor or admin, or :class:`LoginRequired` (audited)."""
    value = console_cookie(request, SESSION_COOKIE)
    if not value:
        audit_auth_refused(node, request, reason="missing", actor="anonymous")
        raise LoginRequired()
    _claims, principal, reason = live_session(node, value)
    if principal is None:
        audit_auth_refused(node, request, reason=reason, actor="anonymous")
        raise LoginRequired(clear_cookie=True)
    request.state.principal = principal
    request.state.csrf = console_keys(node).csrf_for_session(value)
    return principal


ConsoleUser = Annotated[Principal, Depends(require_session)]


def check_same_origin(request: Request) -> None:
    """Refuse a POST that the browser says came from another site.

    ``Sec-Fetch-Site`` (sent by current browsers) must be ``same-origin`` (or ``none``: typed by
    the user); an ``Origin`` header must name this host. With ``Referrer-Policy: no-referrer``
    browsers send ``Origin: null`` on same-origin form posts, so ``null`` is left to the CSRF
    token, which every form carries anyway.
    """
    site = request.headers.get("sec-fetch-site")
    if site is not None and site not in ("same-origin", "none"):
        raise ForbiddenError("this form was sent from another site", reason="cross-site")
    origin = request.headers.get("origin")
    if origin is not None and origin != "null":
        host = request.headers.get("host", "")
        if urlsplit(origin).netloc.lower() != host.lower():
            raise ForbiddenError("this form was sent from another origin", reason="cross-origin")


async def read_form(request: Request) -> dict[str, str]:
    """A small URL-encoded form body (first value of each field), bounded in size and fields."""
    media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media != "application/x-www-form-urlencoded":
        raise InvalidInputError("console forms are sent as application/x-www-form-urlencoded")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            raise TooLargeError(f"a console form is at most {MAX_FORM_BYTES} bytes")
    try:
        pairs = parse_qsl(
            body.decode("utf-8"),
            keep_blank_values=True,
            max_num_fields=MAX_FORM_FIELDS,
            errors="strict",
        )
    except (UnicodeDecodeError, ValueError):
        raise InvalidInputError("the form is not valid UTF-8 form data") from None
    form: dict[str, str] = {}
    for key, value in pairs:
        form.setdefault(key, value)
    return form
