"""L3: partner-controlled text (names, URLs, titles, problem details) reaches the operator's
terminal only as inert characters: ANSI/OSC escapes, C1 controls and bidi overrides are shown
escaped, and Rich markup in them is printed literally (never parsed, never a traceback).

A hostile partner controls its descriptor's name and the titles of what it shares; the CLI
prints both (``partner add``, ``partner list``, ``inbox``). The inbox is read from a stand-in
node on a real socket that answers with a hostile listing, as a node would relay it.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from service.home import create_home
from service.settings import Settings
from tests.nodes import base_env, run_cli

# ESC sequences (colour, clear screen, OSC 8 hyperlink, title set), a C1 CSI, a bidi override,
# Rich markup (a style, a link, and a closing tag that matches nothing) and a forged new line.
HOSTILE = (
    "Evil\x1b[31mRED\x1b[2J\x1b]8;;https://evil.example\x07click\x1b]8;;\x07"
    "\x1b]0;pwned\x07\x9b1m[bold red]markup[/][link=https://evil.example]L[/link][/x]"
    "\u202egnp.exe\nforged line"
)
FORBIDDEN = ["\x1b", "\x9b", "\x07", "\u202e"]


def _assert_inert(text: str) -> None:
    for char in FORBIDDEN:
        assert char not in text, f"{char!r} reached the terminal: {text!r}"
    assert "Traceback" not in text
    # The markup is shown as the characters it is, not applied.
    assert "[bold red]markup[/]" in text
    assert "[/x]" in text
    # The escapes are visible, so the operator sees that something is off.
    assert "\\x1b[31mRED" in text
    assert "\\u202e" in text


def _home(root: Path, node_id: str, name: str) -> Path:
    settings = Settings(home=root / node_id, insecure_no_passphrase=True)
    create_home(
        settings, path=root / node_id, node_id=node_id, name=name,
        url=f"https://{node_id}.example/\x1b[1mx", now=datetime.now(UTC),
    )  # fmt: skip
    return root / node_id


def _env() -> dict[str, str]:
    env = base_env()
    env.pop("ENTENTE_PASSPHRASE")
    return env


def test_printable_escapes_controls_and_keeps_text() -> None:
    from service.cli._terminal import printable

    assert printable("Météo \u05d0 ok") == "Météo \u05d0 ok"
    assert printable("a\x1bb\x9bc\u202ed\u2066e\x00f\x7fg") == (
        "a\\x1bb\\x9bc\\u202ed\\u2066e\\x00f\\x7fg"
    )
    assert printable("one\ntwo\tthree\r") == "one\\ntwo\\tthree\\r"
    assert printable("one\ntwo", lines=True) == "one\ntwo"


def test_partner_add_and_list_print_hostile_names_inert(tmp_path: Path) -> None:
    uk = _home(tmp_path, "uk-aisi", "UK")
    evil = _home(tmp_path, "evil-aisi", HOSTILE[:190])
    descriptor = tmp_path / "evil.descriptor"
    descriptor.write_bytes((evil / "descriptor.dsse.json").read_bytes())
    fingerprint = json.loads((evil / "node.json").read_text())["fingerprint"]
    env = _env()
    added = run_cli(
        "partner", "add", str(descriptor), "--fingerprint", fingerprint, "--home", str(uk),
        env=env,
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    assert "evil-aisi" in added.stdout
    _assert_inert(added.stdout + added.stderr)
    assert "\\x1b[1mx" in added.stdout  # the URL, escaped too

    listed = run_cli("partner", "list", "--home", str(uk), env={**env, "COLUMNS": "2000"})
    assert listed.returncode == 0, listed.stderr
    assert "evil-aisi" in listed.stdout
    _assert_inert(listed.stdout + listed.stderr)
    # One table row per partner: the name's new line is shown, not performed.
    assert "forged line" in listed.stdout
    assert not any(line.startswith("forged line") for line in listed.stdout.splitlines())


class _HostileNode(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path.startswith("/v1/artifacts"):
            item = {
                "id": "01HOSTILE\x1b[2J", "origin": "evil-aisi\u202e", "title": HOSTILE,
                "tlp": "TLP:AMBER[/]", "size": 1, "recorded_at": "2026-01-01T00:00:00+00:00",
                "revoked_at": None, "embargo_until": None, "direction": "received\x1b[31m",
                "sha256": "ab\x07", "sealing": HOSTILE,
            }  # fmt: skip
            body, status, kind = json.dumps({"items": [item]}).encode(), 200, "application/json"
        else:
            problem = {"type": "x", "title": "x", "status": 404, "detail": HOSTILE}
            body, status, kind = json.dumps(problem).encode(), 404, "application/problem+json"
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        self.path = "/problem"
        self.do_GET()

    def log_message(self, format: str, *args: object) -> None:
        return


@pytest.fixture
def hostile_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _HostileNode)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_inbox_prints_hostile_titles_inert(hostile_url: str) -> None:
    env = {**_env(), "ENTENTE_TOKEN": "ent_x_y", "COLUMNS": "2000"}
    result = run_cli("inbox", "--url", hostile_url, env=env)
    assert result.returncode == 0, result.stderr
    assert "evil-aisi" in result.stdout
    _assert_inert(result.stdout + result.stderr)


def test_a_hostile_problem_detail_is_one_inert_line(hostile_url: str) -> None:
    env = {**_env(), "ENTENTE_TOKEN": "ent_x_y"}
    result = run_cli("revoke", "01X", "--url", hostile_url, env=env)
    assert result.returncode != 0
    err = result.stderr.strip()
    assert err.startswith("entente: ")
    assert len(err.splitlines()) == 1, err
    for char in FORBIDDEN:
        assert char not in err


def test_the_cli_console_neutralises_what_was_not_escaped() -> None:
    """Defence in depth: a value printed without ``outside()`` still cannot write escapes,
    crash the command with bad markup, or plant a terminal hyperlink."""
    import io

    from service.cli._terminal import TerminalConsole

    out = io.StringIO()
    console = TerminalConsole(
        file=out, force_terminal=True, color_system="truecolor", width=200, highlight=False
    )
    console.print(f"partner {HOSTILE}")
    console.print("[link=https://evil.example]click[/link] [bold]ours[/]")
    text = out.getvalue()
    assert "\x1b]8;" not in text, "no OSC 8 hyperlink"
    assert "\x1b]0;" not in text and "\x9b" not in text and "\u202e" not in text
    assert "\\x1b[31mRED" in text and "click" in text
    assert "\x1b[1m" in text, "the CLI's own styles still work"
