"""Rendering for the console: Jinja2 templates (autoescaped), static assets, security headers, and
the one place where errors on ``/ui`` become HTML pages.

Every response of the console's router goes through :class:`ConsoleRoute`, which adds the
security headers (a strict Content-Security-Policy: no inline script or style, nothing from
another origin) and turns a domain error into an error page with the error's status, auditing
the refusal as the API's problem handler does. This module does not authenticate anyone.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Coroutine
from datetime import datetime
from importlib import resources
from typing import Any

import jinja2
from fastapi import Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.routing import APIRoute
from starlette.concurrency import run_in_threadpool

from service.audit.refusals import RefusalLedger, already_audited
from service.console._session import SESSION_COOKIE
from service.errors import EntenteError
from service.node import Node

__all__ = [
    "SECURITY_HEADERS",
    "STATIC",
    "ConsoleRoute",
    "LoginRequired",
    "StaticAsset",
    "audit_console_refusal",
    "clear_console_cookie",
    "console_cookie",
    "error_page",
    "render",
    "secure_cookies",
    "set_console_cookie",
]

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'; "
    "object-src 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}

_env = jinja2.Environment(
    loader=jinja2.PackageLoader("service.console", "templates"),
    autoescape=True,  # every template is HTML: escape every value
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


def _utc(value: datetime | None, seconds: bool = True) -> str:
    if value is None:
        return "never"
    return value.strftime("%Y-%m-%d %H:%M:%S UTC" if seconds else "%Y-%m-%d %H:%M UTC")


_env.filters["utc"] = _utc


class LoginRequired(Exception):
    """No valid console session: send the browser to the login page."""

    def __init__(self, *, clear_cookie: bool = False) -> None:
        super().__init__("login required")
        self.clear_cookie = clear_cookie


def secure_cookies(request: Request) -> bool:
    """Whether the console's cookies are ``Secure``: the node's public URL is https (behind a
    TLS ingress the request itself arrives over plain HTTP), or this request came over HTTPS."""
    node: Node = request.app.state.node
    return node.home.url.startswith("https://") or request.url.scheme == "https"


def _cookie(request: Request, name: str) -> tuple[str, str, bool]:
    """A console cookie's name, path and ``Secure`` flag. A secure one is ``__Host-`` prefixed
    (RFC 6265bis 4.1.3.2: so it must be Secure, have path ``/`` and no domain), so that no
    sibling subdomain can plant one (a session of its own, say) for the browser to send here;
    a plain-HTTP node's (a developer's) keeps its name, under ``/ui``."""
    if secure_cookies(request):
        return f"__Host-{name}", "/", True
    return name, "/ui", False


def console_cookie(request: Request, name: str) -> str | None:
    """The value of the console cookie ``name`` the request carries (see :func:`_cookie`)."""
    return request.cookies.get(_cookie(request, name)[0])


def set_console_cookie(
    response: Response, request: Request, name: str, value: str, *, max_age: int
) -> None:
    full, path, secure = _cookie(request, name)
    response.set_cookie(
        full, value, max_age=max_age, path=path, secure=secure, httponly=True, samesite="strict"
    )


def clear_console_cookie(response: Response, request: Request, name: str) -> None:
    full, path, secure = _cookie(request, name)
    response.delete_cookie(full, path=path, secure=secure, httponly=True, samesite="strict")


def render(
    request: Request,
    template: str,
    *,
    status: int = 200,
    title: str,
    **context: Any,
) -> HTMLResponse:
    """Render ``template`` with the common context (node, signed-in user, CSRF token)."""
    node: Node = request.app.state.node
    body = _env.get_template(template).render(
        title=title,
        node_id=node.node_id,
        node_name=node.home.name,
        user=getattr(request.state, "principal", None),
        csrf=getattr(request.state, "csrf", ""),
        nav=context.pop("nav", ""),
        **context,
    )
    return HTMLResponse(body, status_code=status, headers={"Cache-Control": "no-store"})


class StaticAsset:
    """A file of ``service/console/static`` read once, with its type and a strong ETag."""

    def __init__(self, name: str, media_type: str) -> None:
        self.body = resources.files("service.console").joinpath("static", name).read_bytes()
        self.media_type = media_type
        self.etag = '"' + hashlib.sha256(self.body).hexdigest()[:32] + '"'

    def response(self, request: Request) -> Response:
        headers = {"ETag": self.etag, "Cache-Control": "no-cache"}
        if request.headers.get("if-none-match") == self.etag:
            return Response(status_code=304, headers=headers)
        return Response(self.body, media_type=self.media_type, headers=headers)


# The only files served under /ui/static: a fixed table, so no request path reaches the disk.
STATIC = {
    "console.css": StaticAsset("console.css", "text/css; charset=utf-8"),
    "verify.js": StaticAsset("verify.js", "text/javascript; charset=utf-8"),
}


def audit_console_refusal(request: Request, exc: EntenteError) -> None:
    """Audit a refusal on a console page (as ``service.api.problems`` does for the API), one
    entry each, kept for later if the database does not answer (``RefusalLedger.write``); for
    a page that answers a refusal itself rather than raising it. Blocking."""
    node: Node = request.app.state.node
    principal = getattr(request.state, "principal", None)
    RefusalLedger.of(request.app.state, node).write(
        kind="request.refused",
        actor=principal.actor if principal is not None else "anonymous",
        rule=exc.kind,
        detail={
            "method": request.method,
            "path": request.url.path[:300],
            "status": exc.status,
            "detail": exc.message[:300],
            "via": "console",
        },
    )


def error_page(request: Request, exc: EntenteError) -> HTMLResponse:
    if exc.status < 500 and not exc.quiet and not already_audited(exc):
        audit_console_refusal(request, exc)
    return render(
        request,
        "error.html",
        status=exc.status,
        title=exc.title,
        heading=exc.title,
        message=exc.message,
    )


class ConsoleRoute(APIRoute):
    """Adds the security headers to every console response and maps errors to HTML pages."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def console_handler(request: Request) -> Response:
            try:
                response = await handler(request)
            except LoginRequired as exc:
                response = RedirectResponse("/ui/login", status_code=303)
                if exc.clear_cookie:
                    clear_console_cookie(response, request, SESSION_COOKIE)
            except EntenteError as exc:
                response = await run_in_threadpool(error_page, request, exc)
            for name, value in SECURITY_HEADERS.items():
                response.headers.setdefault(name, value)
            response.headers.setdefault("Cache-Control", "no-store")
            return response

        return console_handler
