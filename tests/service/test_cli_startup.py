"""What the light commands import, and the lean paths that keep them light (issue 19).

``entente --help`` imports no command module; ``entente seal``, ``open``, ``verify`` and
``identity`` import neither the web stack, nor the ORM and its migrations, nor the policy
loader. These are checks
of ``sys.modules`` in a fresh process that runs the console script's entry point, not timings:
a regression fails here however fast the machine is. The command table's help lines, the
partners read without the ORM (``service.pinned``) and the schema revision it checks are each
compared with what they stand for.
"""

from __future__ import annotations

import inspect
import json
import sqlite3
import sys
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path

import pytest
from alembic import command
from typer.core import TyperGroup

from service import localnet
from service.cli._commands import COMMANDS, load
from service.db import _alembic_config, open_database
from service.home import Home, create_home, rotate_keys
from service.migrations import SCHEMA_REVISION
from service.partners import add_partner, partner_keysets, rotate_partner
from service.pinned import pinned_keysets, pinned_parties, sqlite_path
from service.settings import Settings
from tests.nodes import base_env, run_cli

# Never needed to print help or to seal, open or verify a file.
HEAVY = (
    "fastapi",
    "starlette",
    "uvicorn",
    "httpx",
    "sqlalchemy",
    "sqlmodel",
    "alembic",
    "jsonschema",
    "yaml",
    "policies",
    "service.db",
    "service.models",
    "service.partners",
    "service.audit",
    "service.app",
)

# Runs the console script's entry point (``service.cli:main``) with the given arguments, then
# writes the names of every imported module to the file named first.
_PROBE = """
import json, sys
out, sys.argv = sys.argv[1], ["entente", *sys.argv[2:]]
from service.cli import main
try:
    main()
except SystemExit as exc:
    code = exc.code
else:
    code = 0
with open(out, "w") as f:
    json.dump({"code": code, "modules": sorted(sys.modules)}, f)
"""


def _imports(tmp_path: Path, *args: str) -> set[str]:
    out = tmp_path / "modules.json"
    result = localnet.run_cli(
        *args, command=(sys.executable, "-c", _PROBE, str(out)), env=base_env()
    )
    assert result.returncode == 0, result.stderr
    probe = json.loads(out.read_text())
    assert probe["code"] in (0, None), (args, result.stdout, result.stderr)
    return set(probe["modules"])


