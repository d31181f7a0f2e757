"""Real ``entente serve`` processes on loopback: the one way the demo, the integration tests and
the benchmarks run nodes.

A :class:`NodeProcess` is a node home and, once started, its server process on a free
``127.0.0.1`` port, logging to ``<node id>.log`` beside its home. A :class:`Federation` is a
group of them whose homes pin each other (prepared in-process by
:func:`service.federation.setup.prepare_federation`, the same code as ``entente init``,
``partner add`` and ``token create``), with a bearer token per role for each node.

Deadlines bound a hang, never measure speed: a loaded machine may take minutes to start a node,
and a health probe may wait behind the node's own background work. The node processes never
outlive the process that started them: each asks the kernel for SIGTERM when its parent dies,
SIGKILL included (Linux ``PR_SET_PDEATHSIG``; the parent is the starting *thread*, so start
nodes from a thread that lives as long as they should). Elsewhere the caller's ``stop`` must.
A node started ``detached`` (``entente network up --keep``) is the exception: it runs in its own
session without that request, and whoever started it records its pid to stop it later.

What it does not do: choose an environment for a purpose (the demo's short intervals, the tests'
low scrypt work factor and passphrase belong to their callers), or talk to a node's API beyond
``/healthz``.
"""

from __future__ import annotations

import fcntl
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypedDict, Unpack

import httpx

from service.errors import NodeProcessError
from service.federation.setup import prepare_federation

__all__ = [
    "COMMAND",
    "PROBE_SECONDS",
    "START_SECONDS",
    "STOP_SECONDS",
    "Federation",
    "FederationOptions",
    "NodeProcess",
    "clean_env",
    "die_with_parent",
    "free_port",
    "prepare_nodes",
    "run_cli",
    "start_federation",
    "wait_until_answering",
]

# This project's command line, run by the interpreter that runs us (no console script needed).
COMMAND: tuple[str, ...] = (sys.executable, "-m", "service.cli")

# Generous: a fresh-clone CI run at load 20-30 took far longer than a quiet machine to start a
# node, and each health probe may wait behind the node's own background work (a restarted node
# catches up at once).
START_SECONDS = 180.0  # for `entente serve` to answer /healthz
PROBE_SECONDS = 10.0  # for one /healthz answer
STOP_SECONDS = 60.0  # for a graceful stop before the process is killed
CLI_SECONDS = 60.0  # for one `entente` command to finish

_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without any ``ENTENTE_*`` setting, then ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENTENTE_")}
    env.update(extra)
    return env


# The kernel may hand the same free port to two calls in a row (about one network of five
# nodes in 2,000 got a port twice): the second node cannot listen, and its URL reaches the
# first. So no port is handed out again until RECENT_PORTS others have been, by this process
# or, through a small shared file (PORTS_FILE; by default one per user in the temporary
# folder), by another one on the machine within RECENT_SECONDS (the test suite's workers).
RECENT_PORTS = 1024
RECENT_SECONDS = 600.0
PORTS_FILE: Path | None = None  # None: <temporary folder>/entente-localnet-ports-<uid>
_recent: deque[int] = deque(maxlen=RECENT_PORTS)
_recent_lock = threading.Lock()


def free_port() -> int:
    """A loopback TCP port that nothing listens on (now) and that no process of this user on
    this machine has handed out among its last :data:`RECENT_PORTS` or :data:`RECENT_SECONDS`."""
    with _recent_lock, _SharedPorts.open() as shared:
        while True:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port: int = s.getsockname()[1]
            if port not in _recent and port not in shared.ports:
                _recent.append(port)
                shared.ports[port] = time.time()
                return port


class _SharedPorts:
    """The ports recently handed out by any process, kept in :data:`PORTS_FILE` (``port time``
    lines) under an exclusive ``flock``. Without the file (a temporary folder not writable, a
    file of another user's) only this process's own list applies."""

    def __init__(self, fd: int | None, ports: dict[int, float]) -> None:
        self.fd = fd
        self.ports = ports

    @classmethod
    @contextmanager
    def open(cls) -> Iterator[_SharedPorts]:
        path = PORTS_FILE or Path(tempfile.gettempdir()) / f"entente-localnet-ports-{os.getuid()}"
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        except OSError:
            yield cls(None, {})
            return
        try:
            if os.fstat(fd).st_uid != os.getuid():  # another user's file: not ours to trust
                yield cls(None, {})
                return
            fcntl.flock(fd, fcntl.LOCK_EX)
            shared = cls(fd, cls._read(fd))
            yield shared
            shared._write()
        finally:
            os.close(fd)  # releases the lock

    @staticmethod
    def _read(fd: int) -> dict[int, float]:
        with os.fdopen(os.dup(fd), "rb") as f:
            text = f.read(1 << 20).decode("ascii", "replace")
        since = time.time() - RECENT_SECONDS
        ports: dict[int, float] = {}
        for line in text.splitlines():
            port, _, when = line.partition(" ")
            try:
                if float(when) >= since:
                    ports[int(port)] = float(when)
            except ValueError:
                continue  # a torn or foreign line: skipped, rewritten without it
        # At most the newest RECENT_PORTS: a bound far below the kernel's ephemeral range, so
        # that free_port always finds a port whatever the file says.
        return dict(_newest(ports))

    def _write(self) -> None:
        if self.fd is None:
            return
        data = "".join(f"{port} {when:.3f}\n" for port, when in _newest(self.ports)).encode()
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, data, 0)


