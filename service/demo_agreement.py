"""The demo's agreement step: two officers sign the MOU as it stands and countersign an amendment.

Each officer gets a key vouched for by its node (``entente agreement officer-key`` and
``certify``); both sign v1 (the terms as they stand); the UK officer signs v2 (the UK may share
TLP:AMBER information too), which is shown awaiting the US officer; once countersigned both nodes
adopt v1 and v2 through the CLI and a policy reload, and compare over the federation API.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

import httpx

from service.cli._terminal import TerminalConsole
from service.errors import DemoError
from service.localnet import NodeProcess, clean_env, run_cli

__all__ = ["countersign_amendment"]


class Story(Protocol):
    """What the step needs of the demo (``service.demo.Demo``)."""

    root: Path
    console: TerminalConsole
    http: httpx.Client

    def say(self, text: str) -> None: ...


# The amendment's change: the UK's share-information rule widened to TLP:AMBER.
INFORMATION_TLP = (
    "    tlp: [TLP:CLEAR, TLP:GREEN]\n    topics: [evaluation, safety-research, policy]"
)


def _cli(node: NodeProcess | None, *args: str) -> str:
    result = run_cli(*args, env=clean_env()) if node is None else node.cli(*args)
    if result.returncode != 0:
        raise DemoError(f"entente {args[0]} {args[1]} failed: {result.stderr.strip()[-500:]}")
    return result.stdout


def countersign_amendment(demo: Story, us: NodeProcess, uk: NodeProcess) -> bool:
    """Each officer gets a key vouched for by its node; both sign the MOU as it stands
    (v1), then an amendment (v2: the UK may share TLP:AMBER information too), which each
    node adopts only once both have signed; finally the nodes compare over federation."""
    folder = demo.root / "agreement"
    folder.mkdir(exist_ok=True)
    officers = {}
    for node, who in ((us, "B. Example"), (uk, "A. Example")):
        key = folder / f"{node.node_id}-officer.key"
        _cli(None, "agreement", "officer-key", "--out", str(key), "--no-passphrase")
        cert = folder / f"{node.node_id}-officer.cert.json"
        _cli(node, "agreement", "certify", "--officer", f"{key}.pub.json", "--name",
                  who, "--role", "Policy officer [example]", "-o", str(cert))  # fmt: skip
        officers[node.node_id] = (key, cert)
    us_terms = us.home / "policies" / "uk-aisi.yaml"
    uk_terms = uk.home / "policies" / "us-aisi.yaml"
    v1, v2 = folder / "us-uk-mou.v1.agreement.json", folder / "us-uk-mou.v2.agreement.json"
    _cli(None, "agreement", "draft", "--id", "us-uk-mou", "--title",
              "US-UK AI Safety Institutes MOU [example]", "--from", "2024-04-01T00:00:00Z",
              "--terms", f"us-aisi:uk-aisi={us_terms}",
              "--terms", f"uk-aisi:us-aisi={uk_terms}", "-o", str(v1))  # fmt: skip
    amended = folder / "uk-aisi-us-aisi.v2.yaml"
    amended.write_text(
        uk_terms.read_text()
        .replace("version: 1", "version: 2", 1)
        .replace(INFORMATION_TLP, INFORMATION_TLP.replace("GREEN]", "GREEN, TLP:AMBER]"), 1)
    )
    _cli(None, "agreement", "draft", "--amends", str(v1), "--from",
              datetime.now(UTC).isoformat().replace("+00:00", "Z"),
              "--terms", f"us-aisi:uk-aisi={us_terms}",
              "--terms", f"uk-aisi:us-aisi={amended}", "-o", str(v2))  # fmt: skip
    for doc in (v1, v2):
        for node_id, (key, cert) in officers.items():
            if doc == v2 and node_id == "us-aisi":
                continue  # the US officer countersigns last, below
            _cli(None, "agreement", "sign", str(doc), "--key", str(key),
                      "--certificate", str(cert))  # fmt: skip
    shown = json.loads(_cli(us, "agreement", "show", str(v2), "--json"))
    demo.say(
        f"v2 signed by {', '.join(shown['signed_by'])}; awaiting "
        f"{', '.join(shown['awaiting'])}: not enforced anywhere until countersigned"
    )
    demo.console.print(_cli(None, "agreement", "diff", str(v1), str(v2)).rstrip())
    key, cert = officers["us-aisi"]
    _cli(None, "agreement", "sign", str(v2), "--key", str(key), "--certificate", str(cert))
    for node, local in ((us, us_terms), (uk, uk_terms)):
        local.unlink()  # the unsigned local terms give way to the signed agreement
        _cli(node, "agreement", "adopt", str(v1))
        _cli(node, "agreement", "adopt", str(v2))
        r = demo.http.post(f"{node.url}/v1/admin/policies/reload", headers=node.auth("admin"))
        if r.status_code != 200:
            raise DemoError(f"{node.node_id} did not adopt the agreement: {r.text[:300]}")
    compared = demo.http.get(
        f"{us.url}/v1/admin/agreements/compare/uk-aisi", headers=us.auth("admin")
    ).json()
    for row in compared["agreements"]:
        demo.say(
            f"us-uk-mou v{row['version']}: {row['here']} at us-aisi, {row['there']} at "
            f"uk-aisi (sha256 {str(row['sha256_here'])[:16]}…)"
        )
    demo.say(
        "Both nodes decide on terms both officers signed; each adoption is a "
        "policy.set_changed entry in its audit log"
    )
    return bool(compared["same"])
