"""deploy/k8s against the official Kubernetes OpenAPI schemas, and rendered by kustomize.

Schema checks use kubernetes-validate (PyPI), which ships the JSON schemas of each Kubernetes
release and needs no network or cluster. It is an optional development tool: without it these
tests skip and the structural checks in test_kubernetes.py still run. The kustomize check needs
`kubectl` and skips without it.
"""

from __future__ import annotations

import shutil
import subprocess
from typing import Any

import pytest
import yaml

from tests.deploy._files import K8S, K8S_FOLDERS, README, all_k8s_objects, k8s_objects

# The oldest release the manifests claim to support (the preStop `sleep` action needs 1.30; see
# deploy/README.md) and the newest release the installed kubernetes-validate knows.
OLDEST = "1.30"
OBJECTS = all_k8s_objects()
IDS = [f"{p.relative_to(K8S)}:{o['kind']}/{o['metadata']['name']}" for p, o in OBJECTS]


def _validator() -> Any:
    return pytest.importorskip(
        "kubernetes_validate", reason="kubernetes-validate is not installed (optional dev tool)"
    )


def _validate(kv: Any, obj: dict[str, Any]) -> None:
    for version in (OLDEST, kv.latest_version()):
        try:
            kv.validate(obj, version, strict=True)
        except kv.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path)
            pytest.fail(f"{obj['kind']}/{obj['metadata']['name']} at {path}: {exc.message}")


@pytest.mark.parametrize("obj", [o for _p, o in OBJECTS], ids=IDS)
def test_manifest_matches_the_kubernetes_schema(obj: dict[str, Any]) -> None:
    _validate(_validator(), obj)


def _readme_yaml_blocks() -> list[str]:
    blocks, current, inside = [], [], False
    for line in README.read_text().splitlines():
        if not inside and line.strip() == "```yaml":
            inside, current = True, []
        elif inside and line.strip() == "```":
            inside = False
            blocks.append("\n".join(current))
        elif inside:
            current.append(line)
    return blocks


def _readme_objects() -> list[dict[str, Any]]:
    docs = [doc for block in _readme_yaml_blocks() for doc in yaml.safe_load_all(block)]
    assert all(isinstance(doc, dict) and doc.get("kind") for doc in docs)
    return docs


def test_readme_yaml_examples_parse() -> None:
    kinds = sorted(doc["kind"] for doc in _readme_objects())
    assert kinds == ["Ingress", "Kustomization"]


def test_readme_kubernetes_examples_match_the_schema() -> None:
    kv = _validator()
    for doc in _readme_objects():
        if doc["kind"] != "Kustomization":
            _validate(kv, doc)


def _kubectl() -> str:
    path = shutil.which("kubectl")
    if path is None:
        pytest.skip("kubectl is not installed (needed only for this kustomize check)")
    return path


@pytest.mark.parametrize("folder", K8S_FOLDERS, ids=lambda p: str(p.relative_to(K8S.parent)))
def test_kustomize_renders_every_object_into_the_namespace(folder: Any) -> None:
    result = subprocess.run(
        [_kubectl(), "kustomize", str(folder)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    rendered = [d for d in yaml.safe_load_all(result.stdout) if d]
    assert len(rendered) == len(k8s_objects(folder))
    for obj in rendered:
        assert obj["metadata"]["labels"]["app.kubernetes.io/part-of"] == "entente"
        if obj["kind"] != "Namespace":
            assert obj["metadata"]["namespace"] == "entente", obj["metadata"]["name"]