def _newest(ports: dict[int, float]) -> list[tuple[int, float]]:
    """The :data:`RECENT_PORTS` latest of ``ports`` (port -> time handed out), oldest first."""
    return sorted(ports.items(), key=lambda item: item[1])[-RECENT_PORTS:]


def run_cli(
    *args: str,
    env: Mapping[str, str] | None = None,
    input: str | None = None,
    timeout: float = CLI_SECONDS,
    command: tuple[str, ...] = COMMAND,
) -> subprocess.CompletedProcess[str]:
    """Run one ``entente`` command to its end; its output is captured as text, never checked."""
    return subprocess.run(  # noqa: S603 - this project's own command line, fixed arguments
        [*command, *args],
        env=dict(env) if env is not None else clean_env(),
        input=input,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def die_with_parent(sig: int = signal.SIGTERM) -> Callable[[], None]:
    """A ``preexec_fn``: the child gets ``sig`` when this process dies (Linux), or at once if it
    has died already (between fork and this call). ``prctl`` is looked up here, in the parent:
    the child runs no import, which could wait forever on a lock another thread held."""
    parent = os.getpid()
    prctl: Callable[..., int] | None = None
    if sys.platform.startswith("linux"):
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl

    def preexec() -> None:
        if prctl is not None:
            prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0)
        if os.getppid() != parent:
            os.kill(os.getpid(), sig)

    return preexec


def _named(answer: httpx.Response) -> object:
    """The node id a ``/healthz`` answer names (None if it names none)."""
    try:
        body = answer.json()
    except ValueError:
        return None
    return body.get("node_id") if isinstance(body, dict) else None


def _log_tail(path: Path | None, limit: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-limit:] if path is not None else ""
    except OSError:
        return ""


