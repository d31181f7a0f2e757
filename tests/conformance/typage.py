"""typage (npm ``age-encryption``, by age's author) as a test tool, installed once per machine.

:func:`typage` returns a :class:`Typage` that runs a tiny ESM script under Node.js to encrypt,
decrypt and generate hybrid keys. The package is installed, pinned, into a cache outside the
repository (``$ENTENTE_TEST_CACHE`` or ``~/.cache/entente-tests``) the first time, with
``npm install --no-audit --no-fund``. Without ``node``/``npm``, or when the install fails, the
test skips naming what to install; with ``CI`` set it fails (``tests.support.require``).
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tests.support import install_lock, require, require_tool

VERSION = "0.3.1"  # age-encryption on npm; generateHybridIdentity since 0.3
CACHE = Path(os.environ.get("ENTENTE_TEST_CACHE", Path.home() / ".cache" / "entente-tests"))

_SCRIPT = """\
import { readFileSync, writeFileSync } from "node:fs";
import * as age from "age-encryption";

const [mode, ...args] = process.argv.slice(2);
if (mode === "keygen") {
  const identity = await age.generateHybridIdentity();
  const recipient = await age.identityToRecipient(identity);
  process.stdout.write(JSON.stringify({ identity, recipient }));
} else if (mode === "encrypt") {
  const [input, output, ...recipients] = args;
  const e = new age.Encrypter();
  for (const r of recipients) e.addRecipient(r);
  writeFileSync(output, await e.encrypt(readFileSync(input)));
} else if (mode === "decrypt") {
  const [input, output, identity] = args;
  const d = new age.Decrypter();
  d.addIdentity(identity);
  writeFileSync(output, await d.decrypt(readFileSync(input)));
} else {
  throw new Error(`unknown mode ${mode}`);
}
"""


@dataclass(frozen=True)
class Typage:
    node: str
    folder: Path

    def _run(self, *args: str) -> str:
        done = subprocess.run(
            [self.node, str(self.folder / "typage.mjs"), *args],
            cwd=self.folder,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"typage {args[0]} failed: {done.stderr.strip()[-2000:]}")
        return done.stdout

    def keygen(self) -> tuple[str, str]:
        """A hybrid identity made by typage: (AGE-SECRET-KEY-PQ-1…, age1pq1…)."""
        keys = json.loads(self._run("keygen"))
        return str(keys["identity"]), str(keys["recipient"])

    def encrypt(self, source: Path, out: Path, *recipients: str) -> None:
        self._run("encrypt", str(source), str(out), *recipients)

    def decrypt(self, source: Path, out: Path, identity: str) -> None:
        self._run("decrypt", str(source), str(out), identity)


def typage() -> Typage:
    """typage, installed on first use; skips (or in CI fails) when it cannot be."""
    node = require_tool("node", "nodejs")
    npm = require_tool("npm", "npm")
    folder = CACHE / f"typage-{VERSION}"
    installed = folder / "node_modules" / "age-encryption" / "package.json"
    script = folder / "typage.mjs"
    with install_lock(folder):  # another test process may be installing it or writing the script
        if not installed.exists() or json.loads(installed.read_text()).get("version") != VERSION:
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "package.json").write_text('{"private": true, "type": "module"}\n')
            done = subprocess.run(
                [npm, "install", "--no-audit", "--no-fund", f"age-encryption@{VERSION}"],
                cwd=folder,
                capture_output=True,
                text=True,
                timeout=600,
                check=False,
            )
            require(
                done.returncode == 0,
                f"the npm package age-encryption@{VERSION}",
                f"npm install failed in {folder}: {done.stderr.strip()[-500:]}",
            )
        if not script.exists() or script.read_text() != _SCRIPT:
            # never rewritten in place while another process's node may be reading it
            partial = folder / f"typage.mjs.{os.getpid()}"
            partial.write_text(_SCRIPT)
            partial.replace(script)
    return Typage(node, folder)
