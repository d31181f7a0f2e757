"""Readers for the files in ``deploy/``: YAML manifests, Dockerfile, .dockerignore, systemd units.

Small, strict parsers written for these tests (no Docker, Kubernetes or systemd needed). They
understand exactly the syntax the deploy files use and raise on anything else, so a test never
passes because a parser silently skipped a line.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
K8S_FOLDERS = (K8S, K8S / "admin")
COMPOSE = DEPLOY / "compose.yaml"
COMPOSE_REPLICAS = DEPLOY / "compose.replicas.yaml"
K8S_S3 = DEPLOY / "k8s-s3"
DOCKERFILE = DEPLOY / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
UNIT = DEPLOY / "systemd" / "entente.service"
UNIT_ENV = DEPLOY / "systemd" / "entente.env.example"
README = DEPLOY / "README.md"

NODE_UID = 10001
# The settings the node reads (DESIGN.md section 6 and the brief of issue #8). The deploy files
# may set no other ENTENTE_ variable: a typo there would be silently ignored by pydantic-settings.
NODE_SETTINGS = frozenset(
    {
        "ENTENTE_HOME",
        "ENTENTE_DATABASE_URL",
        "ENTENTE_PASSPHRASE",
        "ENTENTE_MAX_ARTIFACT_BYTES",
        "ENTENTE_BLOB_DIR",
        "ENTENTE_LOG_LEVEL",
        "ENTENTE_HOST",
        "ENTENTE_PORT",
        # The S3 blob store (docs/object-store.md): compose.replicas.yaml, k8s-s3/
        "ENTENTE_BLOB_URL",
        "ENTENTE_S3_ENDPOINT_URL",
        "ENTENTE_S3_REGION",
        "ENTENTE_S3_ADDRESSING_STYLE",
        "ENTENTE_S3_ACCESS_KEY_ID",
        "ENTENTE_S3_SECRET_ACCESS_KEY",
    }
)


# ---------------------------------------------------------------- YAML


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def manifest_files(folder: Path) -> list[Path]:
    """The Kubernetes manifests in ``folder`` itself (not below it), kustomization excluded."""
    return sorted(
        p for p in folder.glob("*.y*ml") if p.is_file() and p.name != "kustomization.yaml"
    )


def k8s_objects(folder: Path) -> list[tuple[Path, dict[str, Any]]]:
    """Every non-empty document of every manifest in ``folder``, with the file it came from."""
    found: list[tuple[Path, dict[str, Any]]] = []
    for path in manifest_files(folder):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is None:
                continue
            if not isinstance(doc, dict):
                raise TypeError(f"{path}: a document is not a mapping")
            found.append((path, doc))
    return found


def all_k8s_objects() -> list[tuple[Path, dict[str, Any]]]:
    return [item for folder in K8S_FOLDERS for item in k8s_objects(folder)]


def pod_spec(obj: dict[str, Any]) -> dict[str, Any] | None:
    """The pod spec of a workload (Deployment, Job, Pod), or None for other kinds."""
    kind = obj["kind"]
    if kind == "Pod":
        return dict(obj["spec"])
    if kind in ("Deployment", "StatefulSet", "DaemonSet", "Job", "ReplicaSet"):
        return dict(obj["spec"]["template"]["spec"])
    if kind == "CronJob":
        return dict(obj["spec"]["jobTemplate"]["spec"]["template"]["spec"])
    return None


def pod_labels(obj: dict[str, Any]) -> dict[str, str]:
    if obj["kind"] == "Pod":
        return dict(obj["metadata"].get("labels", {}))
    return dict(obj["spec"]["template"]["metadata"].get("labels", {}))


def workloads() -> list[tuple[str, dict[str, Any]]]:
    """(id, object) for every object with a pod spec, in every k8s folder."""
    return [
        (f"{path.relative_to(K8S)}:{obj['kind']}/{obj['metadata']['name']}", obj)
        for path, obj in all_k8s_objects()
        if pod_spec(obj) is not None
    ]


def selector_matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    """A non-empty equality selector matches when every pair is in ``labels``."""
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def effective_security(pod: dict[str, Any], container: dict[str, Any]) -> dict[str, Any]:
    """The container's securityContext with the pod-level fields it inherits filled in."""
    merged = {
        k: v
        for k, v in pod.get("securityContext", {}).items()
        if k in ("runAsNonRoot", "runAsUser", "runAsGroup", "seccompProfile")
    }
    merged.update(container.get("securityContext", {}))
    return merged


