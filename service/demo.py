"""``entente demo``: three institute nodes on loopback, the whole story in one command.

The US, UK and Canadian AI safety institutes each get a node (SQLite home in a temporary
folder, keys unencrypted because it is a demo) pinned to the other two, with the example MOU
policies: US-UK bilateral terms, Canada under the summit declaration only. Then, step by step:
the UK shares a finding with the US; a share of it to Canada is denied with the MOU clause; the
US reader opens it and the UK receives the access notice; the UK revokes a second artifact and
the US acknowledges; finally every node's audit log is verified, with its partners'
cosignatures. ``--keep`` leaves the nodes running for the console; ``--json`` ends with a
machine-readable line.

The nodes never outlive the demo: SIGTERM, SIGHUP and SIGINT stop them cleanly (the demo's
``finally`` runs), and each node asks the kernel for SIGTERM when the demo process dies in any
other way, SIGKILL included (Linux ``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from rich.markup import escape
from rich.panel import Panel

from crypto.keys import format_fingerprint
from service.cli._terminal import SafeTable, TerminalConsole
from service.demo_agreement import countersign_amendment
from service.errors import DemoError, EntenteError
from service.localnet import Federation, NodeProcess, clean_env, prepare_nodes, run_cli

__all__ = ["run_demo"]

NODES = {
    "us-aisi": "US AI Safety Institute",
    "uk-aisi": "UK AI Safety Institute",
    "ca-aisi": "Canadian AI Safety Institute",
}
FINDING = (
    b"Joint pre-deployment evaluation of Model X\n"
    b"==========================================\n"
    b"Cyber-offense uplift: moderate on CTF-style tasks, low on novel exploitation.\n"
    b"Biosecurity: refusals held under 312 of 320 adversarial prompts.\n"
    b"Recommendation: re-test after the next fine-tuning round.\n"
)


EXPIRES_IN_SECONDS = 6  # the expiry step's artifact: long enough to be delivered first


class _Stopped(Exception):
    """The demo was asked to stop by a signal."""


def _stop_on_signal(signum: int, _frame: object) -> None:
    raise _Stopped(signum)


def _upload(meta: dict[str, Any], content: bytes) -> tuple[bytes, dict[str, str]]:
    boundary = "entente-demo-" + hashlib.sha256(content).hexdigest()[:16]
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="metadata"\r\n'
        f"Content-Type: application/json\r\n\r\n".encode()
        + json.dumps(meta).encode()
        + f'\r\n--{boundary}\r\nContent-Disposition: form-data; name="file"; '
        f'filename="finding.md"\r\n\r\n'.encode()
        + content
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def _protection(art: dict[str, Any]) -> str:
    """One line: how a share is protected against today's and a future quantum adversary."""
    if art.get("sealing") == "post-quantum":
        return (
            "protection [green]post-quantum[/] (sealed to hybrid ML-KEM-768 + X25519 recipients "
            "only; manifest signed with Ed25519 and ML-DSA-65)"
        )
    return (
        "protection [yellow]classic[/] (sealed to X25519 recipients, as a party has no "
        "post-quantum key yet; manifest signed with Ed25519)"
    )


