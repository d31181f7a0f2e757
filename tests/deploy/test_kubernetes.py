"""deploy/k8s: structure, security settings and the references between the manifests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.deploy._files import (
    K8S,
    K8S_FOLDERS,
    NODE_SETTINGS,
    NODE_UID,
    all_k8s_objects,
    effective_security,
    k8s_objects,
    load_yaml,
    manifest_files,
    pod_labels,
    pod_spec,
    selector_matches,
    workloads,
)

OBJECTS = all_k8s_objects()
BASE = [obj for _path, obj in k8s_objects(K8S)]
WORKLOADS = workloads()


def _one(kind: str, objects: list[dict[str, Any]] = BASE) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def _by_name(kind: str, name: str) -> dict[str, Any]:
    for _path, obj in OBJECTS:
        if obj["kind"] == kind and obj["metadata"]["name"] == name:
            return obj
    raise AssertionError(f"no {kind} named {name}")


DEPLOYMENT = _one("Deployment")
CONFIG = _one("ConfigMap")["data"]


def _containers(obj: dict[str, Any]) -> list[dict[str, Any]]:
    spec = pod_spec(obj)
    assert spec is not None
    return [*spec.get("initContainers", []), *spec["containers"]]


def test_every_document_is_a_named_kubernetes_object() -> None:
    assert len(OBJECTS) >= 10
    for path, obj in OBJECTS:
        assert obj.get("apiVersion") and obj.get("kind"), path
        assert obj["metadata"].get("name"), path
        assert "namespace" not in obj["metadata"], f"{path}: kustomize sets the namespace"


@pytest.mark.parametrize("folder", K8S_FOLDERS, ids=lambda p: str(p.relative_to(K8S.parent)))
def test_kustomization_lists_exactly_the_manifests_in_its_folder(folder: Path) -> None:
    kustomization = load_yaml(folder / "kustomization.yaml")
    assert kustomization["kind"] == "Kustomization"
    assert kustomization["namespace"] == "entente"
    listed = kustomization["resources"]
    assert len(listed) == len(set(listed)), "a resource is listed twice"
    assert sorted(listed) == sorted(p.name for p in manifest_files(folder))


def test_admin_pod_is_not_part_of_the_node_kustomization() -> None:
    assert "Pod" not in {o["kind"] for o in BASE}
    assert _one("Pod", [o for _p, o in k8s_objects(K8S / "admin")])


@pytest.mark.parametrize("folder", K8S_FOLDERS, ids=lambda p: str(p.relative_to(K8S.parent)))
def test_every_image_is_rewritten_by_the_kustomization(folder: Path) -> None:
    names = {i["name"] for i in load_yaml(folder / "kustomization.yaml")["images"]}
    for _path, obj in k8s_objects(folder):
        if pod_spec(obj) is not None:
            for container in _containers(obj):
                assert container["image"].split(":")[0] in names, container["image"]


def test_deployment_runs_three_replicas_and_rolls_without_losing_capacity() -> None:
    spec = DEPLOYMENT["spec"]
    assert spec["replicas"] == 3
    assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert selector_matches(spec["selector"]["matchLabels"], pod_labels(DEPLOYMENT))


@pytest.mark.parametrize("probe", ["startupProbe", "readinessProbe", "livenessProbe"])
def test_deployment_probes_healthz_on_the_http_port(probe: str) -> None:
    (container,) = DEPLOYMENT["spec"]["template"]["spec"]["containers"]
    check = container[probe]["httpGet"]
    assert check["path"] == "/healthz"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert check["port"] in ports or check["port"] in ports.values()
    assert ports.get(check["port"], check["port"]) == int(CONFIG["ENTENTE_PORT"])


def test_deployment_survives_slow_migrations_and_shuts_down_gracefully() -> None:
    (container,) = DEPLOYMENT["spec"]["template"]["spec"]["containers"]
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 120
    assert container["args"] == ["serve"]
    grace = DEPLOYMENT["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace > container["lifecycle"]["preStop"]["sleep"]["seconds"]


@pytest.mark.parametrize(("ident", "obj"), WORKLOADS, ids=[w[0] for w in WORKLOADS])
def test_every_container_has_requests_and_limits(ident: str, obj: dict[str, Any]) -> None:
    for container in _containers(obj):
        resources = container["resources"]
        for bound in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(resources[bound]), (ident, container["name"], bound)


@pytest.mark.parametrize(("ident", "obj"), WORKLOADS, ids=[w[0] for w in WORKLOADS])
def test_every_container_is_restricted(ident: str, obj: dict[str, Any]) -> None:
    spec = pod_spec(obj)
    assert spec is not None
    for container in _containers(obj):
        sec = effective_security(spec, container)
        where = (ident, container["name"])
        assert sec["runAsNonRoot"] is True, where
        assert isinstance(sec["runAsUser"], int) and sec["runAsUser"] == NODE_UID, where
        assert sec["readOnlyRootFilesystem"] is True, where
        assert sec["allowPrivilegeEscalation"] is False, where
        assert sec.get("privileged", False) is False, where
        assert sec["capabilities"]["drop"] == ["ALL"] and not sec["capabilities"].get("add")
        assert sec["seccompProfile"]["type"] == "RuntimeDefault", where


@pytest.mark.parametrize(("ident", "obj"), WORKLOADS, ids=[w[0] for w in WORKLOADS])
def test_pods_get_no_api_token_and_no_service_links(ident: str, obj: dict[str, Any]) -> None:
    spec = pod_spec(obj)
    assert spec is not None
    assert spec["automountServiceAccountToken"] is False, ident
    # The Service "entente" would otherwise inject ENTENTE_PORT=tcp://...:80 into every pod,
    # which the node reads as its own port setting.
    assert spec["enableServiceLinks"] is False, ident
    assert spec["serviceAccountName"] == _by_name("ServiceAccount", "entente")["metadata"]["name"]


@pytest.mark.parametrize(("ident", "obj"), WORKLOADS, ids=[w[0] for w in WORKLOADS])
def test_writable_paths_are_volumes_and_tmp_is_an_empty_dir(
    ident: str, obj: dict[str, Any]
) -> None:
    spec = pod_spec(obj)
    assert spec is not None
    volumes = {v["name"]: v for v in spec["volumes"]}
    for container in _containers(obj):
        mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
        assert "emptyDir" in volumes[mounts["/tmp"]["name"]], ident
        for mount in mounts.values():
            assert set(volumes[mount["name"]]) & {"emptyDir", "persistentVolumeClaim"}, ident


def _mount_of(obj: dict[str, Any], path: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(volumeMount, volume) of the mount that contains ``path`` in the first container."""
    spec = pod_spec(obj)
    assert spec is not None
    container = spec["containers"][0]
    for mount in container["volumeMounts"]:
        root = mount["mountPath"].rstrip("/")
        if path == root or path.startswith(root + "/"):
            volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
            return mount, volume
    raise AssertionError(f"{path} is on no volume")


