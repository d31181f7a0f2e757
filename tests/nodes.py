"""Real ``entente`` processes for CLI and integration tests.

:func:`run_cli` runs the installed console script in a subprocess; :class:`NodeProcess` creates a
home with ``entente init`` and runs ``entente serve`` on a free loopback port until stopped.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ENTENTE = str(Path(sys.executable).with_name("entente"))
PASSPHRASE = "test passphrase, not secret"

# Deadlines are generous: they bound a hang, never measure speed. A fresh-clone CI run at load
# 20-30 took far longer than on a quiet machine to start a node, and each health probe may wait
# behind the node's own background work (a restarted node catches up at once).
START_SECONDS = 180.0  # for `entente serve` to answer /healthz
PROBE_SECONDS = 10.0  # for one /healthz answer
STOP_SECONDS = 60.0  # for a graceful stop before the process is killed


def base_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENTENTE_")}
    env.update(
        ENTENTE_PASSPHRASE=PASSPHRASE,
        ENTENTE_SCRYPT_WORK_FACTOR="10",
        ENTENTE_LOG_LEVEL="INFO",
    )
    env.update(extra)
    return env


def run_cli(
    *args: str, env: dict[str, str] | None = None, input: bytes | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [ENTENTE, *args],
        env=env if env is not None else base_env(),
        input=input.decode() if input is not None else None,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class NodeProcess:
    home: Path
    node_id: str
    port: int = field(default_factory=free_port)
    env: dict[str, str] = field(default_factory=base_env)
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def init(self, name: str | None = None) -> None:
        result = run_cli(
            "init",
            "--home", str(self.home),
            "--node-id", self.node_id,
            "--name", name or self.node_id.upper(),
            "--url", self.url,
            env=self.env,
        )  # fmt: skip
        if result.returncode != 0:
            raise RuntimeError(f"entente init failed: {result.stderr}")

    def start(self, timeout: float = START_SECONDS) -> None:
        self.log_path = self.home.parent / f"{self.node_id}.log"
        with open(self.log_path, "ab") as log:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(
                [ENTENTE, "serve", "--home", str(self.home), "--port", str(self.port)],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"entente serve exited: {self.log_path.read_text()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=PROBE_SECONDS).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(
            f"entente serve did not become healthy in {timeout:.0f} s: {self.log_path.read_text()}"
        )

    def stop(self, sig: int = signal.SIGTERM, timeout: float = STOP_SECONDS) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self.proc = None
        return code

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return run_cli(*args, "--home", str(self.home), env=self.env)


@dataclass
class Federation:
    nodes: dict[str, NodeProcess]
    tokens: dict[str, dict[str, str]]  # node id -> role -> token

    def auth(self, node_id: str, role: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[node_id][role]}"}

    def stop(self) -> None:
        for node in self.nodes.values():
            node.stop()


def start_federation(
    root: Path, node_ids: tuple[str, ...] = ("uk-aisi", "us-aisi", "ca-aisi"), **env: str
) -> Federation:
    """Homes that pin each other, with the example MOU policies and a token per role (prepared
    in-process by the code the demo uses), then a real ``entente serve`` process for each."""
    from service.federation.setup import prepare_federation

    nodes = {nid: NodeProcess(root / nid, nid, env=base_env(**env)) for nid in node_ids}
    prepared = prepare_federation(
        {nid: node.url for nid, node in nodes.items()},
        root=root,
        names={nid: nid.upper() for nid in node_ids},
        passphrase=PASSPHRASE,
        scrypt_work_factor=10,
    )
    for node in nodes.values():
        node.start()
    return Federation(nodes, {nid: p.tokens for nid, p in prepared.items()})
