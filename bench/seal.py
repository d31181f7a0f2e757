"""Benchmark: seal and open a large file with Entente, side by side with ``age`` + ``sha256sum``.

DESIGN.md section 10: sealing (hash + encrypt + sign) and opening (decrypt + verify digest and
signature) a 1 GiB file must each reach at least 1.2x the throughput of what a user would
otherwise script, run in the same session on the same file:

* seal peer:  ``age -r RECIPIENT -o OUT FILE`` then ``sha256sum FILE``
* open peer:  ``age -d -i KEYFILE -o PLAIN OUT`` then ``sha256sum PLAIN``

with a peak RSS under 64 MiB. Entente runs in a child process that imports only ``crypto``, the
standard library and ``service.files`` (the shell's atomic file writes, which import nothing
else); its peak RSS is that child's ``ru_maxrss``, started (like every timed process here) by a
small launcher, see ``_LAUNCHER``. Every timing is the wall time of whole processes (interpreter
start-up included for Entente, as process start-up is included for the peers). Entente's open
writes through a temporary file that it fsyncs and renames, as it does in production; the peers
write without fsync. Before each timed step, the previous outputs are deleted and dirty pages
are flushed (``sync``), so no step pays for another's writes.

The command a user runs is measured beside the library, in the same rounds and on the same
file: ``entente seal FILE --to RECIPIENT -o OUT --home HOME`` and ``entente open OUT -o PLAIN
--home HOME`` (the console script beside this interpreter, on this checkout), from a
passphrase-protected home (default scrypt work factor: the key unlock is part of every call, as
for a user) and from a home without passphrase, the two taking turns at going first (see
``HOME_ORDERS``). Their ratios to the same peers use the best of the rounds on both sides; peak
RSS is each command's own (``getrusage(RUSAGE_CHILDREN)`` in a small launcher, see
``_LAUNCHER``), from the home without passphrase (the protected home's
scrypt unlock alone takes 256 MiB). The fixed cost of one call is measured too: the wall
time of ``entente --help`` and of a 184-byte ``entente seal`` from each home (best of the
rounds).

Usage::

    python bench/seal.py                 # 1 GiB, 3 rounds, medians
    python bench/seal.py --quick         # 16 MiB, 1 round: only checks that everything runs
    python bench/seal.py --size 256M --rounds 5 --json result.json

Figures go to stdout; the JSON result is the last stdout line, or goes to ``--json PATH``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, NamedTuple

ROOT = Path(__file__).resolve().parent.parent
MIB = 1 << 20
TARGET_RATIO = 1.2
TARGET_RSS_MIB = 64
TARGET_HELP_SECONDS = 0.3  # `entente --help`
TARGET_SMALL_SEAL_SECONDS = 0.5  # a 184-byte `entente seal`, plus the key unlock
SMALL_BYTES = 184
PASSPHRASE = "bench passphrase, not secret"  # noqa: S105 - a throw-away home


def parse_size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    text = text.strip().upper().removesuffix("IB").removesuffix("B")
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


# --- the child: imports only crypto ------------------------------------------------------------


def child(argv: list[str]) -> None:
    """Run one Entente operation and print its timing and peak RSS as JSON."""
    sys.path.insert(0, str(ROOT))
    from datetime import UTC, datetime

    from crypto import age, sealed
    from crypto.keys import SigningKey, VerifyKey
    from crypto.keyset import KeySet
    from service import files

    op, work = argv[0], Path(argv[1])
    start = time.perf_counter()
    if op == "seal":
        signer = SigningKey(bytes.fromhex((work / "signing.hex").read_text()))
        result = files.seal_file(
            work / "input.bin",
            work / "entente.age",
            artifact_id="bench-1",
            title="Benchmark artifact",
            origin="uk-aisi",
            tlp="TLP:AMBER",
            recipients=[sealed.ManifestRecipient("us-aisi", (work / "recipient.txt").read_text())],
            signer=signer,
            policy={"bench": True},
            now=datetime.now(UTC),
        )
        (work / "entente.dsse.json").write_bytes(result.envelope.to_bytes())
        digest = result.sha256
    elif op == "open":
        public = VerifyKey(bytes.fromhex((work / "verify.hex").read_text()))
        identity = age.parse_identity((work / "identity.txt").read_text())
        manifest = files.open_sealed_file(
            work / "entente.age",
            work / "entente.out",
            envelope=sealed.load_envelope((work / "entente.dsse.json").read_bytes()),
            identities=[identity],
            keysets=[KeySet(public)],
        )
        digest = manifest.sha256
    elif op == "limit":
        digest = _primitives_alone(work / "input.bin")
    else:
        raise SystemExit(f"unknown child operation {op!r}")
    elapsed = time.perf_counter() - start
    loaded = sorted(
        name
        for name in sys.modules
        if name.split(".")[0] not in sys.stdlib_module_names
        and name.split(".")[0] not in ("crypto", "cryptography", "_cffi_backend", "bench")
        and not name.startswith("_")
        and name not in ("service", "service.files")  # the shell's atomic writes: stdlib only
    )
    print(
        json.dumps(
            {
                "op_seconds": elapsed,
                "maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                "sha256": digest,
                "third_party_modules": loaded,
            }
        )
    )


def _primitives_alone(path: Path) -> str:
    """The limit beside seal and open: the file read once in 64 KiB chunks (age's STREAM
    chunk), SHA-256 over it and ChaCha20-Poly1305 over each chunk, nothing else (no header, no
    manifest, no output file). Seal and open do at least this much per byte; with the hash on a
    thread of its own, as they run it, so the limit is the two primitives side by side."""
    import hashlib
    import threading
    from queue import Queue

    from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

    aead = ChaCha20Poly1305(os.urandom(32))
    hasher = hashlib.sha256()
    chunks: Queue[bytes | None] = Queue(maxsize=64)

    def hash_all() -> None:
        while (chunk := chunks.get()) is not None:
            hasher.update(chunk)

    helper = threading.Thread(target=hash_all)
    helper.start()
    counter = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(64 << 10):
            chunks.put(chunk)
            aead.encrypt(counter.to_bytes(12, "big"), chunk, None)
            counter += 1
    chunks.put(None)
    helper.join()
    return hasher.hexdigest()


# --- the parent -------------------------------------------------------------------------------


def _clean(work: Path, *names: str) -> None:
    for name in names:
        (work / name).unlink(missing_ok=True)
    os.sync()


# Every timed process is started by this small launcher (a fresh interpreter, no site), which
# times it from fork to exit and reads its peak RSS with getrusage(RUSAGE_CHILDREN). On Linux a
# process's ru_maxrss includes the memory of the process it was forked from until it execs, so a
# command started straight from this benchmark (tens of MiB by then) would report at least that.
_LAUNCHER = """
import json, os, resource, sys, time
report, cmd = sys.argv[1], sys.argv[2:]
start = time.perf_counter()
pid = os.fork()
if pid == 0:
    try:
        os.execvp(cmd[0], cmd)
    finally:
        os._exit(127)
