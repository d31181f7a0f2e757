"""Profiles of the hot paths: where a local share's CPU goes, and what verifying a log costs.

Two measurements, each printed as a Markdown table and written to ``bench/results/profile.md``
(the share profile's py-spy stacks, collapsed, to ``bench/results/profile-share.txt.gz``: feed
them to flamegraph.pl or speedscope):

* ``share``: one node process (one worker, SQLite, delivery off) takes 4 KiB shares from the
  same load generator as bench/api.py while py-spy samples it, counting only samples where a
  thread holds the GIL (``--gil``: CPU, not waiting). Each sample is put in the first bucket
  its stack meets from the innermost frame outwards (seal, blob store, database, policy, ...),
  and the shares are timed by the server's own CPU clock (``/proc``), so a bucket's share of
  the samples is turned into milliseconds per share.
* ``verify``: the steps of offline log verification timed one by one per entry, on rows read
  from a real log: reading rows from the database, encoding each leaf (the canonical JSON of
  docs/audit-log.md), or instead reading each leaf as SQLite builds it (``json_quote``, what
  the verifier's workers do on SQLite when its quoting is the specification's), hashing it
  (RFC 6962 leaf hash), and folding the leaf hashes into the tree. Their sum is the
  single-core cost of verification; ``entente audit verify`` spreads all but the fold over one
  process per core.

Usage::

    python bench/profile.py               # both, 3,000 shares and 1,000,000 entries
    python bench/profile.py --quick       # small sizes: only checks that everything runs
    python bench/profile.py share --shares 5000
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# Not this script's folder: its name would shadow the standard library's ``profile``, which
# ``cProfile`` imports.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))

from bench._proc import cpu_seconds, tree  # noqa: E402
from bench.api import _shares, start_node  # noqa: E402

# (bucket, frame prefixes): a sample goes to the first bucket met from the innermost frame out.
BUCKETS: list[tuple[str, tuple[str, ...]]] = [
    ("blob store: temporary file, rename, syncfs", ("_FileBlobWriter", "FileBlobStore")),
    (
        "seal: age encryption (X25519, HKDF, ChaCha20-Poly1305) and DSSE signing",
        ("seal (crypto/sealed.py", "encrypt (crypto/age", "sign_manifest"),
    ),
    ("policy decision and pinned-partner lookup", ("decide_share",)),
    ("bearer-token authentication (one indexed read)", ("_authenticate", "authenticate (")),
    (
        "database: group commit of the rows (SQLAlchemy Core, SQLite)",
        ("GroupCommit", "DefaultDialect.do_"),
    ),
    (
        "rows and audit events built (JSON, ORM object)",
        ("_artifact_values", "audit_row", "_outbox_values", "share_artifact"),
    ),
    (
        "multipart parsing and metadata validation",
        ("MultipartReader", "MultipartParser", "model_validate_json", "_share_sync"),
    ),
    ("response body (pydantic)", ("_out (service/api", "serialize_response")),
    (
        "HTTP server and framework (uvicorn, h11, Starlette, FastAPI, middleware, threads)",
        ("",),
    ),
]


def bucket_of(stack: list[str]) -> str:
    for frame in reversed(stack):
        for name, prefixes in BUCKETS[:-1]:
            if frame.startswith(prefixes):
                return name
    return BUCKETS[-1][0]


def summarize(collapsed: Path) -> Counter[str]:
    """Samples per bucket in a py-spy ``--format raw`` file (``frame;frame;... count``)."""
    counts: Counter[str] = Counter()
    for line in collapsed.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            counts[bucket_of(stack.split(";"))] += int(count)
    return counts


def profile_share(
    shares: int, concurrency: int, out: Path | None, *, classic_only: bool = False
) -> dict[str, Any]:
    """Profile ``shares`` local shares (a post-quantum node, or a classic-only one); the raw
    stacks are copied to ``out`` when given."""
    spy_bin = Path(sys.executable).with_name("py-spy")
    if not spy_bin.exists():
        raise SystemExit("py-spy is not installed (pip install -e '.[dev]')")
    with tempfile.TemporaryDirectory(prefix="entente-profile-") as tmp:
        root = Path(tmp)
        node = start_node(root, 1, classic_only=classic_only)
        try:
            url, token = node.url, node.tokens["publisher"]
            _shares(url, token, 200, concurrency)  # warm up
            raw = root / "share.txt"
            spy = subprocess.Popen(
                [str(spy_bin), "record", "--pid", str(node.pid), "--gil", "--nonblocking",
                 "--rate", "250", "--format", "raw", "-o", str(raw)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            time.sleep(1.0)
            pids = tree(node.pid)
            cpu = cpu_seconds(pids)
            rate = _shares(url, token, shares, concurrency)
            cpu_ms = 1000 * (cpu_seconds(pids) - cpu) / shares
            spy.send_signal(signal.SIGINT)
            spy.wait(60)
            counts = summarize(raw)
            if out is not None:
                out.mkdir(parents=True, exist_ok=True)
                with raw.open("rb") as src, gzip.open(out / "profile-share.txt.gz", "wb") as dst:
                    shutil.copyfileobj(src, dst)
        finally:
            node.stop()
    total = sum(counts.values()) or 1
    return {
        "shares": shares,
        "post_quantum": not classic_only,
        "shares_per_second": round(rate, 1),
        "server_cpu_ms_per_share": round(cpu_ms, 3),
        "samples": total,
        "buckets": {
            name: {
                "share": round(counts[name] / total, 4),
                "ms_per_share": round(cpu_ms * counts[name] / total, 3),
            }
            for name, _ in BUCKETS
        },
    }


# (step, the functions (file, name) whose inclusive time it is), for the receive profile;
# an indented step is part of the one above it.
RECEIVE_STEPS: list[tuple[str, tuple[tuple[str, str], ...]]] = [
    (
        "check: manifest parsed, signatures, recipient, inbound policy",
        (("service/federation/receive.py", "check"),),
    ),
    ("    of which the manifest's signatures", (("crypto/dsse.py", "verify_envelope"),)),
    ("    of which the inbound policy decision", (("service/federation/receive.py", "_inbound"),)),
    (
        "stage: decrypted to nowhere into a temporary blob",
        (("service/federation/receive.py", "stage"),),
    ),
    ("    of which the file key unwrapped", (("crypto/age/_core.py", "unlock"),)),
    ("    of which the temporary file made", (("service/blobs.py", "writer"),)),
    (
        "commit: receipts, rows, blobs journaled and placed, one transaction",
        (("service/federation/receive.py", "commit"),),
    ),
    ("    of which the receipts signed", (("crypto/receipt.py", "sign_receipt"),)),
    (
        "    of which the blobs journaled and placed",
        (("service/blob_journal.py", "intend"), ("service/blobs.py", "place")),
    ),
]


def profile_receive(n: int, *, classic_only: bool = False) -> dict[str, Any]:
    """A pulled feed page of ``n`` artifacts of 4 KiB received by a node in this process, no
    HTTP (``take_page``, what a catch-up does with each page): the receiver's CPU per artifact,
    then a second page under cProfile, by step: the CPU of each step's function, calls
    included, under cProfile. cProfile adds its own cost to every Python call, so a step made
    of calls into C (signatures, key unwrap, file system) reads close to its cost, and one made
    of many small Python calls reads larger (the profiled page's CPU is given beside)."""
    import cProfile
    import io
    import pstats

    from service.artifacts import share as sharing
    from service.artifacts.terms import ShareTerms
    from service.federation.client import PartnerClient
    from service.federation.feed import page
    from service.federation.pull import partial_payloads, take_page
    from service.localnet import prepare_nodes
    from service.models import Partner
    from service.node import load_node
    from service.policy_store import decision_scope
    from service.settings import Settings
    from service.tokens import Principal, Role

    with tempfile.TemporaryDirectory(prefix="entente-profile-") as tmp:
        root = Path(tmp)
        ids = ("uk-aisi", "us-aisi")
        prepare_nodes(root, ids, classic_only=ids if classic_only else ())
        uk, us = (
            load_node(Settings(home=root / i, insecure_no_passphrase=True, workers_enabled=False))
            for i in ids
        )
        try:
            terms = ShareTerms(
                title="finding", tlp="TLP:GREEN", topics=("evaluation",),
                purposes=("evaluation",), partners=("us-aisi",),
            )  # fmt: skip
            who = Principal(token_id="tok_bench", name="bench", role=Role.PUBLISHER)  # noqa: S106
            for i in range(2 * n):
                sharing.share_artifact(
                    uk, uk.blobs, terms, io.BytesIO(f"{i:08d}".encode() * 512), principal=who,
                    decisions=sharing.decide_share(uk, terms, principal=who),
                )  # fmt: skip
            first = page(uk, partner="us-aisi", after=0, limit=n)
            second = page(uk, partner="us-aisi", after=first["next"], limit=n)
            pages = [json.loads(json.dumps(p))["items"] for p in (first, second)]  # as sent
            with us.db.session() as session:
                partner = session.get(Partner, "uk-aisi")
            if partner is None:
                raise SystemExit("the receiver does not pin the sender")
            client, partials = PartnerClient(us), partial_payloads(us)

            def take(items: list[Any]) -> int:
                with decision_scope():
                    return len(take_page(us, client, partner, items, partials))

            start = time.process_time()
            if take(pages[0]) != n:
                raise SystemExit("the receiver did not store the whole page")
            cpu = (time.process_time() - start) / n
            profiler = cProfile.Profile(time.process_time)  # CPU, not time spent waiting
            start = time.process_time()
            profiler.runcall(take, pages[1])
            profiled = (time.process_time() - start) / n
        finally:
            uk.db.dispose()
            us.db.dispose()
    stats = pstats.Stats(profiler).stats  # type: ignore[attr-defined]

    def inclusive(*functions: tuple[str, str]) -> float:
        return float(
            sum(
                ct
                for (file, _line, name), (_cc, _nc, _tt, ct, _callers) in stats.items()
                if any(file.endswith(suffix) and name == wanted for suffix, wanted in functions)
            )
        )

    steps = [[label, round(1000 * inclusive(*fs) / n, 3)] for label, fs in RECEIVE_STEPS]
    return {
        "artifacts": n,
        "post_quantum": not classic_only,
        "cpu_ms_per_artifact": round(1000 * cpu, 3),
        "profiled_cpu_ms_per_artifact": round(1000 * profiled, 3),
        "artifacts_per_second_one_core": round(1 / cpu),
        "steps_ms_per_artifact": steps,
    }


def profile_verify(n: int) -> dict[str, Any]:
    from bench.audit import _fill_log
    from crypto import merkle
    from service.audit.entries import encode_row, fetch_entry_rows
    from service.audit.hashing import LEAF_SQL, sqlite_quotes_like_python

    with tempfile.TemporaryDirectory(prefix="entente-profile-") as tmp:
        db, _seed, _built = _fill_log(Path(tmp), n, None)
        try:
            start = time.process_time()
            rows: list[tuple[Any, ...]] = []
            while len(rows) < n:
                rows += fetch_entry_rows(db.engine, seq_from=len(rows), limit=50_000)
            read = time.process_time() - start
            start = time.process_time()
            leaves = [encode_row(row) for row in rows]
            encode = time.process_time() - start
            del rows
            raw = db.engine.raw_connection()
            try:
                start = time.process_time()
                built_rows: list[Any] = []
                while len(built_rows) < n:
                    built_rows += (
                        raw.cursor().execute(LEAF_SQL, (len(built_rows), n, 50_000)).fetchall()
                    )
                built = time.process_time() - start
            finally:
                raw.close()
            if [row[2] for row in built_rows] != leaves:
                raise SystemExit("SQLite built leaves other than the specification's")
            del built_rows
            start = time.process_time()
            sha256 = hashlib.sha256
            hashes = [sha256(b"\x00" + leaf).digest() for leaf in leaves]
            leaf_hash = time.process_time() - start
            del leaves
            start = time.process_time()
            root = merkle.root_from_leaf_hashes(hashes)
            fold = time.process_time() - start
        finally:
            db.dispose()
    steps = {
        "read rows from the database": read,
        "encode each leaf (canonical JSON)": encode,
        "or: read each leaf as SQLite builds it (json_quote), instead of the two above": built,
        "hash each leaf (SHA-256, RFC 6962)": leaf_hash,
        "fold the leaf hashes into the tree root": fold,
    }
    reference = read + encode + leaf_hash + fold
    total = built + leaf_hash + fold if sqlite_quotes_like_python() else reference
    return {
        "entries": n,
        "root": root.hex(),
        # a list, not an object: the steps keep their order through sort_keys
        "steps_us_per_entry": [[k, round(1e6 * v / n, 3)] for k, v in steps.items()],
        "total_us_per_entry": round(1e6 * total / n, 3),
        "reference_us_per_entry": round(1e6 * reference / n, 3),
        "single_core_entries_per_s": round(n / total),
    }


def markdown(
    share: dict[str, Any] | None,
    verify: dict[str, Any] | None,
    receive: dict[str, Any] | None = None,
) -> str:
    lines: list[str] = []
    if share:
        lines += [
            f"Local share, one server process: {share['shares_per_second']:,.0f} shares/s, "
            f"{share['server_cpu_ms_per_share']} ms of server CPU per share "
            f"({share['samples']:,} py-spy samples holding the GIL).",
            "",
            "| where the CPU goes | share of samples | ms per share |",
            "|---|---|---|",
        ]
        for name, b in sorted(share["buckets"].items(), key=lambda kv: -kv[1]["share"]):
            lines.append(f"| {name} | {100 * b['share']:.1f}% | {b['ms_per_share']:.3f} |")
        lines.append("")
    if verify:
        lines += [
            f"Offline verification, one core, {verify['entries']:,} entries: "
            f"{verify['total_us_per_entry']} µs per entry, "
            f"{verify['single_core_entries_per_s']:,} entries/s (with the specification's "
            f"encoder in Python for every leaf: {verify.get('reference_us_per_entry', '-')} µs).",
            "",
            "| step | µs per entry |",
            "|---|---|",
        ]
        steps = verify["steps_us_per_entry"]
        for name, us in steps.items() if isinstance(steps, dict) else steps:
            lines.append(f"| {name} | {us} |")
        lines.append("")
    if receive:
        kind = "post-quantum" if receive["post_quantum"] else "classic"
        lines += [
            f"Receiving a pulled feed page of {receive['artifacts']:,} artifacts of 4 KiB "
            f"({kind} keys), one process, no HTTP: {receive['cpu_ms_per_artifact']} ms of CPU "
            f"per artifact, {receive['artifacts_per_second_one_core']:,} artifacts/s on one core. "
            f"By step, a second page under cProfile ({receive['profiled_cpu_ms_per_artifact']} "
            "ms per artifact: the profiler's cost lands on every Python call, so the steps made "
            "of Python read larger than they are, the calls into C about right).",
            "",
            "| step (its function's CPU under cProfile, calls included) | ms per artifact |",
            "|---|---|",
        ]
        for name, ms in receive["steps_ms_per_artifact"]:
            label = name.strip() if not name.startswith(" ") else "&nbsp;&nbsp;" + name.strip()
            lines.append(f"| {label} | {ms} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", nargs="*", help="share, verify, receive (default: all three)")
    parser.add_argument("--quick", action="store_true", help="small sizes, only checks it runs")
    parser.add_argument("--shares", type=int, default=None)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--entries", type=int, default=None)
    parser.add_argument("--page", type=int, default=None, help="artifacts per page (receive)")
    parser.add_argument("--results", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument(
        "--classic-only",
        action="store_true",
        help="profile a node without post-quantum keys (printed only: the published profile "
        "is of the default, post-quantum node)",
    )
    args = parser.parse_args(argv)
    known = {"share", "verify", "receive"}
    what = args.what or sorted(known)
    if not set(what) <= known:
        parser.error(f"unknown profile: {', '.join(sorted(set(what) - known))}")
    share = verify = receive = None
    if "share" in what:
        count = args.shares or (100 if args.quick else 3000)
        keep = None if args.quick or args.classic_only else args.results
        share = profile_share(count, args.concurrency, keep, classic_only=args.classic_only)
    if "verify" in what:
        verify = profile_verify(args.entries or (5_000 if args.quick else 1_000_000))
    if "receive" in what:
        count = args.page or (20 if args.quick else 500)
        receive = profile_receive(count, classic_only=args.classic_only)
    text = markdown(share, verify, receive)
    print(text)
    if not args.quick and not args.classic_only:
        args.results.mkdir(parents=True, exist_ok=True)
        (args.results / "profile.md").write_text(text)
    result = {
        "benchmark": "profile",
        "quick": args.quick,
        "share": share,
        "verify": verify,
        "receive": receive,
    }
    if args.json:
        args.json.write_text(json.dumps(result, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
