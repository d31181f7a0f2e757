"""The HTTP client commands against real nodes: share, inbox, get, revoke."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.nodes import ENTENTE, Federation, base_env, run_cli, start_federation

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    federation = start_federation(
        tmp_path_factory.mktemp("cli-client"),
        ("uk-aisi", "us-aisi"),
        ENTENTE_SYNC_INTERVAL_SECONDS="0.2",
    )
    yield federation
    federation.stop()


def _as(fed: Federation, node: str, role: str) -> dict[str, str]:
    return base_env(ENTENTE_URL=fed.nodes[node].url, ENTENTE_TOKEN=fed.tokens[node][role])


def test_share_inbox_get_revoke(fed: Federation, tmp_path: Path) -> None:
    finding = tmp_path / "finding.md"
    finding.write_bytes(b"# Finding\n" + b"evaluation detail\n" * 4000)
    shared = run_cli(
        "share", str(finding), "--to", "us-aisi", "--tlp", "TLP:GREEN",
        "--topic", "evaluation", "--purpose", "evaluation", "--approve-onward", "ca-aisi",
        "--json", env=_as(fed, "uk-aisi", "publisher"),
    )  # fmt: skip
    assert shared.returncode == 0, shared.stderr
    art = json.loads(shared.stdout)
    assert art["policy"]["onward_approved"] == ["ca-aisi"]

    deadline = time.monotonic() + 30
    items: list[dict[str, str]] = []
    while time.monotonic() < deadline and not items:
        inbox = run_cli("inbox", "--json", env=_as(fed, "us-aisi", "reader"))
        assert inbox.returncode == 0, inbox.stderr
        items = json.loads(inbox.stdout)
        time.sleep(0.3)
    assert [i["id"] for i in items] == [art["id"]]

    out = tmp_path / "copy.md"
    got = run_cli("get", art["id"], "-o", str(out), env=_as(fed, "us-aisi", "reader"))
    assert got.returncode == 0, got.stderr
    assert out.read_bytes() == finding.read_bytes()
    again = run_cli("get", art["id"], "-o", str(out), env=_as(fed, "us-aisi", "reader"))
    assert again.returncode != 0 and "exists" in again.stderr  # never clobbers
    piped = subprocess.run(
        [ENTENTE, "get", art["id"], "-o", "-"], env=_as(fed, "us-aisi", "reader"),
        capture_output=True, timeout=60,
    )  # fmt: skip
    assert piped.returncode == 0, piped.stderr
    assert piped.stdout == finding.read_bytes()  # the plaintext itself, nothing else

    refused = run_cli("revoke", art["id"], env=_as(fed, "uk-aisi", "reader"))
    assert refused.returncode != 0
    assert refused.stderr.startswith("entente: 403")
    revoked = run_cli(
        "revoke", art["id"], "--reason", "superseded", env=_as(fed, "uk-aisi", "publisher")
    )
    assert revoked.returncode == 0, revoked.stderr
    assert "revoked" in revoked.stdout and "already" not in revoked.stdout
    twice = run_cli("revoke", art["id"], env=_as(fed, "uk-aisi", "publisher"))
    assert twice.returncode == 0, twice.stderr
    assert "was already revoked at" in twice.stdout
    deadline = time.monotonic() + 30
    gone = run_cli("get", art["id"], "-o", str(tmp_path / "late.md"),
                   env=_as(fed, "us-aisi", "reader"))  # fmt: skip
    while "410" not in gone.stderr and time.monotonic() < deadline:
        time.sleep(0.3)
        gone = run_cli("get", art["id"], "-o", str(tmp_path / "late.md"),
                       env=_as(fed, "us-aisi", "reader"))  # fmt: skip
    assert gone.returncode == 1
    assert gone.stderr.startswith("entente: 410: artifact ")
    assert "was revoked by its origin uk-aisi at" in gone.stderr


def test_share_quiet_prints_the_id_and_get_waits_for_its_arrival(
    fed: Federation, tmp_path: Path
) -> None:
    finding = tmp_path / "notes.txt"
    finding.write_bytes(b"notes\n")
    shared = run_cli(
        "share", str(finding), "--to", "us-aisi", "--tlp", "green", "--topic", "evaluation",
        "--purpose", "evaluation", "--quiet", env=_as(fed, "uk-aisi", "publisher"),
    )  # fmt: skip
    assert shared.returncode == 0, shared.stderr
    ident = shared.stdout.strip()
    assert ident.startswith("art_") and len(shared.stdout.splitlines()) == 1
    early = run_cli("get", "art_notarrivedyet", "--wait", "1", "-o", str(tmp_path / "x"),
                    env=_as(fed, "us-aisi", "reader"))  # fmt: skip
    assert early.returncode == 1 and early.stderr.startswith("entente: 404")
    got = run_cli("get", ident, "--wait", "30", "-o", str(tmp_path / "got.txt"),
                  env=_as(fed, "us-aisi", "reader"))  # fmt: skip
    assert got.returncode == 0, got.stderr
    assert (tmp_path / "got.txt").read_bytes() == b"notes\n"
    found = run_cli("inbox", "--search", "NOTES", "--since", "2020-01-01T00:00:00Z", "--json",
                    env=_as(fed, "us-aisi", "reader"))  # fmt: skip
    assert found.returncode == 0, found.stderr
    assert ident in [a["id"] for a in json.loads(found.stdout)]
    none = run_cli("inbox", "--search", "no such title", env=_as(fed, "us-aisi", "reader"))
    assert none.returncode == 0 and "Nothing received matches." in none.stdout
    naive = run_cli("inbox", "--since", "2020-01-01", env=_as(fed, "us-aisi", "reader"))
    assert naive.returncode == 2 and "--since needs a time zone" in naive.stderr


def test_denied_share_names_rule_and_clause(fed: Federation, tmp_path: Path) -> None:
    f = tmp_path / "red.txt"
    f.write_bytes(b"red")
    result = run_cli(
        "share", str(f), "--to", "us-aisi", "--tlp", "TLP:RED", "--topic", "evaluation",
        "--purpose", "evaluation", env=_as(fed, "uk-aisi", "publisher"),
    )  # fmt: skip
    assert result.returncode == 1
    line = result.stderr.strip()
    assert len(line.splitlines()) == 1
    assert "403" in line and "above-amber" in line and "US-UK MOU 2024" in line


def test_show_prints_each_partners_delivery_and_signed_receipt(
    fed: Federation, tmp_path: Path
) -> None:
    finding = tmp_path / "finding.txt"
    finding.write_bytes(b"finding\n")
    ident = run_cli(
        "share", str(finding), "--to", "us-aisi", "--tlp", "green", "--topic", "evaluation",
        "--purpose", "evaluation", "-q", env=_as(fed, "uk-aisi", "publisher"),
    ).stdout.strip()  # fmt: skip
    deadline = time.monotonic() + 30
    while True:
        shown = run_cli("show", ident, "--json", env=_as(fed, "uk-aisi", "auditor"))
        assert shown.returncode == 0, shown.stderr
        deliveries = json.loads(shown.stdout)["deliveries"]
        if (deliveries and deliveries[0]["state"] == "delivered") or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert [d["partner"] for d in deliveries] == ["us-aisi"]
    receipt = deliveries[0]["receipt"]
    assert receipt["payloadType"] and receipt["signatures"][0]["sig"]
    text = run_cli("show", ident, env=_as(fed, "uk-aisi", "auditor"))
    assert text.returncode == 0, text.stderr
    row = next(line for line in text.stdout.splitlines() if line.startswith("│ us-aisi"))
    assert "delivered" in row and "signed by" in row
    assert "share-evaluation" in text.stdout or "allowed by" in text.stdout
    at_partner = run_cli("show", ident, env=_as(fed, "us-aisi", "reader"))
    assert at_partner.returncode == 0 and "from uk-aisi" in at_partner.stdout