class Demo:
    def __init__(self, console: TerminalConsole, *, keep: bool, root: Path | None = None) -> None:
        self.console = console
        self.keep = keep
        self.root = root or Path(tempfile.mkdtemp(prefix="entente-demo-"))
        self.federation = Federation({})  # none yet
        self.http = httpx.Client(timeout=30.0)
        self.step_no = 0
        self.outcome: dict[str, Any] = {}

    # --- output ---------------------------------------------------------------------------------
    def step(self, title: str) -> None:
        self.step_no += 1
        self.console.print()
        self.console.rule(f"[bold]{self.step_no}. {title}", align="left")

    def say(self, text: str) -> None:
        self.console.print(text)

    # --- nodes ----------------------------------------------------------------------------------
    def start(self) -> None:
        self.step("Three institutes start their Entente nodes")
        env = clean_env(
            ENTENTE_LOG_LEVEL="WARNING",
            ENTENTE_SYNC_INTERVAL_SECONDS="0.2",
            ENTENTE_RETRY_BASE_SECONDS="0.2",
            ENTENTE_RETRY_MAX_SECONDS="2",
            ENTENTE_CHECKPOINT_INTERVAL_SECONDS="0.5",
            ENTENTE_RETENTION_INTERVAL_SECONDS="1",  # the expiry step deletes within a second
        )
        with self.console.status("creating three node homes (keys, signed descriptors, MOU terms)"):
            self.federation = prepare_nodes(self.root, NODES, names=NODES, passphrase=None, env=env)
        with self.console.status("starting the three nodes' servers on loopback"):
            self.federation.start()  # the nodes end with the demo, however it ends (PDEATHSIG)
        table = SafeTable("node", "institute", "listening", "fingerprint (Ed25519, SHA-256)")
        for node in self.nodes.values():
            fp = json.loads((node.home / "node.json").read_text())["fingerprint"]
            table.add_row(node.node_id, NODES[node.node_id], node.url, format_fingerprint(fp))
        self.console.print(table)
        self.say(
            "Each node pinned the other two by fingerprint and loaded its MOU policies "
            "(US-UK bilateral terms; Canada under the summit declaration only)."
        )
        self.say("[yellow]Demo keys are stored unencrypted (--insecure-no-passphrase).[/]")

    @property
    def nodes(self) -> dict[str, NodeProcess]:
        return self.federation.nodes

    def stop(self) -> None:
        self.federation.stop()
        self.http.close()

    def cleanup(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)

    def wait(
        self, check: Callable[[], Any], what: str, timeout: float = 30.0, every: float = 0.2
    ) -> Any:
        deadline = time.monotonic() + timeout
        with self.console.status(f"waiting for {what} …"):
            while time.monotonic() < deadline:
                value = check()
                if value:
                    return value
                time.sleep(every)
        raise DemoError(f"timed out waiting for {what}")

    # --- the story ------------------------------------------------------------------------------
    def share(self, node: NodeProcess, meta: dict[str, Any], content: bytes) -> httpx.Response:
        body, headers = _upload(meta, content)
        return self.http.post(
            f"{node.url}/v1/artifacts", content=body, headers={**headers, **node.auth("publisher")}
        )

    def audit_kinds(self, node: NodeProcess, kind: str) -> list[dict[str, Any]]:
        r = self.http.get(
            f"{node.url}/audit/v1/entries", params={"kind": kind}, headers=node.auth("auditor")
        )
        if r.status_code != 200:
            return []
        items: list[dict[str, Any]] = r.json().get("entries", [])
        return items

    def run(self) -> None:
        uk, us = self.nodes["uk-aisi"], self.nodes["us-aisi"]
        meta = {
            "title": "Joint pre-deployment evaluation of Model X",
            "tlp": "TLP:AMBER",
            "topics": ["evaluation/red-teaming"],
            "purposes": ["evaluation"],
            "partners": ["us-aisi"],
        }

        self.step("The UK shares an evaluation finding with the US")
        r = self.share(uk, meta, FINDING)
        if r.status_code != 201:
            raise DemoError(f"the share was refused: {r.json().get('detail')}")
        art = r.json()
        decision = art["policy"]["decisions"][0]
        rules = escape(", ".join(f"{x['id']} ({x['clause']})" for x in decision["rules"]))
        self.say(f"[green]ALLOWED[/] by the UK's policy for us-aisi: {rules}")
        self.say(
            f"artifact [bold]{art['id']}[/], {art['tlp']}, {art['size']} bytes, "
            f"sha256 {art['sha256'][:16]}…, encrypted to {' and '.join(art['recipients'])}, "
            "manifest signed by uk-aisi"
        )
        self.say(_protection(art))
        self.outcome["artifact_id"] = art["id"]
        self.outcome["sealing"] = art["sealing"]

        self.step("The UK tries to share the same finding with Canada")
        r = self.share(uk, {**meta, "partners": ["ca-aisi"]}, FINDING)
        problem = r.json()
        if r.status_code != 403:
            raise DemoError(f"expected a denial, got {r.status_code}")
        self.say(f"[red]DENIED[/] (HTTP 403, {problem['type']})")
        self.say(f"  rule   [bold]{escape(str(problem.get('rule')))}[/]")
        self.say(f"  clause [bold]{escape(str(problem.get('clause')))}[/]")
        said = str(problem["detail"])
        why = said.split(" forbids it: ", 1)[1] if " forbids it: " in said else said
        self.say(f"  why    {escape(why)}")
        self.say("Nothing was stored or sent; the denial is in the UK's audit log.")
        self.outcome["denied"] = {"rule": problem.get("rule"), "clause": problem.get("clause")}

        self.step("The UK node delivers the finding to the US node")

        def delivered() -> dict[str, Any] | None:
            d = self.http.get(f"{uk.url}/v1/artifacts/{art['id']}", headers=uk.auth("auditor"))
            rows = d.json().get("deliveries") or []
            return rows[0] if rows and rows[0]["state"] == "delivered" else None

        delivery = self.wait(delivered, "the US node's signed receipt")
        self.say(
            f"delivered after {delivery['attempts']} attempt(s); the US node verified the "
            "signature, the manifest and every ciphertext chunk, applied its own inbound policy, "
            "and returned a signed receipt"
        )

        self.step("A reader at the US institute opens the finding")
        r = self.http.get(f"{us.url}/v1/artifacts/{art['id']}/content", headers=us.auth("reader"))
        if r.status_code != 200:
            raise DemoError(f"the read was refused: {r.json().get('detail')}")
        ok = hashlib.sha256(r.content).hexdigest() == art["sha256"]
        self.console.print(Panel(r.content.decode(), title="plaintext at us-aisi", expand=False))
        self.say(f"sha256 matches the signed manifest: {'[green]yes' if ok else '[red]NO'}[/]")
        self.outcome["read_ok"] = ok

        self.step("The UK is told who read it (the MOU's inform obligation for TLP:AMBER)")
        notices = self.wait(
            lambda: self.audit_kinds(uk, "access_notice.received"), "the access notice", every=0.5
        )
        detail = notices[0].get("detail") or {}
        if isinstance(detail, str):
            detail = json.loads(detail)
        self.say(
            f"uk-aisi audit: access notice from us-aisi: {detail.get('reader')} read "
            f"{notices[0].get('artifact_id')} at {detail.get('read_at')}"
        )
        self.outcome["access_notice"] = True

        self.step("The UK revokes a second artifact; the US deletes it and acknowledges")
        second = self.share(
            uk,
            {**meta, "title": "Draft threat model (superseded)", "tlp": "TLP:GREEN"},
            b"draft threat model, superseded\n",
        ).json()
        self.say(f"artifact [bold]{second['id']}[/], {second['tlp']}, {_protection(second)}")
        self.wait(
            lambda: (
                self.http.get(
                    f"{us.url}/v1/artifacts/{second['id']}", headers=us.auth("reader")
                ).status_code
                == 200
            ),
            "the second artifact at the US node",
        )
        self.http.post(
            f"{uk.url}/v1/artifacts/{second['id']}/revoke",
            params={"reason": "superseded by the joint evaluation"},
            headers=uk.auth("publisher"),
        ).raise_for_status()
        self.wait(
            lambda: self.audit_kinds(uk, "revocation.acknowledged"),
            "the US acknowledgement",
            every=0.5,
        )
        gone = self.http.get(f"{us.url}/v1/artifacts/{second['id']}", headers=us.auth("reader"))
        self.say(
            f"us-aisi deleted {second['id']} (now HTTP {gone.status_code} Gone: "
            f"{gone.json().get('detail', '')}) and sent a signed receipt; both sides audited "
            "the revocation"
        )
        self.outcome["revoked"] = gone.status_code == 410

        self.step("A finding shared to expire is deleted at both nodes when it expires")
        expires = datetime.now(UTC) + timedelta(seconds=EXPIRES_IN_SECONDS)
        third = self.share(
            uk,
            {**meta, "title": "Interim scores (valid for seconds)", "tlp": "TLP:GREEN",
             "expires_at": expires.isoformat().replace("+00:00", "Z")},
            b"interim scores, to be deleted at expiry\n",
        ).json()  # fmt: skip
        self.wait(
            lambda: (
                self.http.get(
                    f"{us.url}/v1/artifacts/{third['id']}", headers=us.auth("reader")
                ).status_code
                == 200
            ),
            "the expiring artifact at the US node",
        )
        self.say(
            f"artifact [bold]{third['id']}[/] reached us-aisi; it expires at "
            f"{expires:%H:%M:%S} UTC, and the MOU's share-evaluation rule obliges delete_at_expiry"
        )

        def deleted(node: NodeProcess) -> dict[str, Any] | None:
            rows = self.audit_kinds(node, "artifact.deleted")
            return next((e for e in rows if e.get("artifact_id") == third["id"]), None)

        at_us = self.wait(lambda: deleted(us), "the deletion at the US node", 60)
        at_uk = self.wait(lambda: deleted(uk), "the deletion at the UK node", 60)
        acked = self.wait(
            lambda: next(
                (e for e in self.audit_kinds(uk, "deletion.acknowledged")
                 if e.get("artifact_id") == third["id"]), None),
            "the US node's signed deletion receipt", 60,
        )  # fmt: skip
        self.say(
            f"us-aisi deleted the ciphertext (rule {escape(str(at_us.get('rule')))}, "
            f"{escape(str(at_us.get('clause')))}) "
            "and sent a signed deletion receipt; uk-aisi deleted its own copy "
            f"(rule {escape(str(at_uk.get('rule')))}); both audit logs record it"
        )
        self.outcome["expired_deleted"] = bool(at_us and at_uk and acked)

        self.step("The US and UK officers sign their terms and countersign an amendment")
        self.outcome["amendment"] = countersign_amendment(self, us, uk)

        self.step("Auditors verify every node's log and its partners' cosignatures")
        verdicts = {}
        for node in self.nodes.values():
            verdicts[node.node_id] = self._verify(node)
        self.outcome["audit"] = verdicts
        if not all(v["ok"] for v in verdicts.values()):
            raise DemoError("an audit log did not verify")

    def _verify(self, node: NodeProcess) -> dict[str, Any]:
        def cosigned() -> dict[str, Any] | None:
            r = self.http.get(f"{node.url}/audit/v1/checkpoint", headers=node.auth("auditor"))
            if r.status_code != 200:
                return None
            lines = [ln for ln in r.text.splitlines() if ln.startswith("— ")]
            return {"signatures": len(lines)} if len(lines) >= 3 else None

        state = self.wait(cosigned, f"{node.node_id}'s checkpoint cosigned by both partners", 60)
        fingerprint = json.loads((node.home / "node.json").read_text())["fingerprint"]
        result = run_cli(
            "audit", "verify", "--url", node.url, "--fingerprint", fingerprint, "--json",
            "--state", str(self.root / f"{node.node_id}.audit-state.json"),
            env={**os.environ, "ENTENTE_TOKEN": node.tokens["auditor"]}, timeout=120,
        )  # fmt: skip
        try:
            verdict = json.loads(result.stdout.strip().splitlines()[-1])
        except (IndexError, ValueError):
            verdict = {"ok": False, "problem": result.stderr.strip()[-300:]}
        ok = result.returncode == 0 and bool(verdict.get("ok"))
        witnessed: dict[str, Any] = verdict.get("cosigned") or {}
        if ok:
            self.say(
                f"{node.node_id}: [green]VERIFIED[/] {verdict['entries']} entries, every leaf "
                f"recomputed; checkpoint at size {verdict['latest']['size']} signed by "
                f"{node.node_id}, cosigned by {', '.join(witnessed.get('witnesses', [])) or 'none'}"
            )
        else:
            self.say(f"{node.node_id}: [red]FAILED[/] {verdict.get('problem')}")
        return {
            "ok": ok,
            "entries": verdict.get("entries"),
            "witnesses": witnessed.get("witnesses", []),
            "signatures": state["signatures"],
            "problem": verdict.get("problem"),
        }

    def summary(self) -> dict[str, Any]:
        return {
            "nodes": [
                {
                    "node_id": n.node_id,
                    "url": n.url,
                    "home": str(n.home),
                    "fingerprint": json.loads((n.home / "node.json").read_text())["fingerprint"],
                    "tokens": n.tokens,
                }
                for n in self.nodes.values()
            ],
            "outcome": self.outcome,
        }


