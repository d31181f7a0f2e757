"""``entente policy check|explain|test|diff``, run as the real console script."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import policies

EXAMPLES = Path(str(policies.examples_dir()))
ENTENTE = shutil.which("entente", path=str(Path(sys.executable).parent)) or shutil.which("entente")


def run(*args: str | Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    assert ENTENTE, "the entente console script is not installed in this environment"
    base = {k: v for k, v in os.environ.items() if k != "ENTENTE_HOME"}
    return subprocess.run(
        [ENTENTE, "policy", *map(str, args)],
        capture_output=True,
        text=True,
        env={**base, **(env or {})},
        timeout=60,
        check=False,
    )


GOOD = (EXAMPLES / "uk-aisi" / "ca-aisi.yaml").read_text()


def test_check_summarises_the_bundled_examples() -> None:
    out = run("check")
    assert out.returncode == 0, out.stderr
    assert "No files given: checking the bundled example MOUs" in out.stdout
    assert "OK: 6 policies valid" in out.stdout
    assert "Rules for partner ca-aisi" in out.stdout
    assert "declaration-only-clear-green" in out.stdout
    assert "never permitted (denied by default): onward_share" in out.stdout


def test_check_reports_every_bad_file_by_line_and_fails(tmp_path: Path) -> None:
    node1, node2 = tmp_path / "node1", tmp_path / "node2"
    node1.mkdir()
    node2.mkdir()
    (node1 / "ca-aisi.yaml").write_text(GOOD)
    (node1 / "zz-bad.yaml").write_text(
        GOOD.replace("TLP:CLEAR, TLP:GREEN]", "TLP:CLEAR, TLP:GREN]", 1)
    )
    (node2 / "a.yaml").write_text(GOOD)
    (node2 / "b.yaml").write_text(GOOD.replace("id: uk-aisi.ca-aisi", "id: other"))
    out = run("check", node1, node2)
    assert out.returncode == 1
    bad = f"entente: {node1 / 'zz-bad.yaml'}:27: permit rule 'share-open': "
    assert bad + "unknown TLP label 'TLP:GREN'" in out.stderr
    assert f"{node2 / 'b.yaml'}: a second policy for partner 'ca-aisi'" in out.stderr
    assert "entente: 2 problem(s); see above" in out.stderr
    assert "Rules for partner ca-aisi" in out.stdout  # the good file is still summarised
    assert "Traceback" not in out.stderr


def test_explain_prints_the_decision_for_a_policy_officer() -> None:
    out = run(
        "explain", EXAMPLES / "uk-aisi", "--partner", "ca-aisi", "--action", "share",
        "--tlp", "amber", "--topic", "evaluation", "--purpose", "evaluation/red-teaming",
        "--now", "2026-06-01T12:00:00Z",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "DENY share to ca-aisi"
    assert "    declaration-only-clear-green  Bletchley Declaration, para 8 [example]" in lines
    assert "      ! TLP:AMBER is one of TLP:AMBER, TLP:AMBER+STRICT, TLP:RED" in lines
    assert "      - TLP:AMBER is not one of TLP:CLEAR, TLP:GREEN" in lines


def test_explain_from_the_home_in_the_environment_as_json(tmp_path: Path) -> None:
    (tmp_path / "policies").mkdir()
    for name, content in policies.example_files("uk-aisi").items():
        (tmp_path / "policies" / name).write_bytes(content)
    out = run(
        "explain", "--partner", "us-aisi", "--action", "read", "--tlp", "TLP:AMBER",
        "--topic", "evaluation", "--purpose", "evaluation", "--now", "2026-06-01", "--json",
        env={"ENTENTE_HOME": str(tmp_path)},
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["effect"] == "allow"
    assert sorted(r["clause"] for r in doc["rules"]) == [
        "US-UK MOU 2024 §3(b) [example]",
        "US-UK MOU 2024 §4(b) [example]",
    ]
    assert {o["kind"] for o in doc["obligations"]} == {"delete_at_expiry", "inform", "retain_max"}
    assert doc["policy"]["id"] == "uk-aisi.us-aisi"


def test_explain_needs_policies() -> None:
    out = run("explain", "--partner", "ca-aisi", "--action", "share")
    assert out.returncode == 2
    assert out.stderr.startswith("entente: give the node's policy folder or files, or --home")
    assert len(out.stderr.strip().splitlines()) == 1


def test_test_runs_the_bundled_golden_cases() -> None:
    out = run("test")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "70 cases in 6 files: 70 passed, 0 failed" in out.stdout


def test_test_fails_on_a_case_that_disagrees(tmp_path: Path) -> None:
    shutil.copy(EXAMPLES / "uk-aisi" / "ca-aisi.yaml", tmp_path)
    cases = (EXAMPLES / "uk-aisi" / "ca-aisi.cases.yaml").read_text()
    (tmp_path / "ca-aisi.cases.yaml").write_text(
        cases.replace("rules: [share-open]", "rules: [share-anything]", 1)
    )
    out = run("test", tmp_path)
    assert out.returncode == 1
    assert "FAIL" in out.stdout
    assert "expected rules [share-anything], got [share-open]" in out.stdout
    assert "entente: 8 cases in 1 files: 7 passed, 1 failed" in out.stderr


def test_diff_shows_what_an_amendment_changes(tmp_path: Path) -> None:
    new = tmp_path / "ca-aisi.yaml"
    new.write_text(
        GOOD.replace("version: 1", "version: 2").replace(
            "    actions: [share]\n    tlp: [TLP:CLEAR, TLP:GREEN]",
            "    actions: [share]\n    tlp: [TLP:CLEAR, TLP:GREEN, TLP:AMBER]",
        )
    )
    out = run("diff", EXAMPLES / "uk-aisi" / "ca-aisi.yaml", new)
    assert out.returncode == 0, out.stderr
    rows = [line.split() for line in out.stdout.splitlines()]
    assert ["ca-aisi", "*", "policy", "changed", "neutral", "version:", "1", "->", "2"] in rows
    assert any(
        r[:6] == ["ca-aisi", "share", "permit", "share-open", "changed", "widens"] for r in rows
    )
    assert "2 change(s): 1 widens, 1 neutral" in out.stdout


def test_help() -> None:
    out = run("--help")
    assert out.returncode == 0
    assert all(c in out.stdout for c in ("check", "explain", "test", "diff"))
    out = run("explain", "--help")
    assert out.returncode == 0
    assert all(o in out.stdout for o in ("--partner", "--action", "--tlp", "--topic", "--purpose"))


def test_check_on_a_terminal_prints_tables_and_clauses_as_written() -> None:
    out = run(
        "check", EXAMPLES / "uk-aisi" / "ca-aisi.yaml", env={"FORCE_COLOR": "1", "COLUMNS": "300"}
    )
    assert out.returncode == 0, out.stderr
    plain = re.sub(r"\x1b\[[0-9;]*m", "", out.stdout)
    assert "┃ action" in plain  # a rich table, not the plain columns
    assert "Bletchley Declaration, para 8 [example]" in plain  # not taken for markup


# --- check --home: the policies against the node they serve ----------------------------------


def _federation(tmp_path: Path) -> Path:
    """A UK and a US home pinned to each other (SQLite), with the example MOUs; the UK home."""
    from service.federation.setup import prepare_federation

    prepare_federation(
        {"uk-aisi": "http://127.0.0.1:1", "us-aisi": "http://127.0.0.1:2"},
        root=tmp_path,
        scrypt_work_factor=10,
    )
    return tmp_path / "uk-aisi"


def test_check_home_refuses_the_partners_policy_and_names_the_unprotected_partner(
    tmp_path: Path,
) -> None:
    uk = _federation(tmp_path)
    for name in ("us-aisi.yaml", "ca-aisi.yaml"):
        (uk / "policies" / name).unlink()
    # The US side's policy about uk-aisi, placed in the UK home (the wrong file).
    shutil.copy(tmp_path / "us-aisi" / "policies" / "uk-aisi.yaml", uk / "policies")
    out = run("check", "--home", uk)
    assert out.returncode == 1, out.stdout
    wrong = uk / "policies" / "uk-aisi.yaml"
    assert (
        f"entente: {wrong}: partner 'uk-aisi' is this node: this policy is about this node "
        "itself; it belongs in the partner's home"
    ) in out.stderr
    assert (
        "warning: pinned partner 'us-aisi' has no policy: everything to it is denied by default"
    ) in out.stderr
    assert "entente: 1 problem(s); see above" in out.stderr
    assert "OK:" not in out.stdout


def test_check_home_warns_of_a_policy_about_an_unpinned_node(tmp_path: Path) -> None:
    uk = _federation(tmp_path)  # the examples: policies for us-aisi (pinned) and ca-aisi (not)
    out = run("check", "--home", uk)
    assert out.returncode == 0, out.stderr
    ca = uk / "policies" / "ca-aisi.yaml"
    assert f"warning: {ca}: partner 'ca-aisi' is not pinned at this node" in out.stderr
    assert "us-aisi" not in out.stderr  # pinned, with a policy: nothing to say
    assert "OK: 2 policies valid, 1 warning(s) above" in out.stdout

    # Files given explicitly are checked as files, not against the home.
    plain = run("check", uk / "policies", "--home", uk)
    assert plain.returncode == 0, plain.stderr
    assert plain.stderr == ""
    assert "OK: 2 policies valid" in plain.stdout
