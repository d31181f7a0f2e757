"""deploy/compose.yaml: two institutes, each with its own database, init step and node."""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.deploy._files import (
    COMPOSE,
    DEPLOY,
    NODE_SETTINGS,
    NODE_UID,
    env_assignments,
    load_yaml,
    walk_strings,
)

SPEC: dict[str, Any] = load_yaml(COMPOSE)
SERVICES: dict[str, dict[str, Any]] = SPEC["services"]
INSTITUTES = ("uk-aisi", "us-aisi")


def _prefix(institute: str) -> str:
    return institute.split("-")[0]


def _runs_entente(service: dict[str, Any]) -> bool:
    return str(service.get("image", "")).startswith("${ENTENTE_IMAGE") or "build" in service


def _is_one_shot(service: dict[str, Any]) -> bool:
    return service.get("restart") == "no"


def test_each_institute_has_its_own_database_init_step_and_node() -> None:
    expected = {f"{_prefix(i)}-{part}" for i in INSTITUTES for part in ("db", "init")}
    expected |= set(INSTITUTES)
    assert set(SERVICES) == expected


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_every_service_declares_a_healthcheck(name: str) -> None:
    check = SERVICES[name].get("healthcheck")
    assert isinstance(check, dict), f"{name} has no healthcheck"
    if _is_one_shot(SERVICES[name]):
        # A one-shot step has nothing to probe: it is done when it exits 0, and whoever needs
        # it waits for exactly that.
        assert check == {"disable": True}
        waiting = [
            s
            for s in SERVICES.values()
            if s.get("depends_on", {}).get(name, {}).get("condition")
            == "service_completed_successfully"
        ]
        assert waiting, f"nothing waits for {name} to complete"
    else:
        test = check["test"]
        assert test[0] in ("CMD", "CMD-SHELL") and len(test) > 1
        assert not check.get("disable", False)
        assert check.get("interval") and check.get("timeout") and check.get("retries")


@pytest.mark.parametrize("institute", INSTITUTES)
def test_node_is_read_only_non_root_and_starts_after_init_and_database(institute: str) -> None:
    node = SERVICES[institute]
    p = _prefix(institute)
    assert node["command"] == ["serve"]
    assert node["depends_on"] == {
        f"{p}-init": {"condition": "service_completed_successfully"},
        f"{p}-db": {"condition": "service_healthy"},
    }
    probe = " ".join(node["healthcheck"]["test"])
    assert "/healthz" in probe and ":8080/" in probe
    assert node["environment"]["ENTENTE_PORT"] == "8080"
    # Published on loopback only: the lab is not an internet-facing deployment.
    assert all(str(port).startswith("127.0.0.1:") for port in node["ports"])


@pytest.mark.parametrize("name", sorted(n for n, s in SERVICES.items() if _runs_entente(s)))
def test_entente_containers_are_locked_down(name: str) -> None:
    service = SERVICES[name]
    assert service["read_only"] is True
    user = str(service["user"]).split(":")
    assert user == [str(NODE_UID), str(NODE_UID)]
    assert any(t.split(":")[0] == "/tmp" for t in service["tmpfs"])
    assert service["cap_drop"] == ["ALL"]
    assert "no-new-privileges:true" in service["security_opt"]


@pytest.mark.parametrize("institute", INSTITUTES)
def test_institutes_share_no_volume_and_home_sits_inside_the_volume(institute: str) -> None:
    p = _prefix(institute)
    mine = {n: s for n, s in SERVICES.items() if n.startswith(f"{p}-") or n == institute}
    theirs = {n: s for n, s in SERVICES.items() if n not in mine}

    def volumes(services: dict[str, dict[str, Any]]) -> set[str]:
        return {v.split(":")[0] for s in services.values() for v in s.get("volumes", [])}

    assert volumes(mine) and not volumes(mine) & volumes(theirs)
    assert volumes(mine) <= set(SPEC["volumes"]), "use named volumes, not host paths"
    for name in (f"{p}-init", institute):
        service = SERVICES[name]
        home = service["environment"]["ENTENTE_HOME"]
        mounts = [v.split(":")[1] for v in service["volumes"]]
        # init refuses an existing path and stages in the home's parent: the parent must be
        # the writable volume, the home a folder inside it.
        assert any(home.startswith(m.rstrip("/") + "/") for m in mounts), (home, mounts)
    db_url = SERVICES[institute]["environment"]["ENTENTE_DATABASE_URL"]
    assert db_url.startswith("postgresql+psycopg://") and f"@{p}-db:5432/" in db_url


@pytest.mark.parametrize("institute", INSTITUTES)
def test_init_step_creates_the_identity_only_once(institute: str) -> None:
    init = SERVICES[f"{_prefix(institute)}-init"]
    assert init["entrypoint"] == ["/bin/sh", "-c"]
    script = init["command"][0]
    # Compose turns $$ into $; the script must refuse example passphrases and skip an
    # existing home before it runs `entente init`.
    assert 'case "$$ENTENTE_PASSPHRASE" in *CHANGE-ME*)' in script
    assert 'if [ -e "$$ENTENTE_HOME" ]' in script
    assert script.index("CHANGE-ME") < script.index("exec entente init")
    env = init["environment"]
    assert env["NODE_ID"] == institute
    assert env["NODE_URL"] == f"http://{institute}:8080", "partners reach the node by its name"


def test_secrets_are_never_literal_values() -> None:
    for name, service in SERVICES.items():
        for key, value in service.get("environment", {}).items():
            if re.search(r"PASSPHRASE|PASSWORD", key):
                assert re.fullmatch(r"\$\{[A-Z_]+:\?[^}]+\}", str(value)), (
                    f"{name}.{key} must come from deploy/.env and fail when unset"
                )
            if key == "ENTENTE_DATABASE_URL":
                password = str(value).split("://", 1)[1].split("@", 1)[0].split(":", 1)[1]
                assert re.fullmatch(r"\$\{[A-Z_]+:\?[^}]+\}", password), (name, value)


def test_example_env_file_holds_only_marked_example_values() -> None:
    example = env_assignments((DEPLOY / "compose.env.example").read_text())
    referenced = set(re.findall(r"\$\{([A-Z_]+):\?", COMPOSE.read_text()))
    assert referenced and referenced <= set(example), referenced - set(example)
    for key in referenced:
        assert "CHANGE-ME" in example[key], f"{key} must be an obvious placeholder"
    assert ".env" in (DEPLOY / ".gitignore").read_text().split()


def test_no_unescaped_dollar_reaches_compose_interpolation() -> None:
    # A lone $VAR in a command would be replaced by the *host's* variable (usually empty) when
    # compose reads the file; shell variables must be written $$VAR.
    for text in walk_strings(SPEC):
        stripped = text.replace("$$", "")
        for match in re.finditer(r"\$(?!\{)", stripped):
            pytest.fail(f"unescaped $ at {match.start()} in {text!r}")


def test_only_settings_the_node_knows() -> None:
    used = {
        key
        for service in SERVICES.values()
        for key in service.get("environment", {})
        if key.startswith("ENTENTE_")
    }
    assert used and used <= NODE_SETTINGS, used - NODE_SETTINGS
