"""The foundation CLI through real subprocesses: success paths and clear refusals."""

from __future__ import annotations

import json
import os
import sqlite3
from contextlib import closing
from pathlib import Path

import pytest

from tests.nodes import base_env, run_cli


def _snapshot(root: Path) -> dict[str, bytes]:
    """Every file's bytes; a SQLite database by its logical content (WAL checkpoints move bytes
    between the -wal file and the main file without changing any row)."""
    if not root.exists():
        return {}
    out: dict[str, bytes] = {}
    for p in sorted(root.rglob("*")):
        if not p.is_file() or p.name.endswith(("-wal", "-shm")):
            continue
        if p.suffix == ".db":
            with closing(sqlite3.connect(p)) as conn:
                out[str(p.relative_to(root))] = "\n".join(conn.iterdump()).encode()
        else:
            out[str(p.relative_to(root))] = p.read_bytes()
    return out


def _init(home: Path, node_id: str = "uk-aisi", **env: str) -> None:
    result = run_cli(
        "init", "--home", str(home), "--node-id", node_id, "--name", node_id.upper(),
        "--url", f"https://{node_id}.example", env=base_env(**env),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr


def _assert_one_line_error(result: object, needle: str) -> None:
    assert result.returncode != 0  # type: ignore[attr-defined]
    err = result.stderr.strip()  # type: ignore[attr-defined]
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1, err
    assert err.startswith("entente: ")
    assert needle in err


@pytest.fixture(scope="module")
def homes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("homes")
    _init(root / "uk", "uk-aisi")
    _init(root / "us", "us-aisi")
    return {"uk": root / "uk", "us": root / "us", "root": root}


def test_init_creates_private_key_files(homes: dict[str, Path]) -> None:
    keys = homes["uk"] / "keys"
    for name in ("signing.key", "identity.key"):
        path = keys / name
        assert path.stat().st_mode & 0o777 == 0o600
        assert path.read_bytes().startswith(b"age-encryption.org/v1\n-> scrypt ")
    assert (homes["uk"] / "entente.db").exists()


def test_identity_show_and_export(homes: dict[str, Path]) -> None:
    shown = run_cli("identity", "show", "--home", str(homes["uk"]), "--json")
    assert shown.returncode == 0, shown.stderr
    facts = json.loads(shown.stdout)
    assert facts["node_id"] == "uk-aisi"
    assert len(facts["fingerprint"]) == 64
    assert facts["age_recipient"].startswith("age1")
    exported = run_cli("identity", "export", "--home", str(homes["uk"]))
    envelope = json.loads(exported.stdout)
    assert envelope["payloadType"] == "application/vnd.entente.node-descriptor+json"
    assert envelope["signatures"][0]["keyid"] == facts["fingerprint"]


def test_partner_add_list_remove(homes: dict[str, Path]) -> None:
    us = json.loads(run_cli("identity", "show", "--home", str(homes["us"]), "--json").stdout)
    descriptor = homes["root"] / "us.descriptor"
    descriptor.write_text(run_cli("identity", "export", "--home", str(homes["us"])).stdout)
    added = run_cli(
        "partner", "add", str(descriptor), "--fingerprint", us["fingerprint"].upper(),
        "--home", str(homes["uk"]),
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    listed = json.loads(run_cli("partner", "list", "--home", str(homes["uk"]), "--json").stdout)
    assert [p["node_id"] for p in listed] == ["us-aisi"]
    again = run_cli(
        "partner", "add", str(descriptor), "--fingerprint", us["fingerprint"],
        "--home", str(homes["uk"]),
    )  # fmt: skip
    _assert_one_line_error(again, "already pinned")
    removed = run_cli("partner", "remove", "us-aisi", "--home", str(homes["uk"]))
    assert removed.returncode == 0, removed.stderr
    assert json.loads(run_cli("partner", "list", "--home", str(homes["uk"]), "--json").stdout) == []


def test_token_create_list_revoke(homes: dict[str, Path]) -> None:
    created = run_cli(
        "token", "create", "--role", "reader", "--name", "bob", "--home", str(homes["uk"]), "--json"
    )
    assert created.returncode == 0, created.stderr
    token = json.loads(created.stdout)
    assert token["token"].startswith("ent_")
    listed = run_cli("token", "list", "--home", str(homes["uk"]), "--json")
    rows = {r["id"]: r for r in json.loads(listed.stdout)}
    assert rows[token["id"]]["revoked_at"] is None
    assert token["token"] not in listed.stdout
    assert run_cli("token", "revoke", token["id"], "--home", str(homes["uk"])).returncode == 0
    rows = {
        r["id"]: r
        for r in json.loads(run_cli("token", "list", "--home", str(homes["uk"]), "--json").stdout)
    }
    assert rows[token["id"]]["revoked_at"] is not None


@pytest.mark.parametrize(
    ("case", "needle"),
    [
        ("wrong-passphrase", "wrong passphrase"),
        ("not-a-home", "not a node home"),
        ("bad-signature", "descriptor rejected"),
        ("wrong-fingerprint", "fingerprint mismatch"),
        ("unknown-role", "unknown role"),
        ("unreachable-db", "cannot connect to the database"),
        ("existing-home", "already exists"),
        ("bad-node-id", "--node-id"),
        ("no-passphrase", "ENTENTE_PASSPHRASE"),
    ],
)
def test_bad_input_is_one_clear_line_and_changes_nothing(
    homes: dict[str, Path], tmp_path: Path, case: str, needle: str
) -> None:
    uk, us = homes["uk"], homes["us"]
    before = {"uk": _snapshot(uk), "tmp": _snapshot(tmp_path)}
    us_fp = json.loads(run_cli("identity", "show", "--home", str(us), "--json").stdout)[
        "fingerprint"
    ]
    descriptor = tmp_path / "us.descriptor"
    descriptor.write_text(run_cli("identity", "export", "--home", str(us)).stdout)
    before["tmp"] = _snapshot(tmp_path)
    env = base_env()
    if case == "wrong-passphrase":
        env["ENTENTE_PASSPHRASE"] = "definitely wrong"
        args = ["serve", "--home", str(uk), "--port", "1"]
    elif case == "not-a-home":
        args = ["identity", "show", "--home", str(tmp_path)]
    elif case == "bad-signature":
        doc = json.loads(descriptor.read_text())
        sig = doc["signatures"][0]["sig"]
        doc["signatures"][0]["sig"] = ("A" if sig[0] != "A" else "B") + sig[1:]
        bad = tmp_path / "bad.descriptor"
        bad.write_text(json.dumps(doc))
        before["tmp"] = _snapshot(tmp_path)
        args = ["partner", "add", str(bad), "--fingerprint", us_fp, "--home", str(uk)]
    elif case == "wrong-fingerprint":
        args = ["partner", "add", str(descriptor), "--fingerprint", "ab" * 32, "--home", str(uk)]
    elif case == "unknown-role":
        args = ["token", "create", "--role", "superuser", "--name", "x", "--home", str(uk)]
    elif case == "unreachable-db":
        target = tmp_path / "new-home"
        args = [
            "init", "--home", str(target), "--node-id", "x", "--name", "X",
            "--url", "https://x.example",
            "--database-url", "postgresql+psycopg://postgres@127.0.0.1:1/nothing",
        ]  # fmt: skip
    elif case == "existing-home":
        args = [
            "init", "--home", str(uk), "--node-id", "uk-aisi", "--name", "X",
            "--url", "https://x.example",
        ]  # fmt: skip
    elif case == "bad-node-id":
        args = [
            "init", "--home", str(tmp_path / "h"), "--node-id", "Not Valid", "--name", "X",
            "--url", "https://x.example",
        ]  # fmt: skip
    else:
        env.pop("ENTENTE_PASSPHRASE")
        args = [
            "init", "--home", str(tmp_path / "h"), "--node-id", "ok", "--name", "X",
            "--url", "https://x.example",
        ]  # fmt: skip
    result = run_cli(*args, env=env)
    _assert_one_line_error(result, needle)
    assert _snapshot(uk) == before["uk"]
    assert _snapshot(tmp_path) == before["tmp"]


def test_insecure_init_warns_and_stores_plain_keys(tmp_path: Path) -> None:
    env = base_env()
    env.pop("ENTENTE_PASSPHRASE")
    result = run_cli(
        "init", "--home", str(tmp_path / "demo"), "--node-id", "demo", "--name", "Demo",
        "--url", "http://127.0.0.1:1", "--insecure-no-passphrase", env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "unencrypted" in result.stderr
    assert (tmp_path / "demo" / "keys" / "signing.key").read_bytes().startswith(b"# UNENCRYPTED")
    assert os.stat(tmp_path / "demo" / "keys" / "signing.key").st_mode & 0o777 == 0o600


def test_a_node_joins_through_a_roster_on_the_command_line(tmp_path: Path) -> None:
    """Two homes pinned to each other write and sign a roster; a third joins with its digest."""
    for name in ("aa", "bb", "cc"):
        _init(tmp_path / name, name)
    facts = {n: json.loads((tmp_path / n / "node.json").read_text()) for n in ("aa", "bb")}
    for me, other in (("aa", "bb"), ("bb", "aa")):
        pinned = run_cli(
            "partner", "add", str(tmp_path / other / "descriptor.dsse.json"),
            "--fingerprint", facts[other]["fingerprint"], "--home", str(tmp_path / me),
        )  # fmt: skip
        assert pinned.returncode == 0, pinned.stderr
    roster = tmp_path / "roster.json"
    made = run_cli("roster", "create", "--network", "test-net", "-o", str(roster),
                   "--home", str(tmp_path / "aa"))  # fmt: skip
    assert made.returncode == 0, made.stderr
    assert run_cli("roster", "sign", str(roster), "--home", str(tmp_path / "bb")).returncode == 0
    shown = json.loads(run_cli("roster", "show", str(roster), "--json").stdout)
    assert shown["signatures"] == 4  # two members, Ed25519 + ML-DSA-65 each
    assert sorted(m["node_id"] for m in shown["members"]) == ["aa", "bb"]
    # cc is not a member: refused, one line.
    _assert_one_line_error(
        run_cli(
            "roster",
            "import",
            str(roster),
            "--digest",
            shown["sha256"],
            "--home",
            str(tmp_path / "cc"),
        ),
        "not a member",
    )
    # bb imports it (signed by aa, which bb pins): aa already pinned, nothing new.
    again = run_cli("roster", "import", str(roster), "--home", str(tmp_path / "bb"), "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["unchanged"] == ["aa"]
    # aa adds cc, which it does not pin, from its descriptor and out-of-band fingerprint.
    cc_fp = json.loads((tmp_path / "cc" / "node.json").read_text())["fingerprint"]
    cc_descriptor = tmp_path / "cc" / "descriptor.dsse.json"
    bad = f"{cc_descriptor}={'0' * 64}"
    out = str(tmp_path / "x.json")
    wrong = run_cli("roster", "create", "--network", "test-net", "-o", out, "--member", bad,
                    "--home", str(tmp_path / "aa"))  # fmt: skip
    _assert_one_line_error(wrong, "fingerprint")
    v2 = tmp_path / "roster-v2.json"
    made = run_cli("roster", "create", "--network", "test-net", "-o", str(v2),
                   "--previous", str(roster), "--member", f"{cc_descriptor}={cc_fp}",
                   "--home", str(tmp_path / "aa"))  # fmt: skip
    assert made.returncode == 0, made.stderr
    digest = json.loads(run_cli("roster", "show", str(v2), "--json").stdout)["sha256"]
    joined = run_cli("roster", "import", str(v2), "--digest", digest,
                     "--home", str(tmp_path / "cc"), "--json")  # fmt: skip
    assert joined.returncode == 0, joined.stderr
    assert json.loads(joined.stdout)["added"] == ["aa", "bb"]


def test_a_multilateral_agreement_of_common_terms_names_its_parties(tmp_path: Path) -> None:
    """Common terms (``--terms '*:*=FILE'``) name no party: ``draft`` takes them from
    ``--party``, and without any it is one clear line, not a file."""
    from service.network import NETWORK_TERMS

    common = tmp_path / "network.yaml"
    common.write_text(NETWORK_TERMS)
    out = tmp_path / "net.agreement.json"
    args = ("agreement", "draft", "--id", "net", "--title", "Network [example]",
            "--terms", f"*:*={common}", "-o", str(out))  # fmt: skip
    _assert_one_line_error(run_cli(*args), "parties must be 2 to 64")
    assert not out.exists()
    drafted = run_cli(*args, "--party", "uk-aisi", "--party", "us-aisi", "--party", "ca-aisi")
    assert drafted.returncode == 0, drafted.stderr
    shown = json.loads(run_cli("agreement", "show", str(out), "--json").stdout)
    assert shown["parties"] == ["ca-aisi", "uk-aisi", "us-aisi"]
    assert shown["signatures"] == 0 and shown["checked"] is False


def test_version_is_printed_and_the_openapi_document_carries_it(tmp_path: Path) -> None:
    from importlib.metadata import version

    result = run_cli("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"entente {version('entente')}"
    from tests.service.nodekit import make_node

    app = make_node(tmp_path, "uk-aisi").app
    assert app.openapi()["info"]["version"] == version("entente")


def test_help_keeps_bracketed_text_rich_would_read_as_markup() -> None:
    """Help strings and docstrings are rendered as rich markup: '[default: …]', '[env: …]' and
    'entente[inspect]' must be escaped or they vanish from the help."""
    forget = run_cli("audit", "forget", "--help", env=base_env(COLUMNS="200"))
    assert "[default: ~/.config/entente/audit-state.json]" in forget.stdout
    serve = run_cli("serve", "--help", env=base_env(COLUMNS="200"))
    assert "[env: ENTENTE_HOME]" in serve.stdout
    share = run_cli("share", "--help", env=base_env(COLUMNS="200"))
    assert "entente[inspect]" in share.stdout


def _every_command() -> list[list[str]]:
    from service.cli._commands import COMMANDS, load

    paths: list[list[str]] = [[]]
    for name in COMMANDS:
        command = load(name)
        paths.append([name])
        paths.extend([name, sub] for sub in getattr(command, "commands", {}))
    return paths


def test_help_names_values_as_a_shell_does_not_as_python_types() -> None:
    """No Typer type placeholder in any help (``<bool>``, ``<path>``, ``<list[str]>``, a
    required argument as ``{file}``): options name their value (``--home HOME``), flags show
    none, arguments are in capitals. Choices and ranges keep their detail."""
    import re

    from typer.testing import CliRunner

    from service.cli import app

    placeholder = re.compile(r"<(bool|str|path|int|float|list\[[a-z]+\])>|\{[a-z_]+\}")
    runner = CliRunner()
    paths = _every_command()
    assert len(paths) > 40
    for path in paths:
        shown = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "200"})
        assert shown.exit_code == 0, (path, shown.output)
        assert not placeholder.search(shown.output), (path, placeholder.findall(shown.output))
    share = runner.invoke(app, ["share", "--help"], env={"COLUMNS": "200"}).output
    assert "Usage: entente share [OPTIONS] FILE" in share
    assert re.search(r"--home\s+HOME\s", runner.invoke(app, ["serve", "--help"]).output)
    serve = runner.invoke(app, ["serve", "--help"], env={"COLUMNS": "200"}).output
    assert "default 127.0.0.1" in serve and "default 8443" in serve


def test_serve_on_a_port_in_use_is_one_line(tmp_path: Path) -> None:
    import socket

    _init(tmp_path / "uk")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli("serve", "--home", str(tmp_path / "uk"), "--port", str(port))
    assert result.returncode == 2
    assert result.stderr == (
        f"entente: cannot listen on 127.0.0.1:{port}: it is in use by another process; "
        "choose another with --host/--port (ENTENTE_HOST/ENTENTE_PORT)\n"
    )
    assert result.stdout == ""


def test_shell_completion_completes_lazy_commands_and_their_options() -> None:
    # the shell is named, not detected from the parent process (here pytest, not a shell)
    named = base_env(_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION="1")
    script = run_cli("--show-completion", "bash", env=named)
    assert script.returncode == 0, script.stderr
    assert "_entente_completion()" in script.stdout
    words = run_cli(env=base_env(_ENTENTE_COMPLETE="complete_bash", COMP_WORDS="entente aud",
                                 COMP_CWORD="1"))  # fmt: skip
    assert words.stdout.split() == ["audit"]
    asked = "entente audit verify --qu"
    options = run_cli(env=base_env(_ENTENTE_COMPLETE="complete_bash", COMP_WORDS=asked,
                                   COMP_CWORD="3"))  # fmt: skip
    assert options.stdout.split() == ["--quorum"]


def test_the_openapi_document_describes_the_metadata_part_of_a_share(tmp_path: Path) -> None:
    from tests.service.nodekit import make_node

    doc = make_node(tmp_path, "uk-aisi").app.openapi()
    body = doc["paths"]["/v1/artifacts"]["post"]["requestBody"]["content"]["multipart/form-data"]
    assert body["encoding"]["metadata"]["contentType"] == "application/json"
    ref = body["schema"]["properties"]["metadata"]["$ref"]
    schema = doc["components"]["schemas"][ref.rsplit("/", 1)[1]]
    assert {"title", "tlp", "partners", "topics", "purposes", "evaluation"} <= set(
        schema["properties"]
    )
    assert set(schema["required"]) == {"title", "tlp", "partners"}
    assert schema["additionalProperties"] is False
    evaluation = str(schema["properties"]["evaluation"])  # refers to a schema that is there
    for target in ("EvaluationSummary",):
        assert (
            f"#/components/schemas/{target}" in evaluation
            and target in doc["components"]["schemas"]
        )


def test_policy_examples_lists_and_copies_the_bundled_terms(tmp_path: Path) -> None:
    listed = run_cli("policy", "examples")
    assert listed.returncode == 0, listed.stderr
    assert "uk-aisi: ca-aisi.yaml, us-aisi.yaml" in listed.stdout
    copied = run_cli("policy", "examples", "--node", "uk-aisi", "--partner", "us-aisi",
                     "-o", str(tmp_path))  # fmt: skip
    assert copied.returncode == 0, copied.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["us-aisi.yaml"]
    assert "[example]" in (tmp_path / "us-aisi.yaml").read_text()
    again = run_cli("policy", "examples", "--node", "uk-aisi", "-o", str(tmp_path))
    _assert_one_line_error(again, "exists; pass --force")
    shown = run_cli("policy", "examples", "--node", "us-aisi", "--partner", "uk-aisi")
    assert shown.stdout.startswith("# --- uk-aisi.yaml\n# EXAMPLE POLICY")
    _assert_one_line_error(run_cli("policy", "examples", "--node", "xx-aisi"), "no example terms")


def test_wait_gives_up_in_one_line_when_no_node_answers() -> None:
    from tests.nodes import free_port

    result = run_cli("wait", "--url", f"http://127.0.0.1:{free_port()}", "--timeout", "0.5")
    _assert_one_line_error(result, "was not ready within 0.5 s")
    assert result.returncode == 1
