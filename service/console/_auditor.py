"""The auditor's pages of the console (included by ``router`` before its catch-all):

* ``/ui/artifacts/{id}``: one artifact's whole life at this node, in log order (each entry links
  to its entry and proof page), with the signed receipts and statements this node holds about
  it, each verified again (an audited read);
* ``/ui/witness``: the evidence this node keeps, as a witness, of partners' checkpoints it
  refused to cosign, and the latest checkpoint it cosigned for each partner's log (an audited
  read);
* ``/ui/export``: the export bundle (``service.audit.export``) of a filtered range, downloaded
  with the console session (an audited export, as ``GET /audit/v1/bundle``).

Same auth, CSP and error pages as every console page (``_auth``, ``_render.ConsoleRoute``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from urllib.parse import urlencode

import sqlalchemy as sa
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response, StreamingResponse
from sqlmodel import Session
from starlette.concurrency import run_in_threadpool

from service.audit.export import ExportPlan, bundle_lines, plan_export, record_export
from service.audit.log import record
from service.console._auth import ConsoleUser
from service.console._life import LIFE_LIMIT, artifact_life, parse_artifact_id, witness_view
from service.console._queries import AuditFilter, b64, midnight, parse_seq
from service.console._render import ConsoleRoute, render
from service.errors import InvalidInputError
from service.models import AuditEntry
from service.node import Node
from service.tokens import Principal
from service.web import NodeDep

__all__ = ["EXPORT_PARAMETERS", "ExportLink", "export_link", "router"]

router = APIRouter(route_class=ConsoleRoute, include_in_schema=False)

EXPORT_PARAMETERS = frozenset({"from", "to", "kind", "artifact"})
_entries = AuditEntry.__table__  # type: ignore[attr-defined]


@dataclass(frozen=True)
class ExportLink:
    """The export of the audit table's view: its kind and artifact filters, and its days as
    the range of entries recorded on them (``href`` None: no entry on those days)."""

    href: str | None
    first: int | None
    last: int | None
    ignored: tuple[str, ...]  # filters an export cannot carry


def export_link(session: Session, flt: AuditFilter) -> ExportLink:
    params: dict[str, str] = {}
    if flt.kind:
        params["kind"] = flt.kind
    if flt.artifact_id:
        params["artifact"] = flt.artifact_id
    first = last = None
    if flt.since is not None or flt.until is not None:
        c = _entries.c
        query = sa.select(sa.func.min(c.seq), sa.func.max(c.seq)).where(c.seq.is_not(None))
        if flt.since is not None:
            query = query.where(c.created_at >= midnight(flt.since))
        if flt.until is not None:
            query = query.where(c.created_at < midnight(flt.until) + timedelta(days=1))
        first, last = session.execute(query).one()
        if first is None:
            return ExportLink(None, None, None, ())
        params.update({"from": str(first), "to": str(last)})
    ignored = tuple(
        name
        for name, value in (
            ("actor", flt.actor),
            ("partner", flt.partner),
            ("decision", flt.decision),
        )
        if value
    )
    query_string = urlencode(params)
    href = "/ui/export" + (f"?{query_string}" if query_string else "")
    return ExportLink(href, first, last, ignored)


@router.get("/artifacts/{artifact_id}")
def artifact_page(
    artifact_id: str, request: Request, node: NodeDep, user: ConsoleUser
) -> HTMLResponse:
    ident = parse_artifact_id(artifact_id)
    with node.db.session() as session:
        life = artifact_life(node, session, ident)
        record(
            session,
            kind="audit.read",
            actor=user.actor,
            detail={
                "via": "console",
                "view": "artifact",
                "artifact_id": ident,
                "count": len(life.entries),
            },
            now=node.now(),
        )
    return render(
        request,
        "artifact.html",
        title=f"Artifact {ident}",
        nav="audit",
        life=life,
        limit=LIFE_LIMIT,
    )


@router.get("/witness")
def witness_page(request: Request, node: NodeDep, user: ConsoleUser) -> HTMLResponse:
    before = parse_seq(request.query_params.get("before"), "before")
    limit = min(node.settings.page_size_default, node.settings.page_size_max)
    with node.db.session() as session:
        view = witness_view(session, before=before, limit=limit)
        record(
            session,
            kind="audit.read",
            actor=user.actor,
            detail={"via": "console", "view": "witness", "count": len(view.evidence)},
            now=node.now(),
        )
    return render(
        request, "witness.html", title="Witness evidence", nav="witness", view=view, b64=b64
    )


def _int(request: Request, name: str) -> int | None:
    return parse_seq(request.query_params.get(name), f"'{name}'")


def _plan(node: Node, user: Principal, request: Request) -> ExportPlan:
    params = request.query_params
    unknown = sorted(set(params) - EXPORT_PARAMETERS)
    if unknown:
        raise InvalidInputError(
            f"unknown parameter {unknown[0][:40]!r}: an export takes from, to, kind and artifact"
        )
    kinds = [k for k in params.getlist("kind") if k]
    with node.db.session() as session:
        plan = plan_export(
            session, node_id=node.node_id, first=_int(request, "from"), last=_int(request, "to"),
            kinds=kinds, artifact=params.get("artifact") or None,
            max_entries=node.settings.audit_export_max_entries,
        )  # fmt: skip
        record_export(session, plan, actor=user.actor, via="console", now=node.now())
    return plan


@router.get("/export")
async def export_download(request: Request, node: NodeDep, user: ConsoleUser) -> Response:
    plan = await run_in_threadpool(_plan, node, user, request)
    flt = plan.filter
    name = f"{node.node_id}-audit-{flt.first}-{flt.last}.jsonl"
    return StreamingResponse(
        bundle_lines(node.db.session, plan, now=node.now()),
        media_type="application/jsonl",
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )
