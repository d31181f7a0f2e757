"""What the CLI's tables print: nothing a user copies (an id, a fingerprint, a digest) is cut
short or broken across lines, on a wide terminal, a narrow one, or into a pipe."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pytest
from rich.console import Console

from service.cli._terminal import SafeTable, TerminalConsole
from tests.nodes import base_env, run_cli

ART = "art_01JXYZABCDEF0123456789ABCD"
FP = "SHA256:" + "ab12" * 16


def _table() -> SafeTable:
    table = SafeTable("id", "from", "title", "fingerprint", "received")
    table.add_row(ART, "us-aisi", "Evaluation of frontier model X on cyber tasks", FP,
                  "2026-12-06T01:02:03")  # fmt: skip
    return table


def _render(width: int, renderable: object) -> str:
    out = io.StringIO()
    Console(file=out, width=width, force_terminal=True, color_system=None).print(renderable)
    return out.getvalue()


def test_a_table_that_fits_is_a_table_with_whole_values() -> None:
    shown = _render(250, _table())
    assert "┃ id" in shown
    row = next(line for line in shown.splitlines() if ART in line)
    assert FP in row and "Evaluation of frontier model X on cyber tasks" in row
    assert "…" not in shown


def test_on_a_narrow_terminal_each_row_is_a_record_with_whole_values() -> None:
    shown = _render(100, _table())
    assert "┃" not in shown and "…" not in shown
    assert re.search(rf"^id\s+{ART}\s*$", shown, re.M)
    assert re.search(rf"^fingerprint\s+{re.escape(FP)}\s*$", shown, re.M)
    assert re.search(r"^title\s+Evaluation of frontier model X on cyber tasks\s*$", shown, re.M)


def test_a_table_into_a_pipe_is_not_wrapped_at_80_columns(monkeypatch: pytest.MonkeyPatch) -> None:
    out = io.StringIO()
    monkeypatch.delenv("COLUMNS", raising=False)
    console = TerminalConsole(file=out)
    console.print(_table())
    console.rule("next")  # what fills the width still fills Rich's 80 columns, no more
    row = next(line for line in out.getvalue().splitlines() if ART in line)
    assert FP in row and "Evaluation of frontier model X on cyber tasks" in row


def test_partner_list_into_a_pipe_shows_whole_fingerprints(tmp_path: Path) -> None:
    for node in ("uk-aisi", "us-aisi"):
        made = run_cli("init", "--home", str(tmp_path / node), "--node-id", node, "--name", node,
                       "--url", f"https://{node}.example", "--insecure-no-passphrase")  # fmt: skip
        assert made.returncode == 0, made.stderr
    shown = run_cli("identity", "show", "--home", str(tmp_path / "us-aisi"), "--json")
    fingerprint = json.loads(shown.stdout)["fingerprint"]
    added = run_cli("partner", "add", str(tmp_path / "us-aisi" / "descriptor.dsse.json"),
                    "--fingerprint", fingerprint, "--home", str(tmp_path / "uk-aisi"))  # fmt: skip
    assert added.returncode == 0, added.stderr
    env = {k: v for k, v in base_env().items() if k != "COLUMNS"}
    listed = run_cli("partner", "list", "--home", str(tmp_path / "uk-aisi"), env=env)
    assert listed.returncode == 0, listed.stderr
    row = next(line for line in listed.stdout.splitlines() if "us-aisi" in line)
    assert fingerprint in row


def test_a_rule_into_a_pipe_stays_80_columns(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COLUMNS", raising=False)
    out = io.StringIO()
    TerminalConsole(file=out).rule("heading")
    assert len(out.getvalue().rstrip("\n")) == 80
