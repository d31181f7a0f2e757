"""``/ui``: the auditor and operator console (server-rendered HTML).

Pages (auditor or admin, signed in with a bearer token; see ``_auth`` and ``_session``):

* ``/ui/``: the node, its log and witnesses, partners with fingerprints and policies, delivery
  state per partner, and charts of shares, reads and denials over time;
* ``/ui/audit``: the audit log as a filterable, paginated table (an audited read);
* ``/ui/audit/{seq}``: one entry with its fields, inclusion proof and checkpoint with
  cosignatures, verified in the browser by ``static/verify.js`` (an audited read);
* ``/ui/policies``: each partner's active policy for a policy officer, and the explain form;
* ``/ui/artifacts/{id}``, ``/ui/witness``, ``/ui/export``: the auditor's views (``_auditor``);
* ``/ui/login``, ``/ui/logout``; ``/ui/static/{console.css,verify.js}``.

Pages work without JavaScript; only the verification panel needs it. Routers parse, call the
domain (``_queries``, ``service.audit``, ``policies``) and render; errors become HTML
pages in ``_render.ConsoleRoute``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from starlette.concurrency import run_in_threadpool

from crypto.keys import format_fingerprint
from crypto.vocab import TLP_LABELS
from policies import (
    ACTIONS,
    Policy,
    SummaryRow,
    explain,
    summarize,
    summarize_policy,
)
from policies import Request as PolicyRequest
from service.audit.entries import ENTRY_FIELDS
from service.audit.log import EVENT_KINDS, record
from service.console._auditor import export_link
from service.console._auditor import router as auditor_router
from service.console._auth import (
    CONSOLE_ROLES,
    ConsoleUser,
    audit_auth_refused,
    check_same_origin,
    console_keys,
    epoch,
    live_session,
    read_form,
)
from service.console._charts import bar_chart
from service.console._queries import (
    SERIES,
    AuditFilter,
    AuditPage,
    activity,
    audit_page,
    b64,
    entry_view,
    log_status,
    parse_seq,
    partner_ids,
    partner_views,
)
from service.console._render import (
    STATIC,
    ConsoleRoute,
    audit_console_refusal,
    clear_console_cookie,
    console_cookie,
    render,
    set_console_cookie,
)
from service.console._session import (
    LOGIN_COOKIE,
    LOGIN_MAX_AGE,
    SESSION_COOKIE,
    SESSION_MAX_AGE,
    new_login_nonce,
    new_session_nonce,
)
from service.console._session_store import end_session, start_session
from service.errors import AuthError, ForbiddenError, InvalidInputError, NotFoundError
from service.federation.status import sync_state
from service.node import Node
from service.tokens import authenticate
from service.web import NodeDep

__all__ = ["router"]

router = APIRouter(prefix="/ui", route_class=ConsoleRoute, include_in_schema=False)

_TERMS = re.compile(r"[\s,]+")
_MAX_TERMS = 16


def _params(request: Request) -> dict[str, str]:
    """The query string, first value of each name."""
    out: dict[str, str] = {}
    for key, value in request.query_params.multi_items():
        out.setdefault(key, value)
    return out


# ---------------------------------------------------------------------------------------------
# Signing in and out


def _login_page(
    request: Request, *, status: int = 200, error: str | None = None, notice: str | None = None
) -> HTMLResponse:
    node: Node = request.app.state.node
    nonce = new_login_nonce()
    response = render(
        request,
        "login.html",
        status=status,
        title="Sign in",
        login_csrf=console_keys(node).csrf_for_login(nonce),
        error=error,
        notice=notice,
    )
    set_console_cookie(response, request, LOGIN_COOKIE, nonce, max_age=LOGIN_MAX_AGE)
    return response


def _has_session(request: Request, node: Node) -> bool:
    value = console_cookie(request, SESSION_COOKIE)
    return value is not None and live_session(node, value)[1] is not None


@router.get("/login")
def login_form(request: Request, node: NodeDep) -> Response:
    if _has_session(request, node):
        return RedirectResponse("/ui/", status_code=303)
    notice = "You are signed out." if _params(request).get("signed_out") == "1" else None
    return _login_page(request, notice=notice)


def _login(request: Request, node: Node, form: dict[str, str]) -> Response:
    check_same_origin(request)
    keys = console_keys(node)
    nonce = console_cookie(request, LOGIN_COOKIE) or ""
    if not nonce or not keys.check_csrf(form.get("csrf"), keys.csrf_for_login(nonce)):
        raise ForbiddenError(
            "the sign-in form has expired or did not come from this console; load it again",
            reason="csrf",
        )
    try:
        with node.db.session() as session:
            principal = authenticate(session, form.get("token", "").strip() or None)
    except AuthError as exc:
        reason = str(exc.extra.get("reason", "unknown"))
        audit_auth_refused(node, request, reason=reason, actor="anonymous")
        return _login_page(request, status=401, error=f"Not signed in: {exc.message}.")
    if principal.role not in CONSOLE_ROLES:
        audit_auth_refused(
            node,
            request,
            reason=f"role {principal.role.value} may not use the console",
            actor=principal.actor,
        )
        return render(
            request,
            "refused.html",
            status=403,
            title="Not allowed",
            role=principal.role.value,
        )
    now = epoch(node)
    session_nonce, session_id = new_session_nonce()
    with node.db.session() as session:
        start_session(
            session,
            session_id=session_id,
            token_id=principal.token_id,
            now=node.now(),  # to the microsecond: orders a token's sessions
            expires_at=datetime.fromtimestamp(now + SESSION_MAX_AGE, UTC),
        )
    response = RedirectResponse("/ui/", status_code=303)
    session_value = keys.issue(token_id=principal.token_id, now=now, nonce=session_nonce)
    set_console_cookie(response, request, SESSION_COOKIE, session_value, max_age=SESSION_MAX_AGE)
    clear_console_cookie(response, request, LOGIN_COOKIE)
    return response


@router.post("/login")
async def login(request: Request, node: NodeDep) -> Response:
    form = await read_form(request)
    return await run_in_threadpool(_login, request, node, form)


def _end_session(node: Node, value: str, csrf: str | None) -> None:
    """End the cookie's session on the server (every copy of the cookie stops working)."""
    claims, principal, _reason = live_session(node, value)
    if claims is None or principal is None:
        return  # nothing live to end: the cookie is just cleared
    keys = console_keys(node)
    if not keys.check_csrf(csrf, keys.csrf_for_session(value)):
        raise ForbiddenError("the sign-out form did not come from this console", reason="csrf")
    with node.db.session() as session:
        end_session(session, session_id=claims.session_id, now=node.now())


