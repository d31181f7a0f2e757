"""FastAPI dependencies: the node, a database session, the calling principal and role checks."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlmodel import Session
from starlette.concurrency import run_in_threadpool

from service.audit.refusals import audit_refusal, mark_audited
from service.errors import AuthError, ForbiddenError
from service.limits import Limits
from service.node import Node
from service.tokens import Principal, Role, authenticate
from service.web import NodeDep

__all__ = ["SessionDep", "require_roles"]


def get_session(node: NodeDep) -> Iterator[Session]:
    with node.db.session() as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization")
    if header is None:
        return None
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return "malformed"
    return value.strip()


def _refuse(node: Node, request: Request, *, kind: str, reason: str, actor: str) -> None:
    """Audit a refusal in its own transaction (the request's own transaction will not commit);
    an anonymous one is summarised per source (``service.audit.refusals``)."""
    audit_refusal(
        request,
        node,
        kind=kind,
        actor=actor,
        reason=reason,
        detail={"method": request.method, "path": request.url.path[:300], "reason": reason},
        decision=None,
    )


def _authenticate(node: Node, presented: str | None) -> Principal:
    with node.db.engine.connect() as conn:  # a read: no ORM session
        return authenticate(conn, presented)


def require_roles(*roles: Role) -> Callable[..., AsyncIterator[Principal]]:
    """A dependency that authenticates the bearer token and checks its role, then holds one
    of the token's in-flight slots (``max_requests_in_flight``) while the request runs."""
    allowed = frozenset(roles)

    async def dependency(request: Request, node: NodeDep) -> AsyncIterator[Principal]:
        presented = _bearer(request)
        try:
            if node.db.is_sqlite:
                # One indexed row from a local file (and under WAL a reader never waits for a
                # writer): cheaper here on the event loop than the hop to a worker thread.
                principal = _authenticate(node, presented)
            else:
                principal = await run_in_threadpool(_authenticate, node, presented)
        except AuthError as exc:
            reason = str(exc.extra.get("reason", "unknown"))
            await run_in_threadpool(
                _refuse, node, request, kind="auth.refused", reason=reason, actor="anonymous"
            )
            mark_audited(exc)
            raise
        if principal.role not in allowed:
            await run_in_threadpool(
                _refuse,
                node,
                request,
                kind="auth.refused",
                reason=f"role {principal.role.value} may not use this route",
                actor=principal.actor,
            )
            needed = " or ".join(sorted(r.value for r in allowed))
            raise mark_audited(
                ForbiddenError(
                    f"the {principal.role.value} role may not do this; it needs {needed}",
                    role=principal.role.value,
                )
            )
        request.state.principal = principal
        limits = Limits.of(request.app.state)
        limits.token(node, principal.token_id)
        async with limits.running(
            node,
            f"token:{principal.token_id}",
            actor=principal.actor,
            method=request.method,
            path=request.url.path,
        ):
            yield principal

    return dependency
