"""deploy/compose.replicas.yaml and deploy/k8s-s3: a node as several replicas on one PostgreSQL
and one S3 object store (SeaweedFS), behind a load balancer."""

from __future__ import annotations

import re
import shutil
import subprocess
from typing import Any

import pytest
import yaml

from service.settings import Settings
from tests.deploy._files import (
    COMPOSE_REPLICAS,
    DEPLOY,
    K8S_S3,
    NODE_SETTINGS,
    NODE_UID,
    effective_security,
    env_assignments,
    load_yaml,
    manifest_files,
    pod_spec,
    walk_strings,
)

SPEC: dict[str, Any] = load_yaml(COMPOSE_REPLICAS)
SERVICES: dict[str, dict[str, Any]] = SPEC["services"]
ENV_EXAMPLE = DEPLOY / "compose.replicas.env.example"
SECRET_REF = re.compile(r"\$\{[A-Z][A-Z0-9_]*:\?[^}]+\}")


def test_every_setting_the_deploy_files_may_use_is_one_the_node_reads() -> None:
    fields = {f"ENTENTE_{name.upper()}" for name in Settings.model_fields}
    assert fields >= NODE_SETTINGS, NODE_SETTINGS - fields


def _runs_entente(service: dict[str, Any]) -> bool:
    return str(service.get("image", "")).startswith("${ENTENTE_IMAGE") or "build" in service


def _settings_of(env: dict[str, Any]) -> Settings:
    """The settings a container's environment gives the node (secrets stand in as text)."""
    values = {k.removeprefix("ENTENTE_").lower(): str(v) for k, v in env.items()
              if k.startswith("ENTENTE_")}  # fmt: skip
    return Settings.model_validate(values)


# --------------------------------------------------------------------- compose


def test_compose_runs_several_replicas_behind_a_load_balancer() -> None:
    assert set(SERVICES) == {"db", "seaweedfs", "bucket", "init", "migrate", "node", "uk-aisi"}
    node = SERVICES["node"]
    assert node["command"] == ["serve"]
    assert node["deploy"]["replicas"] >= 2
    assert "ports" not in node, "replicas are reached through the load balancer only"
    lb = SERVICES["uk-aisi"]
    assert all(str(p).startswith("127.0.0.1:") for p in lb["ports"])
    conf = SPEC["configs"]["load-balancer"]["content"]
    assert "server node:8080;" in conf and "proxy_pass http://entente;" in conf
    assert "proxy_request_buffering off;" in conf  # uploads stream through
    body = re.search(r"client_max_body_size (\d+)m;", conf)
    limit = int(node["environment"]["ENTENTE_MAX_ARTIFACT_BYTES"])
    assert body is not None and int(body.group(1)) << 20 > limit
    assert "non_idempotent" not in conf, "the balancer never repeats a share; clients retry"
    assert SERVICES["init"]["environment"]["NODE_URL"] == "http://uk-aisi:8080"


def test_compose_replicas_share_one_database_one_object_store_and_a_read_only_home() -> None:
    node = SERVICES["node"]
    settings = _settings_of(node["environment"])
    assert settings.blob_location() == ("entente", "uk-aisi")
    assert settings.s3_endpoint_url == "http://seaweedfs:8333"
    assert settings.s3_addressing_style == "path"
    assert "-s3.port=8333" in SERVICES["seaweedfs"]["command"]
    assert "--bucket entente" in SERVICES["bucket"]["command"][0]
    assert str(settings.database_url).startswith("postgresql+psycopg://") and "@db:5432/" in str(
        settings.database_url
    )
    assert "ENTENTE_BLOB_DIR" not in node["environment"]
    assert node["volumes"] == ["home:/var/lib/entente:ro"]
    assert node["depends_on"] == {
        "migrate": {"condition": "service_completed_successfully"},
        "bucket": {"condition": "service_completed_successfully"},
        "db": {"condition": "service_healthy"},
        "seaweedfs": {"condition": "service_healthy"},
    }
    # The schema is migrated once, by one step, before any replica starts.
    assert SERVICES["migrate"]["command"] == ["db", "upgrade"]
    assert SERVICES["migrate"]["depends_on"] == {
        "init": {"condition": "service_completed_successfully"}
    }


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_compose_every_service_has_a_healthcheck_or_is_awaited(name: str) -> None:
    service = SERVICES[name]
    check = service["healthcheck"]
    if service.get("restart") == "no":
        assert check == {"disable": True}
        assert any(
            s.get("depends_on", {}).get(name, {}).get("condition")
            == "service_completed_successfully"
            for s in SERVICES.values()
        ), f"nothing waits for {name}"
    else:
        assert check["test"][0] in ("CMD", "CMD-SHELL")
        assert check["interval"] and check["timeout"] and check["retries"]


@pytest.mark.parametrize("name", sorted(n for n, s in SERVICES.items() if _runs_entente(s)))
def test_compose_entente_containers_are_locked_down(name: str) -> None:
    service = SERVICES[name]
    assert service["read_only"] is True
    assert str(service["user"]).split(":") == [str(NODE_UID), str(NODE_UID)]
    assert service["cap_drop"] == ["ALL"]
    assert "no-new-privileges:true" in service["security_opt"]
    used = {k for k in service["environment"] if k.startswith("ENTENTE_")}
    assert used <= NODE_SETTINGS, used - NODE_SETTINGS


