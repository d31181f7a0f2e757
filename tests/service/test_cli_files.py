"""`entente seal / verify / open` via the real CLI, with the stock `age` tool on the other side."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.nodes import base_env, run_cli
from tests.support import require_tool


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("files")
    result = run_cli(
        "init", "--home", str(root / "uk"), "--node-id", "uk-aisi", "--name", "UK",
        "--url", "https://uk.example",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return root / "uk"


def _one_line_failure(result: subprocess.CompletedProcess[str], needle: str) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert needle in result.stderr


def test_seal_to_age_keygen_recipient_opens_with_age_cli(home: Path, tmp_path: Path) -> None:
    keygen = require_tool("age-keygen", "age")
    age = require_tool("age", "age")
    key = tmp_path / "key.txt"
    subprocess.run([keygen, "-o", str(key)], check=True, capture_output=True)
    recipient = next(
        line.split(": ")[1] for line in key.read_text().splitlines() if "public key" in line
    )
    plain = tmp_path / "finding.txt"
    plain.write_bytes(b"evaluation results\n" * 5000)
    out = tmp_path / "finding.age"
    sealed = run_cli("seal", str(plain), "--to", recipient, "-o", str(out), "--home", str(home))
    assert sealed.returncode == 0, sealed.stderr
    assert (tmp_path / "finding.age.dsse.json").exists()
    decrypted = subprocess.run(
        [age, "-d", "-i", str(key), str(out)], check=True, capture_output=True
    ).stdout
    assert decrypted == plain.read_bytes()

    verified = run_cli("verify", str(out), "--home", str(home))
    assert verified.returncode == 0, verified.stderr
    assert "OK" in verified.stdout
    opened = run_cli("open", str(out), "-o", str(tmp_path / "back.txt"), "--home", str(home))
    assert opened.returncode == 0, opened.stderr
    assert (tmp_path / "back.txt").read_bytes() == plain.read_bytes()


@pytest.mark.parametrize("where", ["header", "payload", "manifest"])
def test_tampering_fails_clearly_and_leaves_no_output(
    home: Path, tmp_path: Path, where: str
) -> None:
    plain = tmp_path / "p.bin"
    plain.write_bytes(bytes(range(256)) * 400)
    out = tmp_path / "p.age"
    sealed = run_cli(
        "seal", str(plain), "-o", str(out), "--home", str(home), "--to", _self_recipient(home)
    )
    assert sealed.returncode == 0, sealed.stderr
    target = out if where != "manifest" else Path(f"{out}.dsse.json")
    data = bytearray(target.read_bytes())
    if where == "header":
        index = 40
    elif where == "payload":
        index = len(data) - 100
    else:
        index = data.index(b'"payload": "') + 20
    data[index] ^= 0x01
    target.write_bytes(bytes(data))
    result = run_cli("open", str(out), "-o", str(tmp_path / "never.bin"), "--home", str(home))
    _one_line_failure(result, "entente:")
    assert not (tmp_path / "never.bin").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".never")] == []
    if where != "payload":
        _one_line_failure(run_cli("verify", str(out), "--home", str(home)), "entente:")


def _self_recipient(home: Path) -> str:
    import json

    return str(json.loads((home / "node.json").read_text())["age_recipient"])


@pytest.mark.parametrize(
    ("to", "tlp", "needle", "more"),
    [
        ("self", "TLP:PURPLE", "--tlp", []),
        ("nobody-pinned", "TLP:GREEN", "not a pinned partner", []),
        ("age1" + "q" * 58, "TLP:GREEN", "--to", []),
        # one vocabulary (crypto.vocab): a manifest carries only terms the API would accept
        ("self", "TLP:GREEN", "--topic 'eval.v2'", ["--topic", "eval.v2"]),
        ("self", "TLP:GREEN", "--purpose 'Red_Team'", ["--purpose", "Red_Team"]),
    ],
)
def test_seal_refusals(
    home: Path, tmp_path: Path, to: str, tlp: str, needle: str, more: list[str]
) -> None:
    (tmp_path / "f").write_bytes(b"x")
    recipient = _self_recipient(home) if to == "self" else to
    result = run_cli(
        "seal", str(tmp_path / "f"), "--to", recipient, "-o", str(tmp_path / "o"),
        "--tlp", tlp, "--home", str(home), *more, env=base_env(),
    )  # fmt: skip
    _one_line_failure(result, needle)
    assert not (tmp_path / "o").exists()
