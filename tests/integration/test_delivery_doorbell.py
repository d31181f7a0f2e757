"""A share and a revocation reach the partner as soon as they are committed, not at the delivery
worker's next poll: two real nodes whose poll (``ENTENTE_SYNC_INTERVAL_SECONDS``) and feed pull
are two minutes apart, so anything that arrives within the test's 30 s came by the doorbell
(``service.doorbell``) the commit rang."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.integration.test_federation import upload, wait_for
from tests.nodes import Federation, start_federation

pytestmark = pytest.mark.integration

POLL = 120.0  # neither the delivery poll nor the pull comes round within the test
WITHIN = 30.0


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    federation = start_federation(
        tmp_path_factory.mktemp("doorbell"),
        ("uk-aisi", "us-aisi"),
        ENTENTE_SYNC_INTERVAL_SECONDS=str(POLL),
        ENTENTE_PULL_INTERVAL_SECONDS=str(POLL),
    )
    yield federation
    federation.stop()


def _status_at_us(fed: Federation, art: str) -> int:
    us = fed.nodes["us-aisi"]
    r = httpx.get(f"{us.url}/v1/artifacts/{art}", headers=fed.auth("us-aisi", "reader"))
    return r.status_code


def test_a_share_and_its_revocation_go_at_once_not_at_the_next_poll(fed: Federation) -> None:
    uk = fed.nodes["uk-aisi"]
    meta = {
        "title": "Doorbell",
        "tlp": "TLP:GREEN",
        "topics": ["evaluation"],
        "purposes": ["evaluation"],
        "partners": ["us-aisi"],
    }
    for i in range(2):  # the second share: after the worker's pause began again
        body, headers = upload({**meta, "title": f"Doorbell {i}"}, b"rung %d" % i)
        r = httpx.post(
            f"{uk.url}/v1/artifacts",
            content=body,
            headers={**headers, **fed.auth("uk-aisi", "publisher")},
        )
        assert r.status_code == 201, r.text
        art = r.json()["id"]
        wait_for(
            lambda art=art: _status_at_us(fed, art) == 200,
            timeout=WITHIN,
            what=f"delivery {i} before the {POLL:g} s poll",
        )
    rv = httpx.post(
        f"{uk.url}/v1/artifacts/{art}/revoke",
        params={"reason": "superseded"},
        headers=fed.auth("uk-aisi", "publisher"),
    )
    assert rv.status_code == 200, rv.text
    wait_for(
        lambda: _status_at_us(fed, art) == 410,
        timeout=WITHIN,
        what=f"the revocation before the {POLL:g} s poll",
    )