# ---------------------------------------------------------------- Dockerfile


@dataclass(frozen=True)
class Instruction:
    keyword: str  # upper case
    args: str  # raw argument text, continuation lines joined
    stage: int  # index of the FROM stage it belongs to (-1 before the first FROM)

    def exec_form(self) -> list[str] | None:
        """The JSON array of an exec-form instruction, or None for the shell form."""
        text = self.args
        for flag in re.findall(r"^(?:--\S+\s+)+", text):
            text = text[len(flag) :]
        if text.startswith("CMD "):  # HEALTHCHECK [OPTIONS] CMD ...
            text = text[4:].lstrip()
        if not text.startswith("["):
            return None
        value = json.loads(text)
        if not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
            raise ValueError(f"{self.keyword}: exec form must be a list of strings")
        return value


def parse_dockerfile(text: str) -> list[Instruction]:
    """Instructions in order; comments and blank lines dropped, ``\\`` continuations joined."""
    instructions: list[Instruction] = []
    stage = -1
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue  # comment lines inside a continuation are ignored by Docker too
        if line.endswith("\\"):
            pending += line[:-1].strip() + " "
            continue
        full = (pending + line).strip()
        pending = ""
        keyword, _, args = full.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            stage += 1
        instructions.append(Instruction(keyword, args.strip(), stage))
    if pending:
        raise ValueError("Dockerfile ends inside a line continuation")
    return instructions


# ---------------------------------------------------------------- .dockerignore


def dockerignore_patterns(text: str) -> list[tuple[bool, str]]:
    """(exclude?, pattern) in file order, as Docker reads them."""
    patterns = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        exclude = not line.startswith("!")
        pattern = line.lstrip("!").strip().strip("/")
        patterns.append((exclude, pattern))
    return patterns


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """Docker's pattern syntax: ``*`` and ``?`` stay within one folder, ``**`` spans folders."""
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out))


def _matches(pattern: str, path: str) -> bool:
    """A pattern matches a path when it matches the path or one of its parent folders."""
    regex = _pattern_regex(pattern)
    parts = path.split("/")
    return any(regex.fullmatch("/".join(parts[: i + 1])) for i in range(len(parts)))


def ignored(patterns: list[tuple[bool, str]], path: str) -> bool:
    """Whether Docker leaves ``path`` (relative to the context) out: the last match wins."""
    result = False
    for exclude, pattern in patterns:
        if _matches(pattern, path):
            result = exclude
    return result


# ---------------------------------------------------------------- systemd


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """Sections -> key -> every value in order (systemd allows repeated keys)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line[0] in "#;"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        if current is None or "=" not in line:
            raise ValueError(f"unit line outside a section or without '=': {line!r}")
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def env_assignments(text: str) -> dict[str, str]:
    """KEY=VALUE lines of an environment file (comments and blank lines skipped)."""
    found = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep or not re.fullmatch(r"[A-Z_][A-Z0-9_]*", key):
            raise ValueError(f"not a KEY=VALUE line: {line!r}")
        found[key] = value
    return found


def walk_strings(node: Any) -> Iterator[str]:
    """Every string value (and mapping key) anywhere in a parsed YAML tree."""
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for key, value in node.items():
            yield from walk_strings(key)
            yield from walk_strings(value)
    elif isinstance(node, list):
        for item in node:
            yield from walk_strings(item)
