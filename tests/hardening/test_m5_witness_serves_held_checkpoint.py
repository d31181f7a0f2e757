"""M5 (witness side): a witness serves the latest checkpoint it cosigned for a log, freshly
cosigned, so that auditors can compare a log with it (`GET /witness/v1/checkpoint`)."""

from __future__ import annotations

from pathlib import Path

import httpx

from crypto.note import AddCheckpointRequest, open_checkpoint
from service.app import create_app
from service.audit.checkpoints import latest_checkpoint
from service.audit.entries import log_origin, log_signer
from service.audit.witness import add_checkpoint, partner_witness_verifier, witness_cosigner
from service.models import Partner
from tests.service.audit_fixtures import add_events, make_node, pin, second_database, seq_all


async def test_the_witness_serves_what_it_cosigned(tmp_path: Path, db_url: str) -> None:
    with second_database(db_url, tmp_path) as us_url:
        uk = make_node(tmp_path, "uk-aisi", db_url)
        us = make_node(tmp_path, "us-aisi", us_url)
        try:
            pin(uk, us)
            pin(us, uk)
            app = create_app(us, start_workers=False)
            origin = log_origin("uk-aisi")
            async with httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://us-aisi"
            ) as client:
                # Nothing cosigned yet: a problem document, anonymous callers included.
                r = await client.get("/witness/v1/checkpoint", params={"origin": origin})
                assert r.status_code == 404
                assert r.headers["content-type"] == "application/problem+json"

                add_events(uk, 5)
                seq_all(uk)
                with uk.db.session() as s:
                    cp = latest_checkpoint(s)
                with us.db.session() as s:
                    add_checkpoint(
                        s,
                        origin_partner="uk-aisi",
                        request_body=AddCheckpointRequest(0, (), cp.note).to_bytes(),
                        cosigner=witness_cosigner(us),
                        now=us.now(),
                    )
                r = await client.get("/witness/v1/checkpoint", params={"origin": origin})
                assert r.status_code == 200, r.text
                assert r.headers["content-type"].startswith("text/plain")
                r2 = await client.get("/witness/v1/checkpoint", params={"origin": "nope"})
                assert r2.status_code == 404
            with uk.db.session() as s:
                partner = s.get(Partner, "us-aisi")
                assert partner is not None
                verifier = partner_witness_verifier(partner)
            opened = open_checkpoint(r.content, log=log_signer(uk).verifier, witnesses=[verifier])
            assert (opened.checkpoint.size, opened.checkpoint.root_hash) == (cp.size, cp.root)
            assert [c.name for c in opened.cosignatures] == ["entente.dev/witness/us-aisi"]
        finally:
            uk.db.dispose()
            us.db.dispose()
