"""The tests' side of :mod:`service.localnet` (real ``entente serve`` processes on loopback): the
test environment (the test passphrase, a low scrypt work factor, INFO logs) and the installed
``entente`` console script, which the tests run as a user would.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from service import localnet
from service.localnet import Federation, clean_env, free_port

__all__ = [
    "ENTENTE",
    "PASSPHRASE",
    "Federation",
    "NodeProcess",
    "alive",
    "base_env",
    "free_port",
    "run_cli",
    "start_federation",
]

ENTENTE = str(Path(sys.executable).with_name("entente"))
PASSPHRASE = "test passphrase, not secret"
SCRYPT_WORK_FACTOR = 10  # fast key files: the tests are not about their cost


def base_env(**extra: str) -> dict[str, str]:
    defaults = {
        "ENTENTE_PASSPHRASE": PASSPHRASE,
        "ENTENTE_SCRYPT_WORK_FACTOR": str(SCRYPT_WORK_FACTOR),
        "ENTENTE_LOG_LEVEL": "INFO",
    }
    return clean_env(**{**defaults, **extra})


def alive(pid: int) -> bool:
    """Whether process ``pid`` is running (Linux ``/proc``; a zombie has ended)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def run_cli(
    *args: str, env: dict[str, str] | None = None, input: bytes | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return localnet.run_cli(
        *args,
        env=env if env is not None else base_env(),
        input=input.decode() if input is not None else None,
        timeout=timeout,
        command=(ENTENTE,),
    )


@dataclass
class NodeProcess(localnet.NodeProcess):
    """A node with the test environment, run through the ``entente`` console script."""

    env: dict[str, str] = field(default_factory=base_env)
    command: tuple[str, ...] = (ENTENTE,)


def start_federation(
    root: Path,
    node_ids: Iterable[str] = ("uk-aisi", "us-aisi", "ca-aisi"),
    *,
    classic_only: Iterable[str] = (),
    **env: str,
) -> Federation:
    """Homes that pin each other, with the example MOU policies and a token per role, then a
    running ``entente serve`` for each node, all in the test environment plus ``env``."""
    return localnet.start_federation(
        root,
        node_ids,
        passphrase=PASSPHRASE,
        scrypt_work_factor=SCRYPT_WORK_FACTOR,
        env=base_env(**env),
        command=(ENTENTE,),
        classic_only=tuple(classic_only),
    )
