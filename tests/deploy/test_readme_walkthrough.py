"""The README's "Running a node" block runs as written: two nodes from nothing to a decrypted
share, a listing and a verified audit log, with only `entente` on PATH, in an empty folder.

The block is taken from README.md itself (so the README cannot drift from what works); only the
two example ports are swapped for free ones, so that the test never meets a port in use."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.nodes import base_env, free_port

pytestmark = pytest.mark.integration

README = Path(__file__).resolve().parents[2] / "README.md"


def walkthrough() -> str:
    text = README.read_text()
    section = text[text.index("## Running a node\n") :]
    match = re.search(r"```sh\n(.*?)```", section, re.S)
    assert match, "no sh block under ## Running a node"
    return match.group(1)


def test_the_block_uses_only_the_cli_and_the_shell() -> None:
    script = walkthrough()
    commands = [
        line.split()[0]
        for line in script.splitlines()
        if line.strip() and not line.startswith(("#", " ")) and "=" not in line.split()[0]
    ]
    assert set(commands) <= {"entente", "export", "echo", "kill"}, commands
    assert "8443" in script and "8444" in script


def test_the_readme_walkthrough_runs_as_written(tmp_path: Path) -> None:
    uk, us = free_port(), free_port()
    script = walkthrough().replace("8443", str(uk)).replace("8444", str(us))
    env = base_env(HOME=str(tmp_path / "home"))
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '/usr/bin:/bin')}"
    env.pop("ENTENTE_PASSPHRASE", None)  # the block sets its own
    # Its output goes to a pipe, so the CLI prints whole table rows (its natural width) unless
    # COLUMNS asks for a width: not inherited from the test runner (pytest-xdist's workers have
    # COLUMNS=80 in their environment, and the listing would then come as one record per row).
    env.pop("COLUMNS", None)
    env.pop("LINES", None)
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    logs = "".join(
        f"\n--- {name}\n{(tmp_path / name).read_text()[-3000:]}"
        for name in ("uk.log", "us.log")
        if (tmp_path / name).exists()
    )
    assert done.returncode == 0, done.stdout + done.stderr + logs
    assert (tmp_path / "received.txt").read_text() == (tmp_path / "notes.txt").read_text()
    assert re.search(r"art_\w+ .*uk-aisi .*notes\.txt .*TLP:AMBER", done.stdout), done.stdout
    assert "VERIFIED audit log entente.dev/audit/us-aisi" in done.stdout