def wait_until_answering(
    url: str,
    proc: subprocess.Popen[bytes],
    *,
    what: str,
    timeout: float = START_SECONDS,
    log_path: Path | None = None,
    node_id: str | None = None,
) -> None:
    """Poll ``url`` until it answers 200; raise :class:`NodeProcessError` if ``proc`` exits or
    ``timeout`` seconds pass first (the error carries the end of ``log_path``). With
    ``node_id``, the answer must name that node: another node answering on the port means
    ``proc`` could not listen there, and every request meant for it would reach the other."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        code = proc.poll()
        if code is not None:
            where = f"; see {log_path}" if log_path is not None else ""
            raise NodeProcessError(
                f"{what} exited with code {code}{where}", log_tail=_log_tail(log_path)
            )
        try:
            answer = httpx.get(url, timeout=PROBE_SECONDS)
        except httpx.HTTPError:
            answer = None
        if answer is not None and answer.status_code == 200:
            if node_id is None or (named := _named(answer)) == node_id:
                return
            raise NodeProcessError(
                f"{url} answered as {named!r}, not {node_id!r}: another process holds the port "
                f"{what} was to listen on",
                log_tail=_log_tail(log_path),
            )
        time.sleep(0.1)
    raise NodeProcessError(
        f"{what} did not answer {url} within {timeout:.0f} s", log_tail=_log_tail(log_path)
    )


@dataclass
class NodeProcess:
    """One node home and its ``entente serve`` process (when started), on loopback unless
    ``host`` (and ``launcher``) put it elsewhere, e.g. in a network namespace."""

    home: Path
    node_id: str
    port: int = field(default_factory=free_port)
    env: dict[str, str] = field(default_factory=clean_env)
    tokens: dict[str, str] = field(default_factory=dict)  # role -> bearer token
    command: tuple[str, ...] = COMMAND
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None  # set before starting to log elsewhere than <node id>.log
    detached: bool = False  # outlives the process that starts it (its own session, no
    # PR_SET_PDEATHSIG): `entente network up --keep`; stopping it is then the caller's job
    host: str = "127.0.0.1"  # the address in its URL, and the one it listens on unless:
    listen_host: str | None = None  # where `serve` listens when its URL is a relay in front
    launcher: tuple[str, ...] = ()  # what runs `serve`, e.g. `ip netns exec NS` (no shell)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise NodeProcessError(f"{self.node_id} is not running")
        return self.proc.pid

    def auth(self, role: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[role]}"}

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """``entente ARGS --home HOME`` with this node's environment."""
        return run_cli(*args, "--home", str(self.home), env=self.env, command=self.command)

    def init(self, name: str | None = None) -> None:
        """Create the home with ``entente init`` (the passphrase comes from ``env``)."""
        result = run_cli(
            "init",
            "--home", str(self.home),
            "--node-id", self.node_id,
            "--name", name or self.node_id.upper(),
            "--url", self.url,
            env=self.env,
            command=self.command,
        )  # fmt: skip
        if result.returncode != 0:
            raise NodeProcessError(f"entente init failed: {result.stderr}")

    def spawn(self) -> None:
        """Start ``entente serve`` without waiting for it (see :meth:`wait_healthy`)."""
        if self.log_path is None:
            self.log_path = self.home.parent / f"{self.node_id}.log"
        host = self.listen_host or self.host
        serve = ["serve", "--home", str(self.home), "--host", host, "--port", str(self.port)]
        with open(self.log_path, "ab") as log:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(  # noqa: S603 - this project's own command line
                [*self.launcher, *self.command, *serve],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL if self.detached else None,
                start_new_session=self.detached,  # then a terminal's Ctrl-C does not reach it
                preexec_fn=None if self.detached else die_with_parent(),  # no import in it
            )

    def wait_healthy(self, timeout: float = START_SECONDS) -> None:
        if self.proc is None:
            raise NodeProcessError(f"{self.node_id} was not started")
        wait_until_answering(
            f"{self.url}/healthz",
            self.proc,
            what=f"{self.node_id} (entente serve)",
            timeout=timeout,
            log_path=self.log_path,
            node_id=self.node_id,
        )

    def start(self, timeout: float = START_SECONDS) -> None:
        """Start ``entente serve`` and wait until it answers ``/healthz``."""
        self.spawn()
        self.wait_healthy(timeout)

    def send_signal(self, sig: int) -> None:
        """Send ``sig`` if the process is running; do not wait."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = STOP_SECONDS) -> int:
        """Send ``sig``, wait up to ``timeout`` seconds, then kill; the exit code (0 if it was
        not running)."""
        if self.proc is None:
            return 0
        self.send_signal(sig)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self.proc = None
        return code

    def kill(self) -> None:
        self.stop(signal.SIGKILL)


@dataclass
class Federation:
    """Nodes whose homes pin each other, each with a token per role."""

    nodes: dict[str, NodeProcess]

    @property
    def tokens(self) -> dict[str, dict[str, str]]:
        """node id -> role -> bearer token"""
        return {node_id: node.tokens for node_id, node in self.nodes.items()}

    def auth(self, node_id: str, role: str) -> dict[str, str]:
        return self.nodes[node_id].auth(role)

    def start(self, timeout: float = START_SECONDS) -> None:
        """Start every node that is not running, all at once, and wait until each answers
        ``/healthz``; if one does not, stop them all and raise."""
        try:
            waiting = [node for node in self.nodes.values() if node.proc is None]
            for node in waiting:
                node.spawn()
            for node in waiting:
                node.wait_healthy(timeout)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """SIGTERM every node, then wait for each (killing it after ``STOP_SECONDS``)."""
        for node in self.nodes.values():
            node.send_signal(signal.SIGTERM)
        for node in self.nodes.values():
            node.stop()


def prepare_nodes(
    root: Path,
    node_ids: Iterable[str],
    *,
    names: Mapping[str, str] | None = None,
    passphrase: str | None = None,
    scrypt_work_factor: int = 18,
    env: Mapping[str, str] | None = None,
    database_urls: dict[str, str] | None = None,
    command: tuple[str, ...] = COMMAND,
    classic_only: Collection[str] = (),
) -> Federation:
    """Homes under ``root`` (one per node id, named ``names[id]`` or ``ID``) that pin each other,
    with the example MOU policies and a token per role; no process is started yet.

    With ``passphrase=None`` the key files are stored unencrypted (demos and benchmarks only).
    Every node runs ``command`` with ``env`` (default: :func:`clean_env`).
    """
    nodes = {
        node_id: NodeProcess(
            root / node_id,
            node_id,
            env=dict(env) if env is not None else clean_env(),
            command=command,
        )
        for node_id in node_ids
    }
    prepared = prepare_federation(
        {node_id: node.url for node_id, node in nodes.items()},
        root=root,
        names={node_id: (names or {}).get(node_id, node_id.upper()) for node_id in nodes},
        passphrase=passphrase,
        scrypt_work_factor=scrypt_work_factor,
        database_urls=database_urls,
        classic_only=classic_only,
    )
    for node_id, node in nodes.items():
        node.tokens = dict(prepared[node_id].tokens)
    return Federation(nodes)


class FederationOptions(TypedDict, total=False):
    """:func:`prepare_nodes`'s keyword arguments."""

    names: Mapping[str, str] | None
    passphrase: str | None
    scrypt_work_factor: int
    env: Mapping[str, str] | None
    database_urls: dict[str, str] | None
    command: tuple[str, ...]
    classic_only: Collection[str]


def start_federation(
    root: Path, node_ids: Iterable[str], **options: Unpack[FederationOptions]
) -> Federation:
    """:func:`prepare_nodes`, then a running ``entente serve`` for each node."""
    federation = prepare_nodes(root, node_ids, **options)
    federation.start()
    return federation
