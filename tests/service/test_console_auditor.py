"""The auditor's console pages in process: an artifact's life (entries in log order, each linked
to its proof page, and the partner's signed receipt verified again), the witness evidence page,
and the export bundle downloaded with the console session."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlmodel import select

from crypto.receipt import Receipt, sign_receipt
from service.audit.bundle import verify_bundle
from service.audit.entries import log_signer
from service.audit.models import WitnessEvidence
from service.audit.sequencer import run_sequencer
from service.federation.settle import record_receipts
from service.models import AuditEntry, Outbox
from service.tokens import Role
from tests.service.nodekit import UPLOAD_HEADERS, Kit, make_node, pin, upload_body
from tests.service.test_console import CSP, InlineCode, sign_in

META = {
    "title": "Joint evaluation <b>not bold</b>",
    "tlp": "TLP:AMBER",
    "topics": ["evaluation/red-teaming"],
    "purposes": ["evaluation"],
    "partners": ["us-aisi"],
}


@pytest.fixture
def kits(tmp_path: Path, db_url: str) -> tuple[Kit, Kit]:
    uk = make_node(tmp_path, "uk-aisi", db_url=db_url)
    us = make_node(tmp_path, "us-aisi")
    pin(uk, us)
    pin(uk, make_node(tmp_path, "ca-aisi"))
    return uk, us


async def _shared_and_delivered(uk: Kit, us: Kit) -> tuple[str, str]:
    """Share with the US, and settle the delivery with a receipt the US node signed."""
    async with uk.client() as c:
        r = await c.post(
            "/v1/artifacts",
            content=upload_body(json.dumps(META), b"finding\n" * 10),
            headers={**UPLOAD_HEADERS, **uk.auth(Role.PUBLISHER)},
        )
    assert r.status_code == 201, r.text
    art = r.json()
    receipt = sign_receipt(
        Receipt(
            kind="delivery", artifact_id=art["id"], sha256=art["sha256"], receiver="us-aisi",
            sender="uk-aisi", received_at=datetime.now(UTC),
        ),
        key=us.node.keys.signer,
    )  # fmt: skip
    settled = record_receipts(uk.node, partner="us-aisi", receipts=[receipt.to_json()])
    assert settled == 1
    run_sequencer(uk.node)
    return art["id"], art["sha256"]


def _kinds(page: str) -> list[str]:
    return re.findall(r'<tr data-kind="([^"]+)">', page)


async def test_the_life_of_an_artifact(kits: tuple[Kit, Kit]) -> None:
    uk, us = kits
    art, _sha = await _shared_and_delivered(uk, us)
    async with uk.client() as c:
        anonymous = await c.get(f"/ui/artifacts/{art}")
        assert anonymous.status_code == 303 and anonymous.headers["location"] == "/ui/login"
        await sign_in(c, uk.tokens[Role.AUDITOR])
        page = await c.get(f"/ui/artifacts/{art}")
        assert page.status_code == 200, page.text
        assert page.headers["content-security-policy"] == CSP
        assert InlineCode.find(page.text) == []
        assert _kinds(page.text) == ["share.allowed", "delivery.sent", "receipt.recorded"]
        assert "&lt;b&gt;not bold&lt;/b&gt;" in page.text  # the title is escaped
        with uk.node.db.session() as session:
            seqs = [
                e.seq
                for e in session.scalars(
                    select(AuditEntry).where(AuditEntry.artifact_id == art).order_by(AuditEntry.seq)  # type: ignore[arg-type]
                )
            ]
        for seq in seqs:
            assert f'href="/ui/audit/{seq}"' in page.text
        signed = page.text[page.text.index('id="signed-h"') :]
        assert "delivery receipt" in signed and "<code>us-aisi</code>" in signed
        assert '<span class="status-word pass">verified</span>' in signed
        assert f'href="/ui/export?artifact={art}"' in page.text

        # The audit table and an entry page link to the artifact's life.
        table = await c.get("/ui/audit?kind=share.allowed")
        assert f'href="/ui/artifacts/{art}"' in table.text
        assert 'href="/ui/export?kind=share.allowed"' in table.text
        entry = await c.get(f"/ui/audit/{seqs[0]}")
        assert f'href="/ui/artifacts/{art}"' in entry.text

        # A stored receipt that no longer verifies is shown as such.
        with uk.node.db.session() as session:
            row = session.exec(select(Outbox).where(Outbox.artifact_id == art)).one()
            envelope = json.loads(row.receipt or "{}")
            envelope["signatures"][0]["sig"] = "A" * 86 + "=="
            row.receipt = json.dumps(envelope)
            session.add(row)
            session.commit()
        again = await c.get(f"/ui/artifacts/{art}")
        assert '<span class="status-word fail">not verified</span>' in again.text

        missing = await c.get("/ui/artifacts/no-such-artifact")
        assert missing.status_code == 404
        assert (await c.get("/ui/artifacts/" + "x" * 65)).status_code == 404
    with uk.node.db.engine.connect() as conn:
        views = [
            json.loads(d)
            for (d,) in conn.execute(
                sa.text("SELECT detail FROM audit_entries WHERE kind = 'audit.read'")
            )
        ]
        refused = conn.execute(
            sa.text("SELECT detail FROM audit_entries WHERE kind = 'request.refused'")
        ).all()
    assert {"via": "console", "view": "artifact", "artifact_id": art, "count": 3} in views
    assert any("/ui/artifacts/no-such-artifact" in d for (d,) in refused)


async def test_the_export_download(kits: tuple[Kit, Kit]) -> None:
    uk, us = kits
    art, _sha = await _shared_and_delivered(uk, us)
    async with uk.client() as c:
        await sign_in(c, uk.tokens[Role.AUDITOR])
        got = await c.get(f"/ui/export?artifact={art}")
        assert got.status_code == 200
        assert got.headers["content-security-policy"] == CSP
        assert "attachment" in got.headers["content-disposition"]
        verdict = verify_bundle(got.content.splitlines(), log=log_signer(uk.node).verifier)
        assert verdict.count == 3 and verdict.filter.artifact == art
        for query in ("bogus=1", "to=99999", "kind=no.such", "from=x"):
            bad = await c.get(f"/ui/export?{query}")
            assert bad.status_code == 422, query
            assert bad.headers["content-type"].startswith("text/html")
    with uk.node.db.engine.connect() as conn:
        exported = conn.execute(
            sa.text("SELECT detail FROM audit_entries WHERE kind = 'audit.exported'")
        ).all()
    assert [json.loads(d)["via"] for (d,) in exported] == ["console"]


async def test_the_witness_evidence_page(kits: tuple[Kit, Kit]) -> None:
    uk, _us = kits
    with uk.node.db.session() as session:
        session.add(
            WitnessEvidence(
                origin="entente.dev/audit/us-aisi", partner="us-aisi",
                received_at=datetime(2026, 11, 27, 9, 0, tzinfo=UTC),
                reason="a different root at the cosigned size <script>", old_size=4, size=4,
                root=b"\x01" * 32, request=b"old 4\n\nentente.dev/audit/us-aisi\n4\n",
                cosigned_size=4, cosigned_root=b"\x02" * 32, cosigned_note=None,
            )
        )  # fmt: skip
        session.commit()
    async with uk.client() as c:
        await sign_in(c, uk.tokens[Role.ADMIN])
        page = await c.get("/ui/witness")
        assert page.status_code == 200
        assert 'href="/ui/witness" aria-current="page"' in page.text
        assert "<code>us-aisi</code>" in page.text
        assert "a different root at the cosigned size &lt;script&gt;" in page.text
        assert "2026-11-27 09:00:00 UTC" in page.text
        assert ("AQEB" * 10)[:40] in page.text  # the refused root, base64
        assert (await c.get("/ui/witness?before=x")).status_code == 422
        overview = await c.get("/ui/")
        assert 'href="/ui/witness"' in overview.text


async def test_an_empty_day_has_nothing_to_export(kits: tuple[Kit, Kit]) -> None:
    uk, _us = kits
    run_sequencer(uk.node)
    async with uk.client() as c:
        await sign_in(c, uk.tokens[Role.AUDITOR])
        page = await c.get("/ui/audit?since=2001-01-01&until=2001-01-02")
        assert "there is nothing to export" in page.text
        today = datetime.now(UTC).date().isoformat()
        scoped = await c.get(f"/ui/audit?since={today}&actor=admin")
        assert re.search(r'href="/ui/export\?from=0&amp;to=\d+"', scoped.text)
        assert "The actor filter is not part of an export." in scoped.text
