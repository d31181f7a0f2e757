"""The auditor and operator console at ``/ui``: server-rendered pages (Jinja2, autoescaped), a
stylesheet and one small JavaScript module that verifies audit proofs and checkpoint signatures
in the browser (WebCrypto), independent of the node's own opinion.

``create_app`` includes :data:`router`; the static files are routes of the same router, so the
console is one ``include_router`` line. See ``router`` for the pages, ``_session`` for cookies
and CSRF, ``static/verify.js`` for the in-browser verification.
"""

from service.console.router import router

__all__ = ["router"]
