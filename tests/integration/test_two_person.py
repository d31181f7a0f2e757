"""Two-person control against real nodes: ``entente share`` at a configured label waits, and
``entente approvals`` lets a second person list and approve it; only then is it delivered."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.nodes import Federation, base_env, run_cli, start_federation

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    federation = start_federation(
        tmp_path_factory.mktemp("two-person"),
        ("uk-aisi", "us-aisi"),
        ENTENTE_SYNC_INTERVAL_SECONDS="0.2",
        ENTENTE_TWO_PERSON_TLP="TLP:GREEN",  # the example terms permit GREEN, not RED
    )
    yield federation
    federation.stop()


def _as(fed: Federation, node: str, role: str) -> dict[str, str]:
    return base_env(ENTENTE_URL=fed.nodes[node].url, ENTENTE_TOKEN=fed.tokens[node][role])


def _inbox(fed: Federation) -> list[dict[str, str]]:
    inbox = run_cli("inbox", "--json", env=_as(fed, "us-aisi", "reader"))
    assert inbox.returncode == 0, inbox.stderr
    items: list[dict[str, str]] = json.loads(inbox.stdout)
    return items


def test_a_share_waits_for_a_second_person_then_reaches_the_partner(
    fed: Federation, tmp_path: Path
) -> None:
    finding = tmp_path / "finding.md"
    finding.write_bytes(b"# Finding\n" + b"evaluation detail\n" * 100)
    shared = run_cli(
        "share", str(finding), "--to", "us-aisi", "--tlp", "TLP:GREEN",
        "--topic", "evaluation", "--purpose", "evaluation", env=_as(fed, "uk-aisi", "publisher"),
    )  # fmt: skip
    assert shared.returncode == 0, shared.stderr
    assert "NOT shared yet" in shared.stdout
    listed = run_cli("approvals", "list", "--json", env=_as(fed, "uk-aisi", "admin"))
    assert listed.returncode == 0, listed.stderr
    [pending] = json.loads(listed.stdout)
    assert pending["action"] == "share" and pending["state"] == "pending"

    own = run_cli("approvals", "approve", pending["id"], env=_as(fed, "uk-aisi", "publisher"))
    assert own.returncode != 0
    assert own.stderr.startswith("entente: 403")
    time.sleep(1.0)  # several delivery polls: nothing goes out before approval
    assert _inbox(fed) == []

    ok = run_cli("approvals", "approve", pending["id"], env=_as(fed, "uk-aisi", "admin"))
    assert ok.returncode == 0, ok.stderr
    deadline = time.monotonic() + 30
    items: list[dict[str, str]] = []
    while time.monotonic() < deadline and not items:
        items = _inbox(fed)
        time.sleep(0.3)
    assert [i["id"] for i in items] == [pending["artifact_id"]]