_, status = os.waitpid(pid, 0)
seconds = time.perf_counter() - start
usage = resource.getrusage(resource.RUSAGE_CHILDREN)
code = os.waitstatus_to_exitcode(status)
with open(report, "w") as f:
    json.dump({"seconds": seconds, "maxrss_kib": usage.ru_maxrss, "code": code,
               "user_seconds": usage.ru_utime, "system_seconds": usage.ru_stime}, f)
"""


class Spawned(NamedTuple):
    """One whole process as the launcher saw it: wall time, output, peak RSS and its CPU."""

    seconds: float
    stdout: str
    maxrss_kib: int
    user_seconds: float
    system_seconds: float


def _spawn(cmd: list[str], env: dict[str, str] | None = None) -> Spawned:
    """``cmd`` run to its end by the launcher: wall seconds, stdout, peak RSS (KiB), CPU."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        done = subprocess.run(
            [sys.executable, "-I", "-S", "-c", _LAUNCHER, str(report), *cmd],
            capture_output=True,
            text=True,
            env=env,
            check=False,
        )
        measured: dict[str, Any] = (
            json.loads(report.read_text()) if report.exists() else {"code": None}
        )
    if measured["code"] != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({measured['code']}): {done.stderr[-2000:]}")
    return Spawned(
        float(measured["seconds"]),
        done.stdout,
        int(measured["maxrss_kib"]),
        float(measured["user_seconds"]),
        float(measured["system_seconds"]),
    )