@router.post("/logout")
async def logout(request: Request, node: NodeDep) -> Response:
    form = await read_form(request)
    check_same_origin(request)
    value = console_cookie(request, SESSION_COOKIE)
    if value:
        await run_in_threadpool(_end_session, node, value, form.get("csrf"))
    response = RedirectResponse("/ui/login?signed_out=1", status_code=303)
    clear_console_cookie(response, request, SESSION_COOKIE)
    return response


# ---------------------------------------------------------------------------------------------
# Pages


@router.get("")
def root() -> Response:
    return RedirectResponse("/ui/", status_code=303)


@router.get("/")
def overview(request: Request, node: NodeDep, user: ConsoleUser) -> HTMLResponse:
    now = node.now()
    with node.db.session() as session:
        status = log_status(node, session)
        partners = partner_views(node, session)
        act = activity(session, now=now)
        sync = sync_state(session)
        record(
            session,
            kind="audit.read",
            actor=user.actor,
            detail={"via": "console", "view": "overview"},
            now=now,
        )
    charts = [bar_chart(name, act.counts[name], act.starts, act.step) for name in SERIES]
    return render(
        request,
        "overview.html",
        title="Overview",
        nav="overview",
        log=status,
        fingerprint=format_fingerprint(node.home.fingerprint),
        partners=partners,
        pulls={p.node_id: p for p in partners},
        sync=sync,
        activity=act,
        charts=charts,
        series=SERIES,
        now=now,
    )


@router.get("/audit")
def audit_log(request: Request, node: NodeDep, user: ConsoleUser) -> HTMLResponse:
    """The filtered table, an audited read. Filters it cannot apply are a refusal (422, audited
    as one): the form comes back with the error and no entries, so nothing was read."""
    params = _params(request)
    error = None
    try:
        flt = AuditFilter.parse(params)
        before = parse_seq(params.get("before"), "before")
        after = parse_seq(params.get("after"), "after")
    except InvalidInputError as exc:
        audit_console_refusal(request, exc)
        error, flt, before, after = exc.message, AuditFilter(), None, None
    limit = min(node.settings.page_size_default, node.settings.page_size_max)
    with node.db.session() as session:
        partners = partner_ids(session)
        status = log_status(node, session)
        export = export_link(session, flt)
        page = AuditPage([], None, None)
        if error is None:
            page = audit_page(session, flt, before=before, after=after, limit=limit)
            record(
                session,
                kind="audit.read",
                actor=user.actor,
                detail={
                    "via": "console",
                    "filters": flt.as_params(),
                    "before": before,
                    "after": after,
                    "count": len(page.entries),
                },
                now=node.now(),
            )
    return render(
        request,
        "audit.html",
        status=422 if error else 200,
        title="Audit log",
        nav="audit",
        error=error,
        flt=flt,
        page=page,
        params=flt.as_params(),
        kinds=sorted(EVENT_KINDS),
        partners=partners,
        log=status,
        filtered=bool(flt.as_params()),
        export=export,
    )