def test_compose_secrets_come_from_the_env_file_and_fail_when_unset() -> None:
    for name, service in SERVICES.items():
        for key, value in service.get("environment", {}).items():
            if re.search(r"PASSPHRASE|PASSWORD|SECRET|ACCESS_KEY", key):
                assert SECRET_REF.fullmatch(str(value)), f"{name}.{key}"
    identities = SPEC["configs"]["s3-identities"]["content"]
    assert len(SECRET_REF.findall(identities)) == 2  # the gateway's key pair, the node's own
    example = env_assignments(ENV_EXAMPLE.read_text())
    referenced = set(re.findall(r"\$\{([A-Z][A-Z0-9_]*):\?", COMPOSE_REPLICAS.read_text()))
    assert referenced and referenced <= set(example), referenced - set(example)
    assert all("CHANGE-ME" in example[key] for key in referenced)
    assert ".env.replicas" in (DEPLOY / ".gitignore").read_text().split()


def test_compose_has_no_unescaped_dollar() -> None:
    for text in walk_strings(SPEC):
        stripped = text.replace("$$", "")
        assert not re.search(r"\$(?!\{)", stripped), text


# --------------------------------------------------------------------- Kubernetes


def _rendered() -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed (needed to render deploy/k8s-s3 with kustomize)")
    result = subprocess.run(
        [kubectl, "kustomize", str(K8S_S3)], capture_output=True, text=True, timeout=120,
        check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(scope="module")
def rendered() -> list[dict[str, Any]]:
    return _rendered()


def _named(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    [found] = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    return found


def test_k8s_kustomization_lists_exactly_its_files() -> None:
    kustomization = load_yaml(K8S_S3 / "kustomization.yaml")
    listed = [r for r in kustomization["resources"] if r != "../k8s"]
    patches = [p["path"] for p in kustomization["patches"]]
    assert sorted(listed + patches) == sorted(p.name for p in manifest_files(K8S_S3))


def test_k8s_replicas_use_the_object_store_and_no_blob_volume(
    rendered: list[dict[str, Any]],
) -> None:
    config = _named(rendered, "ConfigMap", "entente-config")["data"]
    assert "ENTENTE_BLOB_DIR" not in config
    assert set(config) | {"ENTENTE_PASSPHRASE", "ENTENTE_DATABASE_URL"} <= NODE_SETTINGS
    settings = _settings_of(config)
    assert settings.blob_location() == ("entente", "node")
    assert settings.s3_endpoint_url == "http://seaweedfs:8333"
    assert not [o for o in rendered if o["kind"] == "PersistentVolumeClaim"
                and o["metadata"]["name"] == "entente-blobs"]  # fmt: skip
    deployment = _named(rendered, "Deployment", "entente")
    assert deployment["spec"]["replicas"] >= 2
    spec = deployment["spec"]["template"]["spec"]
    assert "blobs" not in {v["name"] for v in spec["volumes"]}
    [container] = spec["containers"]
    assert all("blobs" not in m["mountPath"] for m in container["volumeMounts"])
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"]}
    secret = _named(rendered, "Secret", "entente-s3")["stringData"]
    for name in ("ENTENTE_S3_ACCESS_KEY_ID", "ENTENTE_S3_SECRET_ACCESS_KEY"):
        assert refs[name] == {"name": "entente-s3", "key": name}
        assert secret[name].startswith("CHANGE-ME")
        assert secret[name] in secret["s3.json"]  # the gateway knows the node's key pair


def test_k8s_object_store_is_reachable_from_the_node_only_on_its_s3_port(
    rendered: list[dict[str, Any]],
) -> None:
    store = _named(rendered, "StatefulSet", "seaweedfs")
    [container] = store["spec"]["template"]["spec"]["containers"]
    assert "-s3.port=8333" in container["args"]
    assert {"name": "s3", "containerPort": 8333, "protocol": "TCP"} in container["ports"]
    service = _named(rendered, "Service", "seaweedfs")
    assert service["spec"]["ports"][0]["port"] == 8333
    labels = store["spec"]["template"]["metadata"]["labels"]
    assert all(labels.get(k) == v for k, v in service["spec"]["selector"].items())
    egress = _named(rendered, "NetworkPolicy", "entente")["spec"]["egress"]
    assert any(p["port"] == 8333 for rule in egress for p in rule["ports"])
    ingress = _named(rendered, "NetworkPolicy", "seaweedfs")["spec"]["ingress"]
    assert [p["port"] for rule in ingress for p in rule["ports"]] == [8333]


def test_k8s_every_workload_is_locked_down(rendered: list[dict[str, Any]]) -> None:
    for obj in rendered:
        pod = pod_spec(obj)
        if pod is None:
            continue
        assert pod["automountServiceAccountToken"] is False, obj["metadata"]["name"]
        assert pod["enableServiceLinks"] is False
        for container in pod["containers"]:
            security = effective_security(pod, container)
            assert security["runAsNonRoot"] is True
            assert security["readOnlyRootFilesystem"] is True
            assert security["allowPrivilegeEscalation"] is False
            assert security["capabilities"] == {"drop": ["ALL"]}
            assert security["seccompProfile"] == {"type": "RuntimeDefault"}
            assert container["resources"]["limits"]


def test_k8s_rendered_objects_match_the_kubernetes_schema(
    rendered: list[dict[str, Any]],
) -> None:
    kv = pytest.importorskip(
        "kubernetes_validate", reason="kubernetes-validate is not installed (optional dev tool)"
    )
    for obj in rendered:
        assert obj["metadata"]["labels"]["app.kubernetes.io/part-of"] == "entente"
        if obj["kind"] != "Namespace":
            assert obj["metadata"]["namespace"] == "entente"
        for version in ("1.30", kv.latest_version()):
            kv.validate(obj, version, strict=True)
