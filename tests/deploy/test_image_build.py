"""Build the image for real, where a Docker engine answers.

No Docker engine runs on the development and CI machines of this project (the docker CLI may be
installed, but `docker info` fails), so this test skips there, in CI too: unlike the interop
tests it cannot be made to pass by installing a package. Run it on a machine with an engine
before a release. Everything that can be checked without an engine is in test_dockerfile.py.
"""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from tests.deploy._files import DOCKERFILE, NODE_UID, ROOT

TAG = "entente:deploy-test"


def _engine_answers() -> bool:
    docker = shutil.which("docker")
    if docker is None:
        return False
    try:
        probe = subprocess.run(
            [docker, "info", "--format", "{{.ServerVersion}}"],
            capture_output=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return probe.returncode == 0


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_image_builds_and_runs_read_only_as_non_root() -> None:
    if not _engine_answers():
        pytest.skip("needs a Docker engine (none runs here)")
    build = subprocess.run(
        ["docker", "build", "-f", str(DOCKERFILE), "-t", TAG, str(ROOT)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert build.returncode == 0, build.stderr[-4000:]

    inspect = subprocess.run(
        ["docker", "image", "inspect", TAG], capture_output=True, text=True, check=True
    )
    config = json.loads(inspect.stdout)[0]["Config"]
    assert config["User"] == f"{NODE_UID}:{NODE_UID}"
    assert config["Entrypoint"] == ["entente"]
    assert config["Healthcheck"]["Test"][0] == "CMD"
    assert not any(e.startswith("ENTENTE_PASSPHRASE=") for e in config["Env"])

    # The CLI starts with a read-only root filesystem, no capabilities and only /tmp writable.
    run = subprocess.run(
        [
            "docker", "run", "--rm", "--read-only", "--tmpfs", "/tmp",
            "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
            "--entrypoint", "sh", TAG,
            "-c", 'id -u && test ! -w /opt/entente && entente --help',
        ],
        capture_output=True,
        text=True,
        check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-4000:]
    assert run.stdout.splitlines()[0] == str(NODE_UID)
    assert "serve" in run.stdout
