"""deploy/README.md stays in step with the files it documents and with the node."""

from __future__ import annotations

import re

import pytest

from tests.deploy._files import DEPLOY, NODE_SETTINGS, README

TEXT = README.read_text()
DOCUMENTED = sorted(
    str(p.relative_to(DEPLOY))
    for p in DEPLOY.rglob("*")
    if p.is_file() and p.name not in ("README.md", ".gitignore") and not p.name.endswith(".env")
)


@pytest.mark.parametrize("relative", DOCUMENTED)
def test_every_deploy_file_is_mentioned(relative: str) -> None:
    # Kubernetes manifests are covered by their folder's entry; everything else by name.
    if relative.startswith("k8s/"):
        folder = relative.rsplit("/", 1)[0] + "/"
        assert f"`{folder}`" in TEXT, folder
    else:
        assert relative in TEXT, relative


@pytest.mark.parametrize("setting", sorted(NODE_SETTINGS))
def test_every_setting_the_deployment_uses_is_documented(setting: str) -> None:
    assert f"`{setting}`" in TEXT


@pytest.mark.parametrize(
    "topic",
    [
        "## Keys, passphrase and backups",
        "## Rotating keys",
        "## Adding a partner later",
        "## Upgrading (migrations)",
        "## Scale-out",
        "## Monitoring",
        "SKIP LOCKED",
        "needs a Docker engine (none runs\nhere)",
        "entente keys rotate",
        "entente db upgrade",
        "--fingerprint",
    ],
)
def test_operator_topics_are_covered(topic: str) -> None:
    assert topic in TEXT


def test_monitoring_table_names_exactly_the_metrics_the_node_exports() -> None:
    from service.metrics import DATABASE_GAUGES, Metrics

    exported = set(DATABASE_GAUGES)  # read from the database at each scrape
    for family in Metrics().registry.collect():
        exported.add(family.name + ("_total" if family.type == "counter" else ""))
    section = TEXT.split("## Monitoring", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"^\| `(entente_[a-z_]+)` \|", section, re.MULTILINE))
    assert documented == exported, {
        "undocumented": exported - documented,
        "gone": documented - exported,
    }
