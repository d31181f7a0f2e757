"""L9 (access): ``/metrics`` names partners and their counts, so it is not anonymous. It needs a
bearer token of the ``metrics`` role (least privilege, for the Prometheus scraper) or of an
``auditor`` or ``admin``; every other caller is refused with a problem document, audited."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import sqlalchemy as sa

from service.models import AuditEntry
from service.tokens import Role
from tests.service.nodekit import Kit, make_node


@pytest.fixture
def kit(tmp_path: Path) -> Kit:
    return make_node(tmp_path, "uk-aisi")


def _refusals(kit: Kit) -> list[dict[str, object]]:
    with kit.node.db.session() as session:
        rows = session.scalars(
            sa.select(AuditEntry).where(AuditEntry.kind == "auth.refused")  # type: ignore[arg-type]
        )
        return [json.loads(r.detail) for r in rows]


@pytest.mark.parametrize(
    ("headers", "status", "reason"),
    [
        ({}, 401, "missing"),
        ({"Authorization": "Bearer ent_nope_nope"}, 401, None),
        ({"Authorization": "Basic Zm9vOmJhcg=="}, 401, None),
    ],
    ids=["anonymous", "unknown-token", "wrong-scheme"],
)
async def test_metrics_refuse_callers_without_a_token(
    kit: Kit, headers: dict[str, str], status: int, reason: str | None
) -> None:
    async with kit.client() as client:
        r = await client.get("/metrics", headers=headers)
    assert r.status_code == status
    assert r.headers["content-type"].startswith("application/problem+json")
    assert "entente_" not in r.text
    refused = [d for d in _refusals(kit) if d.get("path") == "/metrics"]
    assert refused, "the refusal is audited"
    if reason:
        assert refused[-1]["reason"] == reason


@pytest.mark.parametrize("role", [Role.PUBLISHER, Role.READER])
async def test_metrics_refuse_other_roles(kit: Kit, role: Role) -> None:
    async with kit.client() as client:
        r = await client.get("/metrics", headers=kit.auth(role))
    assert r.status_code == 403
    assert "entente_" not in r.text


@pytest.mark.parametrize("role", ["metrics", "auditor", "admin"])
async def test_metrics_answer_the_scraper_and_operators(kit: Kit, role: str) -> None:
    async with kit.client() as client:
        r = await client.get("/metrics", headers=kit.auth(Role(role)))
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    assert "entente_http_requests_total" in r.text


def test_the_deployment_docs_give_the_scraper_a_token() -> None:
    root = Path(__file__).resolve().parents[2] / "deploy"
    readme = (root / "README.md").read_text()
    monitoring = readme.split("## Monitoring", 1)[1].split("\n## ", 1)[0]
    assert "entente token create --role metrics" in monitoring
    assert "authorization:" in monitoring and "type: Bearer" in monitoring
    deployment = (root / "k8s" / "deployment.yaml").read_text()
    assert 'role "metrics"' in deployment
