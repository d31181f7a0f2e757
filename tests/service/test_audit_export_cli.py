"""``entente audit export`` (offline, ``--home``) and ``entente audit verify-export``, run as the
installed command: a bundle checks with the node's descriptor alone; a tampered bundle, another
node's descriptor or a wrong fingerprint fail with one clear line."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
import sqlalchemy as sa

from crypto.keys import format_fingerprint
from service.audit.entries import encode_leaf
from service.node import Node
from tests.nodes import run_cli
from tests.service.audit_fixtures import add_events, make_node, seq_all


@pytest.fixture
def node(tmp_path: Path) -> Node:
    n = make_node(tmp_path, "uk-aisi", f"sqlite:///{tmp_path / 'uk.db'}")
    add_events(n, 5, kind="read", partner="us-aisi")
    add_events(n, 2, kind="share.denied", partner="ca-aisi")
    seq_all(n)
    return n


def _home(node: Node, tmp_path: Path) -> tuple[str, ...]:
    return ("--home", str(node.home.path), "--database-url", f"sqlite:///{tmp_path / 'uk.db'}")


def _descriptor(node: Node, path: Path) -> Path:
    path.write_bytes(node.descriptor().to_bytes())
    return path


def test_export_then_verify_offline(node: Node, tmp_path: Path) -> None:
    out = tmp_path / "read.jsonl"
    done = run_cli("audit", "export", *_home(node, tmp_path), "--kind", "read", "-o", str(out))
    assert done.returncode == 0, done.stderr
    assert "exported 5 entries with their proofs" in done.stderr
    assert not (tmp_path / "read.jsonl.partial").exists()
    desc = _descriptor(node, tmp_path / "uk.json")
    fp = format_fingerprint(node.keys.signing.fingerprint)
    ok = run_cli("audit", "verify-export", str(out), "--descriptor", str(desc), "--fingerprint", fp)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert ok.stdout.startswith("VERIFIED export bundle of entente.dev/audit/uk-aisi")
    assert "entries      5, each proved to be in that checkpoint" in ok.stdout
    assert "complete     not provable" in ok.stdout
    as_json = json.loads(
        run_cli("audit", "verify-export", str(out), "--descriptor", str(desc), "--json").stdout
    )
    assert (as_json["ok"], as_json["entries"], as_json["filter"]["kind"]) == (True, 5, ["read"])
    with node.db.engine.connect() as conn:
        (detail,) = conn.execute(
            sa.text("SELECT detail FROM audit_entries WHERE kind = 'audit.exported'")
        ).one()
    assert json.loads(detail)["via"] == "cli"


def test_a_tampered_bundle_or_the_wrong_node_fails(node: Node, tmp_path: Path) -> None:
    out = tmp_path / "all.jsonl"
    assert run_cli("audit", "export", *_home(node, tmp_path), "-o", str(out)).returncode == 0
    desc = _descriptor(node, tmp_path / "uk.json")
    lines = out.read_bytes().splitlines()
    line = json.loads(lines[2])
    entry = json.loads(base64.b64decode(line["leaf"]))
    entry["actor"] = "reader:mallory"
    line["leaf"] = base64.b64encode(encode_leaf(entry)).decode()
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b"\n".join([*lines[:2], json.dumps(line).encode(), *lines[3:]]) + b"\n")
    failed = run_cli("audit", "verify-export", str(bad), "--descriptor", str(desc))
    assert failed.returncode == 1
    assert failed.stdout.startswith("FAILED export bundle")
    assert "entry 1 (line 3) is not in the log signed at size 7" in failed.stdout

    other = make_node(tmp_path, "us-aisi", f"sqlite:///{tmp_path / 'us.db'}")
    wrong = run_cli(
        "audit", "verify-export", str(out), "--descriptor",
        str(_descriptor(other, tmp_path / "us.json")),
    )  # fmt: skip
    assert wrong.returncode == 1
    assert "not signed by the log key entente.dev/audit/us-aisi" in wrong.stdout
    pinned = run_cli(
        "audit", "verify-export", str(out), "--descriptor", str(desc),
        "--fingerprint", format_fingerprint(other.keys.signing.fingerprint),
    )  # fmt: skip
    assert pinned.returncode != 0
    assert "not the --fingerprint given" in pinned.stderr
    other.db.dispose()


def test_bad_ranges_and_raw(node: Node, tmp_path: Path) -> None:
    beyond = run_cli("audit", "export", *_home(node, tmp_path), "--to", "7")
    assert beyond.returncode != 0
    assert "to is 7, but the latest checkpoint covers entries 0 to 6" in beyond.stderr
    mixed = run_cli("audit", "export", *_home(node, tmp_path), "--raw", "--kind", "read")
    assert mixed.returncode != 0 and "--raw exports the whole log" in mixed.stderr
    raw = run_cli("audit", "export", *_home(node, tmp_path), "--raw", "--from", "5")
    assert raw.returncode == 0, raw.stderr
    assert [json.loads(x)["seq"] for x in raw.stdout.splitlines()] == [5, 6]
