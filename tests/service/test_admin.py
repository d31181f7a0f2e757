"""Reloading the MOU policy set on a running node: all or nothing, audited."""

from __future__ import annotations

from pathlib import Path

from sqlmodel import select

from service.models import AuditEntry
from service.tokens import Role
from tests.service.nodekit import make_node


async def test_reload_applies_a_valid_folder_and_keeps_the_old_set_on_error(tmp_path: Path) -> None:
    kit = make_node(tmp_path, "uk-aisi")
    folder = kit.node.home.policies_dir
    before = kit.node.policies.current.sha256
    async with kit.client() as c:
        same = await c.post("/v1/admin/policies/reload", headers=kit.auth(Role.ADMIN))
        assert same.status_code == 200
        assert same.json()["changed"] is False

        (folder / "ca-aisi.yaml").unlink()
        changed = await c.post("/v1/admin/policies/reload", headers=kit.auth(Role.ADMIN))
        assert changed.json()["changed"] is True
        assert [p["partner"] for p in changed.json()["policies"]] == ["us-aisi"]
        after = kit.node.policies.current.sha256
        assert after != before

        (folder / "broken.yaml").write_text("format: entente.policy/v1\nid: x\nunknown_key: 1\n")
        refused = await c.post("/v1/admin/policies/reload", headers=kit.auth(Role.ADMIN))
        assert refused.status_code == 422
        assert "broken.yaml" in refused.json()["detail"]
        assert kit.node.policies.current.sha256 == after  # the previous set stays in force

        reader = await c.post("/v1/admin/policies/reload", headers=kit.auth(Role.READER))
        assert reader.status_code == 403
    with kit.node.db.session() as s:
        changes = s.exec(select(AuditEntry).where(AuditEntry.kind == "policy.set_changed")).all()
    assert len(changes) == 2  # at start, and the one real change
