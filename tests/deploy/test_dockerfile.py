"""deploy/Dockerfile and the root .dockerignore, checked without a Docker engine."""

from __future__ import annotations

import re
import shlex
import tomllib

import pytest

from tests.deploy._files import (
    DOCKERFILE,
    DOCKERIGNORE,
    NODE_UID,
    ROOT,
    Instruction,
    dockerignore_patterns,
    ignored,
    parse_dockerfile,
)

INSTRUCTIONS = parse_dockerfile(DOCKERFILE.read_text())
FINAL_STAGE = max(i.stage for i in INSTRUCTIONS)
FINAL = [i for i in INSTRUCTIONS if i.stage == FINAL_STAGE]
PATTERNS = dockerignore_patterns(DOCKERIGNORE.read_text())


def _only(keyword: str) -> Instruction:
    found = [i for i in FINAL if i.keyword == keyword]
    assert len(found) == 1, f"the final stage needs exactly one {keyword}, has {len(found)}"
    return found[0]


def _env(stage: int) -> dict[str, str]:
    env: dict[str, str] = {}
    for ins in INSTRUCTIONS:
        if ins.keyword == "ENV" and ins.stage == stage:
            for word in shlex.split(ins.args):
                key, sep, value = word.partition("=")
                assert sep, f"use ENV KEY=VALUE, not the legacy form: {ins.args!r}"
                env[key] = value
    return env


def _context_copies() -> list[str]:
    """Sources of COPY instructions that read the build context (not --from another stage)."""
    sources = []
    for ins in INSTRUCTIONS:
        if ins.keyword != "COPY" or "--from=" in ins.args:
            continue
        words = [w for w in shlex.split(ins.args) if not w.startswith("--")]
        sources.extend(words[:-1])
    return sources


def test_multi_stage_on_a_slim_python_that_the_project_supports() -> None:
    froms = [i for i in INSTRUCTIONS if i.keyword == "FROM"]
    assert len(froms) >= 2, "build tools and the build stage must stay out of the runtime image"
    default = next(
        i.args.split("=", 1)[1]
        for i in INSTRUCTIONS
        if i.keyword == "ARG" and i.args.startswith("PYTHON_IMAGE=")
    )
    match = re.fullmatch(r"python:3\.(\d+)-slim(?:-\w+)?(?:@sha256:[0-9a-f]{64})?", default)
    assert match, default
    assert int(match.group(1)) >= 11, "pyproject.toml requires Python >= 3.11"
    assert froms[-1].args.startswith("${PYTHON_IMAGE}")


def test_final_stage_runs_as_the_fixed_non_root_user() -> None:
    users = [i.args for i in FINAL if i.keyword == "USER"]
    assert users, "no USER in the final stage: the container would run as root"
    user, _, group = users[-1].partition(":")
    assert user == str(NODE_UID) and group == str(NODE_UID), users[-1]
    # The numeric user must exist in the image with that id, or tools that look it up break.
    setup = " ".join(i.args for i in FINAL if i.keyword in ("RUN", "ARG"))
    assert "useradd" in setup and f"ENTENTE_UID={NODE_UID}" in setup


def test_entrypoint_is_entente_and_the_default_command_serves() -> None:
    assert _only("ENTRYPOINT").exec_form() == ["entente"]
    assert _only("CMD").exec_form() == ["serve"]


def test_healthcheck_probes_healthz_with_python_not_curl() -> None:
    check = _only("HEALTHCHECK")
    command = check.exec_form()
    assert command is not None and command[0] == "python", check.args
    script = " ".join(command)
    assert "/healthz" in script and "urllib.request" in script
    assert not re.search(r"\b(curl|wget)\b", script), "python:*-slim has neither curl nor wget"
    assert re.search(r"--timeout=\d+s", check.args) and re.search(
        r"--start-period=\d+s", check.args
    )


def test_runtime_environment_fits_a_read_only_root_filesystem() -> None:
    env = _env(FINAL_STAGE)
    assert env["PYTHONDONTWRITEBYTECODE"] == "1", "Python must not try to write __pycache__"
    # Inside a container the node must listen beyond loopback; TLS ends at the ingress.
    assert env["ENTENTE_PORT"] == "8080" and env["ENTENTE_HOST"] == "0.0.0.0"  # noqa: S104
    home = env["ENTENTE_HOME"]
    volumes = [v for i in FINAL if i.keyword == "VOLUME" for v in i.exec_form() or []]
    # `entente init` refuses an existing path and stages beside the home, so the home must be a
    # folder *inside* the writable volume, not the volume's mount point.
    assert any(home.startswith(v.rstrip("/") + "/") for v in volumes), (home, volumes)
    assert any(i.keyword == "EXPOSE" and i.args.split("/")[0] == "8080" for i in FINAL)


def test_no_remote_add_and_no_secrets_baked_in() -> None:
    for ins in INSTRUCTIONS:
        if ins.keyword == "ADD":
            assert not re.search(r"(https?|git|ssh)://|git@", ins.args), ins.args
        if ins.keyword in ("ENV", "ARG"):
            names = re.findall(r"([A-Za-z_][A-Za-z0-9_]*)=", ins.args) or [ins.args.split()[0]]
            for name in names:
                assert not re.search(r"PASSPHRASE|PASSWORD|SECRET|TOKEN|DATABASE_URL", name), (
                    f"{ins.keyword} {name}: secrets come from the runtime, never the image"
                )


@pytest.mark.parametrize("source", _context_copies())
def test_every_copied_path_exists_and_passes_dockerignore(source: str) -> None:
    assert (ROOT / source).exists(), f"COPY {source}: no such path in the repository"
    assert not ignored(PATTERNS, source), f".dockerignore keeps {source} out of the context"


def test_copies_everything_the_wheel_build_reads() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    needed = {"pyproject.toml", project["project"]["readme"]}
    needed |= set(project["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"])
    assert needed <= set(_context_copies()), needed - set(_context_copies())


@pytest.mark.parametrize(
    "path",
    [
        ".git/HEAD",
        ".venv/bin/python",
        ".env",
        "deploy/.env",
        "tests/conftest.py",
        "bench/__main__.py",
        "service/__pycache__/db.cpython-312.pyc",
        "node-home/keys/signing.key",
    ],
)
def test_dockerignore_keeps_local_state_and_secrets_out(path: str) -> None:
    assert PATTERNS[0] == (True, "*"), ".dockerignore should start with '*' (an allow-list)"
    assert ignored(PATTERNS, path)
