"""aics-witness (PyPI), an independent C2SP tlog-witness, as a test tool, installed once per
machine.

:func:`aics_witness` returns an :class:`AicsWitness` that creates a witness (its key and
database), tells it which logs to follow, and serves it on a free port. The package is installed,
pinned, into a virtual environment in a cache outside the repository (``$ENTENTE_TEST_CACHE`` or
``~/.cache/entente-tests``) the first time. Its metadata asks for Python 3.12; it runs unchanged
on this project's Python (3.11), so it is installed with ``--ignore-requires-python``, and the
tests that use it are what show that it works. When the install fails the test skips, naming
what to do; with ``CI`` set it fails (``tests.support.require``).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.support import install_lock, require

VERSION = "0.1.0"  # aics-witness on PyPI
TLOG_VERSION = "0.2.1"  # aics-tlog, what it builds on
CACHE = Path(os.environ.get("ENTENTE_TEST_CACHE", Path.home() / ".cache" / "entente-tests"))


@dataclass(frozen=True)
class AicsWitness:
    command: Path  # the aics-witness script in its own virtual environment
    folder: Path  # its config, key and database

    @property
    def config(self) -> Path:
        return self.folder / "witness.json"

    def _run(self, *args: str) -> str:
        done = subprocess.run(
            [str(self.command), *args, "--config", str(self.config)],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"aics-witness {args[0]} failed: {done.stderr.strip()[-2000:]}")
        return done.stdout

    def init(self, name: str) -> str:
        """Create the witness (key, database); its cosigner verifier key."""
        self.folder.mkdir(parents=True, exist_ok=True)
        return self._run("init", "--name", name).strip().splitlines()[-1]

    def add_log(self, origin: str, vkey: str) -> None:
        self._run("add-log", "--origin", origin, "--vkey", vkey)

    @contextmanager
    def serving(self) -> Iterator[str]:
        """Serve it on a free loopback port; its submission prefix (a URL)."""
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        log = (self.folder / "serve.log").open("wb")
        proc = subprocess.Popen(
            [str(self.command), "serve", "--config", str(self.config), "--listen",
             f"127.0.0.1:{port}"],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    httpx.get(url + "/", timeout=1)
                    break
                except httpx.HTTPError:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        log.flush()
                        text = (self.folder / "serve.log").read_text(errors="replace")
                        raise RuntimeError(f"aics-witness did not start: {text[-2000:]}") from None
                    time.sleep(0.1)
            yield url
        finally:
            proc.terminate()
            proc.wait(timeout=10)
            log.close()


def aics_witness(folder: Path) -> AicsWitness:
    """aics-witness, installed on first use, with its files in ``folder``."""
    venv = CACHE / f"aics-witness-{VERSION}"
    command = venv / "bin" / "aics-witness"
    with install_lock(venv):  # another test process may be installing it
        if not command.exists():
            made = subprocess.run(
                [sys.executable, "-m", "venv", str(venv)],
                capture_output=True, text=True, check=False,
            )  # fmt: skip
            require(
                made.returncode == 0, "a virtual environment for aics-witness", made.stderr[-500:]
            )
            done = subprocess.run(
                [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet",
                 "--ignore-requires-python", f"aics-witness=={VERSION}",
                 f"aics-tlog=={TLOG_VERSION}"],
                capture_output=True, text=True, timeout=600, check=False,
            )  # fmt: skip
            require(
                done.returncode == 0 and command.exists(),
                f"the PyPI package aics-witness=={VERSION}",
                f"pip install failed in {venv}: {done.stderr.strip()[-500:]}",
            )
    return AicsWitness(command, folder)