def run_demo(*, keep: bool, as_json: bool) -> int:
    console = TerminalConsole(stderr=as_json, highlight=False)
    demo = Demo(console, keep=keep)
    code = 0
    handlers = {s: signal.signal(s, _stop_on_signal) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        demo.start()
        demo.run()
        console.print()
        console.print("[bold green]Demo complete.[/]")
        if keep:
            console.print()
            for node in demo.nodes.values():
                console.print(
                    f"[bold]{node.node_id}[/] console {node.url}/ui  "
                    f"auditor token {node.tokens['auditor']}"
                )
            console.print(f"homes and logs in {demo.root}")
        if as_json:
            sys.stdout.write(json.dumps(demo.summary()) + "\n")
            sys.stdout.flush()
        if keep:
            console.print("Nodes keep running; press Ctrl-C to stop them.")
            try:
                while True:
                    signal.pause()
            except (KeyboardInterrupt, _Stopped):
                console.print("stopping the nodes")
    except KeyboardInterrupt:
        console.print("interrupted")
        code = 130
    except _Stopped as exc:
        console.print("stopped")
        code = 128 + int(exc.args[0])
    except EntenteError as exc:
        console.print(f"[red]demo failed:[/] {exc.message}")
        console.print(f"node logs are in {demo.root}")
        keep = True  # leave the logs for a look
        code = 1
    finally:
        # A second signal while stopping ends the demo at once; its nodes follow (PDEATHSIG).
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
        demo.stop()
        if not keep or code == 0:
            demo.cleanup()
    return code
