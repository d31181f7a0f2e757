"""Every refusal is audited exactly once (service/errors.py): by the problem handler, or by the
domain (marked with ``mark_audited``, so the handler adds nothing), or never (``quiet``).

The registry of marks is per request (``RefusalScope``); outside a request marking is a no-op.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from pathlib import Path

import httpx
import pytest
from sqlmodel import select

from service.audit.refusals import RefusalScope, already_audited, mark_audited
from service.errors import EntenteError, ForbiddenError, NotFoundError
from service.models import AuditEntry
from service.tokens import Role
from tests.service.nodekit import UPLOAD_HEADERS, Kit, make_node, pin, upload_body


@pytest.fixture
def uk(tmp_path: Path) -> Kit:
    kit = make_node(tmp_path, "uk-aisi")
    for other in ("us-aisi", "ca-aisi"):
        pin(kit, make_node(tmp_path, other))
    return kit


def _kinds(kit: Kit) -> Counter[str]:
    with kit.node.db.session() as s:
        return Counter(e.kind for e in s.exec(select(AuditEntry)))


def _meta(partners: list[str]) -> str:
    return json.dumps(
        {
            "title": "Red-teaming results for model X",
            "tlp": "TLP:AMBER",
            "topics": ["evaluation/red-teaming"],
            "purposes": ["evaluation"],
            "partners": partners,
        }
    )


async def _share(kit: Kit, partners: list[str]) -> httpx.Response:
    async with kit.client() as c:
        return await c.post(
            "/v1/artifacts",
            content=upload_body(_meta(partners), b"secret finding"),
            headers={**UPLOAD_HEADERS, **kit.auth(Role.PUBLISHER)},
        )


# --- through the app -----------------------------------------------------------------------------


async def test_a_policy_denial_is_one_share_denied_and_no_handler_entry(uk: Kit) -> None:
    before = _kinds(uk)
    r = await _share(uk, ["us-aisi", "ca-aisi"])
    assert r.status_code == 403 and r.json()["type"] == "urn:entente:problem:policy-denied"
    added = _kinds(uk) - before
    assert added == Counter({"share.denied": 1})  # the 403 handler wrote no request.refused


async def test_an_unknown_partner_is_one_share_denied_and_no_handler_entry(uk: Kit) -> None:
    before = _kinds(uk)
    r = await _share(uk, ["nobody-aisi"])
    assert r.status_code == 422, r.text
    assert _kinds(uk) - before == Counter({"share.denied": 1})


async def test_a_refusal_nobody_audited_is_audited_by_the_handler(uk: Kit) -> None:
    before = _kinds(uk)
    async with uk.client() as c:
        r = await c.get("/v1/artifacts/no-such-artifact", headers=uk.auth(Role.READER))
    assert r.status_code == 404
    assert _kinds(uk) - before == Counter({"request.refused": 1})


@pytest.mark.parametrize(
    ("headers", "status"),
    [({"Authorization": "Bearer nonsense"}, 401), ("reader", 403)],
)
async def test_an_auth_refusal_is_one_auth_refused(
    uk: Kit, headers: dict[str, str] | str, status: int
) -> None:
    before = _kinds(uk)
    sent = uk.auth(Role.READER) if headers == "reader" else headers
    async with uk.client() as c:
        r = await c.post("/v1/admin/policies/reload", headers=sent)
    assert r.status_code == status, r.text
    assert _kinds(uk) - before == Counter({"auth.refused": 1})


@pytest.mark.parametrize("path", ["/ui/static/nothing.js", "/ui/no/such/page"])
async def test_a_console_scan_writes_no_entry(uk: Kit, path: str) -> None:
    before = _kinds(uk)
    async with uk.client() as c:
        r = await c.get(path)
    assert r.status_code == 404
    assert _kinds(uk) == before


# --- the registry itself -------------------------------------------------------------------------


def test_quiet_is_fixed_at_construction() -> None:
    assert NotFoundError("scan", quiet=True).quiet
    assert not NotFoundError("refused").quiet
    with pytest.raises(AttributeError):
        NotFoundError("x").quiet = True  # type: ignore[misc]


def test_outside_a_request_marking_is_a_no_op() -> None:
    error = ForbiddenError("no")
    assert mark_audited(error) is error
    assert not already_audited(error)


async def test_marks_are_per_request_and_seen_from_worker_threads() -> None:
    seen: list[tuple[bool, bool]] = []
    kept: list[EntenteError] = []

    async def app(scope: object, receive: object, send: object) -> None:
        marked = await asyncio.to_thread(mark_audited, ForbiddenError("marked in a thread"))
        other = ForbiddenError("not marked")
        seen.append((already_audited(marked), already_audited(other)))
        seen.append((any(already_audited(e) for e in kept), False))
        kept.append(marked)

    scope_app = RefusalScope(app)
    for _ in range(2):
        await scope_app({"type": "http"}, None, None)
    # In each request, its own mark is seen and an unmarked error is not; the second request
    # does not see the first one's mark.
    assert seen == [(True, False), (False, False), (True, False), (False, False)]
    assert not already_audited(kept[0])  # and nothing outside