def test_serving_pods_mount_the_home_read_only_and_the_blobs_shared() -> None:
    home_mount, home_volume = _mount_of(DEPLOYMENT, CONFIG["ENTENTE_HOME"])
    assert home_mount["readOnly"] is True
    assert home_volume["persistentVolumeClaim"]["readOnly"] is True
    blob_mount, blob_volume = _mount_of(DEPLOYMENT, CONFIG["ENTENTE_BLOB_DIR"])
    assert not blob_mount.get("readOnly", False)
    claim = _by_name("PersistentVolumeClaim", blob_volume["persistentVolumeClaim"]["claimName"])
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"], "every replica writes blobs"
    home_claim = _by_name(
        "PersistentVolumeClaim", home_volume["persistentVolumeClaim"]["claimName"]
    )
    assert "ReadWriteMany" in home_claim["spec"]["accessModes"], "3 replicas mount the home"


def test_init_job_can_create_the_home_beside_its_mount_point() -> None:
    job = _by_name("Job", "entente-init")
    mount, _volume = _mount_of(job, CONFIG["ENTENTE_HOME"])
    # `entente init` refuses an existing path and stages in the home's parent folder.
    assert CONFIG["ENTENTE_HOME"] != mount["mountPath"].rstrip("/")
    assert not mount.get("readOnly", False)
    (container,) = job["spec"]["template"]["spec"]["containers"]
    script = container["args"][0]
    assert "*CHANGE-ME*)" in script and 'if [ -e "$ENTENTE_HOME" ]' in script
    assert script.index("CHANGE-ME") < script.index("exec entente init")
    names = {e["name"] for e in container["env"]}
    assert {"NODE_ID", "NODE_NAME", "NODE_URL", "ENTENTE_PASSPHRASE"} <= names