def _run(cmd: list[str]) -> tuple[float, str]:
    spawned = _spawn(cmd)
    return spawned.seconds, spawned.stdout


def _prepare(work: Path, size: int) -> None:
    sys.path.insert(0, str(ROOT))
    from crypto import age
    from crypto.keys import SigningKey

    with open(work / "input.bin", "wb") as out:
        left = size
        while left:
            block = os.urandom(min(left, 4 * MIB))
            out.write(block)
            left -= len(block)
    identity = age.X25519Identity.generate()
    signer = SigningKey.generate()
    for name, text in (
        ("identity.txt", identity.to_string() + "\n"),
        ("signing.hex", signer.seed.hex()),
    ):
        fd = os.open(work / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
    (work / "recipient.txt").write_text(identity.recipient.to_string())
    (work / "verify.hex").write_text(signer.public.raw.hex())


# --- the command line, as users run it --------------------------------------------------------


def _entente() -> list[str]:
    """The ``entente`` console script beside this interpreter (``python -m service.cli``
    where there is none)."""
    script = Path(sys.executable).with_name("entente")
    return [str(script)] if script.exists() else [sys.executable, "-m", "service.cli"]


def _cli_env(*, passphrase: bool) -> dict[str, str]:
    """This environment without ENTENTE_* settings, running this checkout's code."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENTENTE_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    if passphrase:
        env["ENTENTE_PASSPHRASE"] = PASSPHRASE
    return env


def _run_measured(cmd: list[str], env: dict[str, str]) -> tuple[float, int]:
    """Wall seconds and peak RSS (KiB) of one whole process."""
    spawned = _spawn(cmd, env)
    return spawned.seconds, spawned.maxrss_kib


def _prepare_homes(work: Path) -> None:
    """Two homes made by ``entente init``: one passphrase-protected, one without passphrase."""
    for name, protected in (("protected", True), ("plain", False)):
        extra = [] if protected else ["--insecure-no-passphrase"]
        _run_measured(
            [
                *_entente(), "init", "--home", str(work / name), "--node-id", f"{name}-node",
                "--name", name, "--url", "https://bench.example", *extra,
            ],
            _cli_env(passphrase=protected),
        )  # fmt: skip
    (work / "small.bin").write_bytes(os.urandom(SMALL_BYTES))


# The order of the two homes in round i. On the virtual machines this is measured on, whichever
# command runs first after the round's peers has written and deleted gigabytes pays seconds of
# system time for its memory (2026-12-07: 2.9 s of system time against 0.5 s for the same
# command second, whichever home went first), so the homes take turns and each has its best.
HOME_ORDERS = (("plain", "protected"), ("protected", "plain"))


def _cli_round(work: Path, index: int = 0) -> dict[str, Any]:
    """One round of the command line: 1 GiB seal and open from each home, --help, small seals."""
    recipient = (work / "recipient.txt").read_text()
    row: dict[str, Any] = {}
    for name in HOME_ORDERS[index % len(HOME_ORDERS)]:
        env = _cli_env(passphrase=name == "protected")
        home = ["--home", str(work / name)]
        _clean(work, "cli.age", "cli.age.dsse.json")
        seal = [*_entente(), "seal", str(work / "input.bin"), "--to", recipient]
        sealed = _spawn([*seal, "-o", str(work / "cli.age"), *home], env)
        _clean(work, "cli.out")
        opened = [*_entente(), "open", str(work / "cli.age"), "-o", str(work / "cli.out")]
        opening = _spawn([*opened, *home], env)
        if (work / "cli.out").stat().st_size != (work / "input.bin").stat().st_size:
            raise SystemExit("entente open wrote other bytes than the input")
        _clean(work, "small.age", "small.age.dsse.json")
        small = [*_entente(), "seal", str(work / "small.bin"), "--to", recipient]
        t_small, rss_small = _run_measured([*small, "-o", str(work / "small.age"), *home], env)
        row[name] = {
            "seal_seconds": sealed.seconds,
            "seal_maxrss_kib": sealed.maxrss_kib,
            # user and system CPU: system time is where the VM's cost of fresh memory shows
            "seal_cpu_seconds": [sealed.user_seconds, sealed.system_seconds],
            "open_seconds": opening.seconds,
            "open_maxrss_kib": opening.maxrss_kib,
            "open_cpu_seconds": [opening.user_seconds, opening.system_seconds],
            "small_seal_seconds": t_small,
            "small_seal_maxrss_kib": rss_small,
        }
    t_help, rss_help = _run_measured([*_entente(), "--help"], _cli_env(passphrase=False))
    row["help_seconds"], row["help_maxrss_kib"] = t_help, rss_help
    _clean(work, "cli.age", "cli.age.dsse.json", "cli.out")
    return row


def _round(work: Path, age_cli: str, sha256sum: str, index: int = 0) -> dict[str, Any]:
    recipient = (work / "recipient.txt").read_text()
    me = [sys.executable, str(Path(__file__).resolve()), "--child"]

    _clean(work, "peer.age", "peer.out")
    t_age_enc, _ = _run(
        [age_cli, "-r", recipient, "-o", str(work / "peer.age"), str(work / "input.bin")]
    )
    t_sum_in, out = _run([sha256sum, str(work / "input.bin")])
    digest = out.split()[0]

    _clean(work, "entente.age", "entente.dsse.json")
    t_seal, out = _run([*me, "seal", str(work)])
    sealed_child = json.loads(out)

    _clean(work, "peer.out")
    t_age_dec, _ = _run(
        [
            age_cli,
            "-d",
            "-i",
            str(work / "identity.txt"),
            "-o",
            str(work / "peer.out"),
            str(work / "peer.age"),
        ]
    )
    t_sum_out, out = _run([sha256sum, str(work / "peer.out")])
    if out.split()[0] != digest:
        raise SystemExit("age -d produced other bytes than the input")

    _clean(work, "entente.out")
    t_open, out = _run([*me, "open", str(work)])
    opened_child = json.loads(out)
    t_limit, out = _run([*me, "limit", str(work)])
    limit_child = json.loads(out)
    if not sealed_child["sha256"] == opened_child["sha256"] == limit_child["sha256"] == digest:
        raise SystemExit("Entente's digests disagree with sha256sum")

    cli = _cli_round(work, index)

    return {
        "cli": cli,
        "limit_seconds": t_limit,  # a whole process, as the seal and open figures are
        "seal": {
            "entente_seconds": t_seal,
            "entente_op_seconds": sealed_child["op_seconds"],
            "peer_seconds": t_age_enc + t_sum_in,
            "peer_age_seconds": t_age_enc,
            "peer_sha256sum_seconds": t_sum_in,
            "maxrss_kib": sealed_child["maxrss_kib"],
            "third_party_modules": sealed_child["third_party_modules"],
        },
        "open": {
            "entente_seconds": t_open,
            "entente_op_seconds": opened_child["op_seconds"],
            "peer_seconds": t_age_dec + t_sum_out,
            "peer_age_seconds": t_age_dec,
            "peer_sha256sum_seconds": t_sum_out,
            "maxrss_kib": opened_child["maxrss_kib"],
            "third_party_modules": opened_child["third_party_modules"],
        },
    }


def _summarise(size: int, rounds: list[dict[str, Any]]) -> dict[str, Any]:
    summary: dict[str, Any] = {"size_bytes": size, "rounds": len(rounds)}
    for op in ("seal", "open"):
        runs = [r[op] for r in rounds]
        ours = statistics.median(r["entente_seconds"] for r in runs)
        peer = statistics.median(r["peer_seconds"] for r in runs)
        rss_mib = max(r["maxrss_kib"] for r in runs) / 1024
        summary[op] = {
            "entente_mb_s": size / 1e6 / ours,
            "entente_op_mb_s": size
            / 1e6
            / statistics.median(r["entente_op_seconds"] for r in runs),
            "peer_mb_s": size / 1e6 / peer,
            "peer_age_mb_s": size / 1e6 / statistics.median(r["peer_age_seconds"] for r in runs),
            "peer_sha256sum_mb_s": size
            / 1e6
            / statistics.median(r["peer_sha256sum_seconds"] for r in runs),
            "ratio": peer / ours,
            "peak_rss_mib": rss_mib,
            "ratio_ok": peer / ours >= TARGET_RATIO,
            "rss_ok": rss_mib < TARGET_RSS_MIB,
            "child_third_party_modules": runs[0]["third_party_modules"],
        }
    # the primitives alone (whole process, as the seal and open figures)
    summary["limit_mb_s"] = size / 1e6 / statistics.median(r["limit_seconds"] for r in rounds)
    summary["cli"] = _summarise_cli(size, rounds)
    summary["targets"] = {
        "ratio": TARGET_RATIO,
        "peak_rss_mib": TARGET_RSS_MIB,
        "help_seconds": TARGET_HELP_SECONDS,
        "small_seal_seconds": TARGET_SMALL_SEAL_SECONDS,
    }
    summary["ok"] = all(
        summary[op]["ratio_ok"] and summary[op]["rss_ok"] for op in ("seal", "open")
    )
    return summary


def _summarise_cli(size: int, rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """The command line's figures: best of the rounds, against the best of the peers."""
    best_peer = {op: min(r[op]["peer_seconds"] for r in rounds) for op in ("seal", "open")}
    cli: dict[str, Any] = {
        "command": " ".join(Path(c).name for c in _entente()),
        "peer_mb_s": {op: size / 1e6 / best_peer[op] for op in best_peer},
    }
    for home in ("protected", "plain"):
        runs = [r["cli"][home] for r in rounds]
        figures: dict[str, Any] = {}
        for op in ("seal", "open"):
            best_run = min(runs, key=lambda run: float(run[f"{op}_seconds"]))
            best = best_run[f"{op}_seconds"]
            figures[f"{op}_cpu_seconds"] = best_run[f"{op}_cpu_seconds"]  # [user, system]
            figures[f"{op}_mb_s"] = size / 1e6 / best
            figures[f"{op}_ratio"] = best_peer[op] / best
            figures[f"{op}_peak_rss_mib"] = max(run[f"{op}_maxrss_kib"] for run in runs) / 1024
        figures["small_seal_seconds"] = min(run["small_seal_seconds"] for run in runs)
        figures["small_seal_peak_rss_mib"] = (
            max(run["small_seal_maxrss_kib"] for run in runs) / 1024
        )
        cli[home] = figures
    cli["help_seconds"] = min(r["cli"]["help_seconds"] for r in rounds)
    cli["help_peak_rss_mib"] = max(r["cli"]["help_maxrss_kib"] for r in rounds) / 1024
    plain = cli["plain"]
    cli["ok"] = {
        "seal_ratio": cli["protected"]["seal_ratio"] >= TARGET_RATIO,
        "open_ratio": cli["protected"]["open_ratio"] >= TARGET_RATIO,
        "seal_peak_rss": plain["seal_peak_rss_mib"] < TARGET_RSS_MIB,
        "help": cli["help_seconds"] < TARGET_HELP_SECONDS,
        "small_seal": plain["small_seal_seconds"] < TARGET_SMALL_SEAL_SECONDS,
    }
    return cli


def _print_figures(summary: dict[str, Any]) -> None:
    size = summary["size_bytes"]
    print(f"file: {size / MIB:.0f} MiB, rounds: {summary['rounds']} (medians)")
    rows = (
        ("seal", "age -r + sha256sum"),
        ("open", "age -d + sha256sum"),
    )
    for op, peer_name in rows:
        s = summary[op]
        print(
            f"{op}: entente {s['entente_mb_s']:8.1f} MB/s "
            f"(in-process {s['entente_op_mb_s']:.1f} MB/s) | "
            f"{peer_name} {s['peer_mb_s']:8.1f} MB/s "
            f"(age {s['peer_age_mb_s']:.1f}, sha256sum {s['peer_sha256sum_mb_s']:.1f}) | "
            f"ratio {s['ratio']:.2f}x (target >= {TARGET_RATIO}) | "
            f"peak RSS {s['peak_rss_mib']:.1f} MiB (target < {TARGET_RSS_MIB})"
        )
    print(
        f"  limit: {summary['limit_mb_s']:8.1f} MB/s, the primitives alone (SHA-256 beside "
        "ChaCha20-Poly1305 over 64 KiB chunks, nothing written)"
    )
    cli = summary["cli"]
    print(f"command line ({cli['command']}), best of {summary['rounds']}:")
    for home, label in (("protected", "passphrase-protected home"), ("plain", "no passphrase")):
        c = cli[home]
        print(
            f"  {label}: seal {c['seal_mb_s']:.1f} MB/s ({c['seal_ratio']:.2f}x the peer, "
            f"peak RSS {c['seal_peak_rss_mib']:.1f} MiB) | open {c['open_mb_s']:.1f} MB/s "
            f"({c['open_ratio']:.2f}x, peak RSS {c['open_peak_rss_mib']:.1f} MiB) | "
            f"{SMALL_BYTES}-byte seal {c['small_seal_seconds']:.3f} s"
        )
        print(
            "    CPU of those best runs, user + system: "
            f"seal {c['seal_cpu_seconds'][0]:.2f} + {c['seal_cpu_seconds'][1]:.2f} s, "
            f"open {c['open_cpu_seconds'][0]:.2f} + {c['open_cpu_seconds'][1]:.2f} s"
        )
    print(
        f"  entente --help {cli['help_seconds']:.3f} s (target < {TARGET_HELP_SECONDS}), "
        f"peak RSS {cli['help_peak_rss_mib']:.1f} MiB"
    )
    missed = sorted(name for name, ok in cli["ok"].items() if not ok)
    print("  command-line targets met" if not missed else f"  NOT MET: {', '.join(missed)}")
    print("targets met" if summary["ok"] else "TARGETS NOT MET")


def _scratch(size: int) -> Path | None:
    """Where the files go by default: tmpfs (``/dev/shm``) when it has room for them, as the
    figures of the design targets were taken, so that the benchmark measures the CPU path and
    not the disk (on a disk both sides wait for it, and Entente also fsyncs its output, which
    the peers do not); else the system's temporary folder."""
    shm = Path("/dev/shm")
    try:
        free = shutil.disk_usage(shm).free
    except OSError:
        return None
    return shm if free > 6 * size + (256 << 20) else None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--child":
        child(argv[1:])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=parse_size, default=1 << 30, help="file size (e.g. 1G)")
    parser.add_argument("--quick", action="store_true", help="16 MiB, one round")
    parser.add_argument("--rounds", type=int, default=None, help="rounds (default 3; quick 1)")
    parser.add_argument(
        "--dir", type=Path, default=None, help="scratch folder's parent (default: /dev/shm)"
    )
    parser.add_argument("--json", type=Path, default=None, help="write the JSON result here")
    args = parser.parse_args(argv)
    size = 16 * MIB if args.quick else args.size
    rounds = args.rounds or (1 if args.quick else 3)
    age_cli = shutil.which("age")
    sha256sum = shutil.which("sha256sum")
    if age_cli is None or sha256sum is None:
        print("needs the age CLI (apt-get install age) and sha256sum (coreutils)", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="entente-bench-", dir=args.dir or _scratch(size)))
    print(f"scratch folder: {work.parent}", flush=True)
    try:
        _prepare(work, size)
        _prepare_homes(work)
        results = [_round(work, age_cli, sha256sum, i) for i in range(rounds)]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    summary = _summarise(size, results)
    _print_figures(summary)
    line = json.dumps(summary, sort_keys=True)
    if args.json is not None:
        args.json.write_text(line + "\n")
    else:
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