@router.get("/audit/{seq}")
def audit_entry(seq: str, request: Request, node: NodeDep, user: ConsoleUser) -> HTMLResponse:
    try:
        index = parse_seq(seq, "the entry number")
    except InvalidInputError:
        index = None
    if index is None:
        raise NotFoundError(f"there is no audit entry {seq[:40]!r}")
    size = parse_seq(_params(request).get("size"), "size")
    with node.db.session() as session:
        view = entry_view(node, session, index, size=size)
        record(
            session,
            kind="audit.read",
            actor=user.actor,
            detail={"via": "console", "seq": index, "size": view.checkpoint.size},
            now=node.now(),
        )
    return render(
        request,
        "entry.html",
        title=f"Audit entry {index}",
        nav="audit",
        view=view,
        entry=view.entry,
        fields=ENTRY_FIELDS,
        leaf_text=view.leaf.decode("utf-8"),
        stored_leaf=b64(view.stored_leaf_hash) if view.stored_leaf_hash else None,
        proof=[b64(h) for h in view.proof],
        data=view.verification_data(),
    )


def _terms(value: str, name: str) -> frozenset[str]:
    terms = [t for t in _TERMS.split(value.strip()) if t]
    if len(terms) > _MAX_TERMS or any(len(t) > 200 for t in terms):
        raise InvalidInputError(f"at most {_MAX_TERMS} {name}, each at most 200 characters")
    return frozenset(terms)


def _when(value: str, name: str) -> datetime | None:
    if not value.strip():
        return None
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        raise InvalidInputError(f"{name} is a date and time (UTC)") from None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed


def _explain_request(params: dict[str, str], partners: list[str]) -> PolicyRequest:
    partner = params.get("partner", "")
    if partner not in partners:
        raise InvalidInputError("choose a partner that has an active policy")
    action = params.get("action", "share")
    if action not in ACTIONS:
        raise InvalidInputError(f"the action is one of {', '.join(ACTIONS)}")
    tlp = params.get("tlp") or None
    if tlp is not None and tlp not in TLP_LABELS:
        raise InvalidInputError("choose a TLP label")
    onward = params.get("onward_to", "").strip() or None
    if onward is not None and len(onward) > 63:
        raise InvalidInputError("the onward node id is at most 63 characters")
    return PolicyRequest(
        partner=partner,
        action=action,
        tlp=tlp,
        topics=_terms(params.get("topics", ""), "topics"),
        purposes=_terms(params.get("purposes", ""), "purposes"),
        embargo_until=_when(params.get("embargo_until", ""), "the embargo"),
        expires_at=_when(params.get("expires_at", ""), "the expiry"),
        onward_to=onward,
        originator_approved=params.get("originator_approved") == "1",
    )


@dataclass(frozen=True)
class RuleView:
    """One rule of a policy as a policy officer reads it (``summarize_policy`` rows, merged)."""

    row: SummaryRow  # kind, id, clause, TLP, topics, purposes, conditions, obligations in words
    actions: tuple[str, ...]
    description: str


def _rules(policy: Policy) -> list[RuleView]:
    """Forbids first, then permits, each by id; a rule's actions in vocabulary order."""
    rows: dict[str, list[SummaryRow]] = {}
    for row in summarize_policy(policy):
        rows.setdefault(row.rule, []).append(row)
    described = {r.id: r.description for r in policy.rules}
    views = [
        RuleView(same[0], tuple(r.action for r in same), described.get(rule, ""))
        for rule, same in rows.items()
    ]
    return sorted(views, key=lambda v: (v.row.kind != "forbid", v.row.rule))


@router.get("/policies")
def policies_page(request: Request, node: NodeDep, user: ConsoleUser) -> HTMLResponse:
    now = node.now()
    active = list(node.policies.current)
    partners = [p.partner for p in active]
    params = _params(request)
    asked: dict[str, Any] | None = None
    error = None
    if "partner" in params:
        try:
            decision = node.policies.decide(_explain_request(params, partners), now=now)
        except InvalidInputError as exc:
            audit_console_refusal(request, exc)
            error = exc.message
        else:
            asked = {
                "decision": decision,
                "summary": summarize(decision),
                "text": explain(decision),
            }
    views = [{"policy": p, "in_force": p.in_force(now), "rules": _rules(p)} for p in active]
    return render(
        request,
        "policies.html",
        status=422 if error else 200,
        title="Policies",
        nav="policies",
        views=views,
        partners=partners,
        actions=ACTIONS,
        tlps=TLP_LABELS,
        form=params,
        asked=asked,
        error=error,
        now=now,
    )


@router.get("/static/{name}")
def static(name: str, request: Request) -> Response:
    asset = STATIC.get(name)
    if asset is None:
        raise NotFoundError("no such console file", quiet=True)  # a scan, not a refusal
    return asset.response(request)


router.include_router(auditor_router)  # /ui/artifacts/{id}, /ui/witness, /ui/export


@router.get("/{rest:path}")
def unknown(rest: str) -> Response:
    raise NotFoundError("there is no such console page", quiet=True)  # a scan, not a refusal