def test_migration_job_runs_db_upgrade_without_the_passphrase() -> None:
    job = _by_name("Job", "entente-migrate")
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["args"][:2] == ["db", "upgrade"]
    env = {e["name"] for e in container.get("env", [])}
    assert "ENTENTE_DATABASE_URL" in env and "ENTENTE_PASSPHRASE" not in env
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"
    assert job["spec"]["ttlSecondsAfterFinished"] > 0, "re-applying must not hit an old Job"


def test_service_and_pdb_select_the_deployment_pods() -> None:
    labels = pod_labels(DEPLOYMENT)
    service = _one("Service")
    assert selector_matches(service["spec"]["selector"], labels)
    (port,) = service["spec"]["ports"]
    (container,) = DEPLOYMENT["spec"]["template"]["spec"]["containers"]
    assert port["targetPort"] in {p["name"] for p in container["ports"]}
    pdb = _one("PodDisruptionBudget")
    assert selector_matches(pdb["spec"]["selector"]["matchLabels"], labels)
    budget = pdb["spec"]
    assert budget.get("maxUnavailable") == 1 or budget.get("minAvailable") == 2
    # Neither selector may also catch the one-shot Job pods or the admin pod.
    for _ident, other in WORKLOADS:
        if (other["kind"], other["metadata"]["name"]) != ("Deployment", "entente"):
            assert not selector_matches(service["spec"]["selector"], pod_labels(other))
            assert not selector_matches(pdb["spec"]["selector"]["matchLabels"], pod_labels(other))


def test_references_to_configmap_and_secret_resolve() -> None:
    secret = _one("Secret")
    keys = set(secret["stringData"])
    for ident, obj in WORKLOADS:
        for container in _containers(obj):
            for source in container.get("envFrom", []):
                ref = source["configMapRef"]["name"]
                assert _by_name("ConfigMap", ref), ident
            for var in container.get("env", []):
                ref = var.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["name"] == secret["metadata"]["name"] and ref["key"] in keys
                    assert var["name"] == ref["key"], "keep the Secret keys equal to the names"


def test_secret_and_config_hold_placeholders_and_known_settings_only() -> None:
    secret = _one("Secret")["stringData"]
    assert set(secret) == {"ENTENTE_PASSPHRASE", "ENTENTE_DATABASE_URL"}
    assert all("CHANGE-ME" in value for value in secret.values())
    assert secret["ENTENTE_DATABASE_URL"].startswith("postgresql+psycopg://")
    assert set(CONFIG) <= NODE_SETTINGS
    assert not {"ENTENTE_PASSPHRASE", "ENTENTE_DATABASE_URL"} & set(CONFIG)
    env_names = {
        var["name"]
        for _ident, obj in WORKLOADS
        for container in _containers(obj)
        for var in container.get("env", [])
        if var["name"].startswith("ENTENTE_")
    }
    assert env_names <= NODE_SETTINGS


def test_namespace_enforces_the_restricted_pod_security_standard() -> None:
    labels = _one("Namespace")["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"


def test_network_policy_covers_every_pod_and_opens_only_the_http_port() -> None:
    policy = _one("NetworkPolicy")
    selector = policy["spec"]["podSelector"]["matchLabels"]
    for _ident, obj in WORKLOADS:
        assert selector_matches(selector, pod_labels(obj))
    assert set(policy["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    ingress_ports = [p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]]
    assert ingress_ports == [int(CONFIG["ENTENTE_PORT"])]
    egress_ports = {p["port"] for rule in policy["spec"]["egress"] for p in rule["ports"]}
    assert egress_ports == {53, 5432, 443}
