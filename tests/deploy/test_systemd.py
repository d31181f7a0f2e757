"""deploy/systemd: the hardened unit and its environment file."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from tests.deploy._files import NODE_SETTINGS, UNIT, UNIT_ENV, env_assignments, parse_unit

UNIT_TEXT = UNIT.read_text()
SECTIONS = parse_unit(UNIT_TEXT)
SERVICE = SECTIONS["Service"]
STATE = "/var/lib/entente"


def _value(key: str) -> str:
    values = SERVICE.get(key)
    assert values, f"[Service] does not set {key}"
    return values[-1]  # for single-valued settings the last assignment wins


def test_unit_has_the_three_sections() -> None:
    assert set(SECTIONS) == {"Unit", "Service", "Install"}
    assert SECTIONS["Install"]["WantedBy"] == ["multi-user.target"]
    assert "network-online.target" in SECTIONS["Unit"]["After"][0].split()


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("ProtectSystem", "strict"),
        ("NoNewPrivileges", "yes"),
        ("PrivateTmp", "yes"),
        ("ProtectHome", "yes"),
        ("PrivateDevices", "yes"),
        ("ProtectKernelTunables", "yes"),
        ("ProtectKernelModules", "yes"),
        ("ProtectControlGroups", "yes"),
        ("RestrictSUIDSGID", "yes"),
        ("RestrictNamespaces", "yes"),
        ("LockPersonality", "yes"),
        ("SystemCallArchitectures", "native"),
        ("CapabilityBoundingSet", ""),
        ("AmbientCapabilities", ""),
        ("UMask", "0077"),
        ("Restart", "on-failure"),
        ("EnvironmentFile", "/etc/entente/entente.env"),
    ],
)
def test_hardening_setting(key: str, expected: str) -> None:
    assert _value(key) == expected


def test_runs_as_a_dedicated_unprivileged_user() -> None:
    dynamic = SERVICE.get("DynamicUser", ["no"])[-1] == "yes"
    user = SERVICE.get("User", [""])[-1]
    assert dynamic or (user and user not in ("root", "0")), "the node must not run as root"


def test_only_the_state_directory_is_writable() -> None:
    assert _value("ReadWritePaths").split() == [STATE]
    assert _value("StateDirectory") == STATE.rsplit("/", 1)[1]
    assert _value("WorkingDirectory") == STATE


def test_system_calls_are_filtered() -> None:
    filters = SERVICE["SystemCallFilter"]
    assert "@system-service" in filters
    denied = [f[1:].split() for f in filters if f.startswith("~")]
    assert any("@privileged" in group for group in denied)
    assert set(_value("RestrictAddressFamilies").split()) == {"AF_UNIX", "AF_INET", "AF_INET6"}


def test_stops_in_bounded_time_after_sigterm() -> None:
    match = re.fullmatch(r"(\d+)s?", _value("TimeoutStopSec"))
    assert match and 10 <= int(match.group(1)) <= 120
    assert SERVICE.get("KillSignal", ["SIGTERM"])[-1] == "SIGTERM"


def test_passphrase_arrives_as_a_credential_and_only_for_entente_serve() -> None:
    name, _, source = _value("LoadCredential").partition(":")
    assert name == "passphrase" and source.startswith("/etc/entente/")
    start = _value("ExecStart")
    # %d is the credentials directory; $$ is how a unit file spells a literal $ for the shell.
    assert f'ENTENTE_PASSPHRASE="$$(cat %d/{name})"' in start
    assert re.search(r"exec /opt/entente/bin/entente serve --home /var/lib/entente/home'$", start)
    assert "PASSPHRASE=" not in "".join(SERVICE.get("Environment", []))


def test_environment_file_example_sets_known_settings_and_no_secret() -> None:
    example = env_assignments(UNIT_ENV.read_text())
    assert set(example) <= NODE_SETTINGS, set(example) - NODE_SETTINGS
    assert "ENTENTE_PASSPHRASE" not in example
    assert not re.search(r"^\s*ENTENTE_PASSPHRASE\s*=", UNIT_ENV.read_text(), re.MULTILINE)
    home = example["ENTENTE_HOME"]
    # The home is a folder in the state directory: init refuses an existing path.
    assert home.startswith(STATE + "/") and home in _value("ExecStart")
    assert example["ENTENTE_HOST"] == "127.0.0.1", "only the TLS proxy should reach the node"


def _systemd_analyze() -> str:
    path = shutil.which("systemd-analyze")
    if path is None:
        pytest.skip("systemd-analyze is not installed (needed only for this check)")
    return path


def test_systemd_accepts_the_unit_without_warnings() -> None:
    result = subprocess.run(
        [_systemd_analyze(), "verify", str(UNIT)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0 and not (result.stdout + result.stderr).strip(), result.stderr


def test_systemd_rates_the_exposure_low() -> None:
    # --threshold is in tenths: 20 means an overall exposure level of at most 2.0 ("OK").
    result = subprocess.run(
        [_systemd_analyze(), "security", "--offline=yes", "--threshold=20", str(UNIT)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-2000:]
    assert "Overall exposure level" in result.stdout