def _heavy(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if any(m == h or m.startswith(f"{h}.") for h in HEAVY))


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("startup")
    result = run_cli(
        "init", "--home", str(root / "uk"), "--node-id", "uk-aisi", "--name", "UK",
        "--url", "https://uk.example",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return root / "uk"


def test_top_level_help_imports_no_command_module(tmp_path: Path) -> None:
    modules = _imports(tmp_path, "--help")
    assert _heavy(modules) == []
    loaded = {entry.module for entry in COMMANDS.values()} & modules
    assert loaded == set(), loaded
    assert "service.settings" not in modules and "pydantic" not in modules


@pytest.mark.parametrize("command", ["seal", "open", "verify"])
def test_file_command_help_imports_only_its_module(tmp_path: Path, command: str) -> None:
    modules = _imports(tmp_path, command, "--help")
    assert _heavy(modules) == []
    others = {e.module for e in COMMANDS.values()} - {COMMANDS[command].module}
    assert others & modules == set()


def test_seal_verify_open_stay_light(home: Path, tmp_path: Path) -> None:
    """A real round trip through a pinned partner's name (the partner lookup) and this node."""
    partner_root = tmp_path / "us"
    assert run_cli(
        "init", "--home", str(partner_root), "--node-id", "us-aisi", "--name", "US",
        "--url", "https://us.example",
    ).returncode == 0  # fmt: skip
    descriptor = tmp_path / "us.descriptor"
    descriptor.write_text(run_cli("identity", "export", "--home", str(partner_root)).stdout)
    shown = run_cli("identity", "show", "--home", str(partner_root), "--json").stdout
    fingerprint = json.loads(shown)["fingerprint"]
    added = run_cli(
        "partner", "add", str(descriptor), "--fingerprint", fingerprint, "--home", str(home)
    )
    assert added.returncode == 0 or "already pinned" in added.stderr, added.stderr
    plain = tmp_path / "finding.txt"
    plain.write_bytes(b"evaluation results\n" * 100)
    sealed = tmp_path / "finding.age"
    seal = _imports(
        tmp_path, "seal", str(plain), "--to", "us-aisi", "-o", str(sealed), "--home", str(home)
    )
    verify = _imports(tmp_path, "verify", str(sealed), "--home", str(home))
    opened = _imports(
        tmp_path, "open", str(sealed), "-o", str(tmp_path / "out"), "--home", str(home)
    )
    assert (tmp_path / "out").read_bytes() == plain.read_bytes()
    assert {"seal": _heavy(seal), "verify": _heavy(verify), "open": _heavy(opened)} == {
        "seal": [],
        "verify": [],
        "open": [],
    }


@pytest.mark.parametrize("command", ["show", "export"])
def test_identity_commands_stay_light(home: Path, tmp_path: Path, command: str) -> None:
    assert _heavy(_imports(tmp_path, "identity", command, "--home", str(home))) == []


@pytest.mark.parametrize("name", list(COMMANDS))
def test_the_table_says_what_each_command_says(name: str) -> None:
    """``entente --help`` prints the table's help line: it is the command's own first paragraph
    (what Typer showed when it imported every command), and the kind is right."""
    command = load(name)
    assert command.name == name
    assert isinstance(command, TyperGroup) == (COMMANDS[name].kind == "group")
    first = inspect.cleandoc(command.short_help or command.help or "").split("\n\n")[0]
    assert COMMANDS[name].help == first


def test_unknown_commands_are_refused_with_suggestions_from_the_table() -> None:
    result = run_cli("seel")
    assert result.returncode == 2
    assert "No such command 'seel'" in result.stderr and "'seal'" in result.stderr


# --- service.pinned: the partners read without the ORM ------------------------------------------


def test_schema_revision_is_alembics_head(tmp_path: Path) -> None:
    db = open_database(f"sqlite:///{tmp_path / 'x.db'}")
    try:
        assert db.head_revision() == SCHEMA_REVISION
    finally:
        db.dispose()


def _home(root: Path, node_id: str) -> tuple[Home, Settings]:
    settings = Settings(home=root / node_id, insecure_no_passphrase=True)
    now = datetime.now(UTC)
    home = create_home(
        settings,
        path=root / node_id,
        node_id=node_id,
        name=node_id,
        url="https://x.example",
        now=now,
    )
    return home, settings


def test_pinned_reads_what_the_orm_reads(tmp_path: Path) -> None:
    _, _ = _home(tmp_path, "uk-aisi")
    us, us_settings = _home(tmp_path, "us-aisi")
    ca, _ = _home(tmp_path, "ca-aisi")
    url = f"sqlite:///{tmp_path / 'uk.db'}"
    now = datetime.now(UTC)
    # Before the database exists, the full layer creates and migrates it.
    assert pinned_parties(url, ["us-aisi"]) == {}
    db = open_database(url, migrate=True)
    try:
        with db.session() as session:
            for home in (us, ca):
                add_partner(
                    session,
                    descriptor_bytes=home.descriptor_path.read_bytes(),
                    fingerprint=home.fingerprint,
                    own_node_id="uk-aisi",
                    now=now,
                    actor="test",
                )
        rotation = rotate_keys(us, us_settings, now=now)
        with db.session() as session:
            rotate_partner(
                session, descriptor_bytes=rotation.descriptor.to_bytes(), now=now, actor="test"
            )
        with db.session() as session:
            through_orm = {n: partner_keysets(session, n) for n in ("us-aisi", "ca-aisi", "x")}
    finally:
        db.dispose()
    parties = pinned_parties(url, ["us-aisi", "ca-aisi", "nobody", "us-aisi"])
    assert sorted(parties) == ["ca-aisi", "us-aisi"]
    assert parties["us-aisi"].age_recipient == rotation.home.age_recipient
    assert parties["us-aisi"].pq_recipient == rotation.home.pq_recipient
    assert parties["ca-aisi"].age_recipient == ca.age_recipient
    for node_id, keysets in through_orm.items():
        assert pinned_keysets(url, node_id) == keysets
    assert len(through_orm["us-aisi"]) == 2  # the retired key set too


def test_pinned_defers_to_the_full_layer_unless_current_sqlite(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'n.db'}"
    previous = int(SCHEMA_REVISION) - 1
    command.upgrade(_alembic_config(url), f"{previous:04d}")
    # An older schema is migrated by the full layer before it is read.
    assert pinned_keysets(url, "us-aisi") == []
    with closing(sqlite3.connect(tmp_path / "n.db")) as conn:
        revision = conn.execute("SELECT version_num FROM alembic_version").fetchone()
    assert revision == (SCHEMA_REVISION,)
    for other in ("postgresql+psycopg://u@h/db", "sqlite://", "sqlite:///:memory:", url + "?x=1"):
        assert sqlite_path(other) is None
    assert sqlite_path(url) == tmp_path / "n.db"
