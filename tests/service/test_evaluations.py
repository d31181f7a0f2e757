"""Inspect evaluation logs as artifacts: real logs made by Inspect in the test, shared from one
in-process node to another through ``entente share`` and through the Inspect hook.

Inspect estimates token counts with tiktoken's ``o200k_base``, which tiktoken downloads at run
time; offline every sample would fail on it. The logs here are made by a tiny model provider
registered in the test (Inspect's ``mockllm`` that counts its own tokens), so they are complete
without a network; one task's solver raises on a sample, for an errored log. A marker string is
in every sample's input and answer: it must appear nowhere at either node (database, blob store,
keys: every file of the homes) nor in the logs, only in the encrypted payload.
"""

from __future__ import annotations

import asyncio
import base64
import builtins
import importlib.util
import json
import logging
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from service.cli import app as cli_app
from service.cli import client as cli_client
from service.client import Client
from service.evaluations import (
    InspectUnavailableError,
    NotAnEvaluationLogError,
    read_summary,
)
from service.federation.client import PartnerClient
from service.federation.outbox import OutboxWorker
from service.tokens import Role
from tests.service.nodekit import Kit, make_node, pin
from tests.service.test_console import sign_in
from tests.support import ROOT, require

# Inspect's eval() leaves an anyio memory stream of its own unclosed (its event loop's, not ours).
pytestmark = [
    # tenacity, as Inspect calls it: not ours to fix, and an error here would fail every sample
    pytest.mark.filterwarnings("ignore:The 'initial' parameter is deprecated:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:Unclosed <MemoryObject:ResourceWarning"),
    pytest.mark.filterwarnings(
        "ignore:Exception ignored in.*MemoryObject:pytest.PytestUnraisableExceptionWarning"
    ),
]

MARKER = "SECRET-SAMPLE-7f3a9c"  # in every sample's input and in the model's answers
INSPECT = importlib.util.find_spec("inspect_ai") is not None


def _require_inspect() -> None:
    require(INSPECT, "inspect-ai", "install it with: pip install 'entente[inspect]'")


@dataclass(frozen=True)
class Logs:
    success: Path  # .eval (zip)
    success_json: Path  # .json: the samples in plain text, so a leak would show
    error: Path  # a solver raised on one sample: status "error"


def _make_logs(folder: Path) -> Logs:
    from inspect_ai import Task, eval
    from inspect_ai.dataset import MemoryDataset, Sample
    from inspect_ai.model import modelapi
    from inspect_ai.model._providers.mockllm import MockLLM
    from inspect_ai.scorer import includes
    from inspect_ai.solver import Generate, TaskState, generate, solver

    @modelapi(name="entente-offline")
    def offline() -> type[MockLLM]:
        class Offline(MockLLM):
            default_output = f"The answer is {MARKER}"

            async def count_text_tokens(self, text: str) -> int:
                return len(text.split())  # no tiktoken download

        return Offline

    @solver
    def explode_on_second() -> Any:
        async def solve(state: TaskState, generate: Generate) -> TaskState:
            if state.sample_id == 2:
                raise RuntimeError("this sample fails on purpose")
            return await generate(state)

        return solve

    def dataset() -> MemoryDataset:
        return MemoryDataset(
            [Sample(id=i, input=f"Repeat {MARKER} #{i}", target=MARKER) for i in (1, 2, 3)],
            name="markers",
        )

    def run(task: Task, fmt: str) -> Path:
        [log] = eval(
            task, model="entente-offline/model", log_dir=str(folder), display="none",
            log_format=fmt,  # type: ignore[arg-type]
        )  # fmt: skip
        assert log.location
        return Path(log.location)

    ok = Task(dataset=dataset(), solver=generate(), scorer=includes(), name="marker_task")
    bad = Task(dataset=dataset(), solver=explode_on_second(), scorer=includes(), name="bad_task")
    return Logs(success=run(ok, "eval"), success_json=run(ok, "json"), error=run(bad, "eval"))


@pytest.fixture(scope="module")
def logs(tmp_path_factory: pytest.TempPathFactory) -> Logs:
    _require_inspect()
    return _make_logs(tmp_path_factory.mktemp("inspect-logs"))


class Bridge(httpx.BaseTransport):
    """Routes requests by host to in-process apps, each on an event loop of its own (Inspect's
    reader patches the running loop's machinery, which a long-lived portal does not survive);
    an unknown host does not answer."""

    def __init__(self, apps: dict[str, Any]) -> None:
        self.apps = apps

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        app = self.apps.get(request.url.host)
        if app is None:
            raise httpx.ConnectError(f"{request.url.host} does not answer", request=request)
        body = request.read()

        async def send() -> httpx.Response:
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport) as c:
                r = await c.request(
                    request.method, str(request.url), headers=request.headers, content=body
                )
                return httpx.Response(r.status_code, headers=r.headers, content=r.content)

        return asyncio.run(send())

    def close(self) -> None:
        pass


@dataclass
class Pair:
    uk: Kit
    us: Kit
    transport: Bridge

    def deliver(self) -> int:
        http = httpx.Client(transport=self.transport)
        return OutboxWorker(self.uk.node, PartnerClient(self.uk.node, http=http)).run_once()


@pytest.fixture
def pair(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Pair]:
    (tmp_path / "homes").mkdir()
    uk = make_node(tmp_path / "homes", "uk-aisi")
    us = make_node(tmp_path / "homes", "us-aisi")
    pin(uk, us)
    pin(us, uk)
    transport = Bridge({"uk-aisi": uk.app, "us-aisi": us.app})

    def in_process(url: str, token: str, **options: Any) -> Client:
        return Client(url, token, transport=transport, **options)

    monkeypatch.setattr(cli_client, "_client", in_process)
    yield Pair(uk, us, transport)
    transport.close()


def _cli(*args: str) -> Any:
    return CliRunner().invoke(cli_app, list(args))


def _share(pair: Pair, log: Path, *extra: str) -> Any:
    return _cli(
        "share", str(log), "--to", "us-aisi", "--tlp", "TLP:AMBER", "--url", "http://uk-aisi",
        "--token", pair.uk.tokens[Role.PUBLISHER], "--json", *extra,
    )  # fmt: skip


def _predicate(art: dict[str, Any]) -> dict[str, Any]:
    payload = json.loads(base64.b64decode(art["manifest"]["payload"]))
    predicate: dict[str, Any] = payload["predicate"]
    return predicate


def _header(path: Path) -> Any:
    from inspect_ai.log import read_eval_log

    return read_eval_log(str(path), header_only=True)


def _assert_summary_is_inspects(summary: dict[str, Any], path: Path) -> None:
    header = _header(path)
    assert summary["task"] == header.eval.task
    assert summary["task_version"] == header.eval.task_version
    assert summary["model"] == header.eval.model
    assert summary["dataset"] == {
        "name": header.eval.dataset.name,
        "samples": header.eval.dataset.samples,
    }
    assert summary["status"] == header.status
    assert summary["inspect_version"] == header.eval.packages["inspect_ai"]
    assert summary["started_at"] == header.stats.started_at
    assert summary["completed_at"] == header.stats.completed_at
    ours = [(s["name"], {m["name"]: m["value"] for m in s["metrics"]}) for s in summary["scorers"]]
    if header.results is not None:
        assert ours == [
            (s.name, {m.name: m.value for m in s.metrics.values()}) for s in header.results.scores
        ]
    else:  # no results (a run that failed before scoring): the scorers it named
        assert ours == [(s.name, {}) for s in header.eval.scorers or []]
    if header.results is not None and header.results.headline is not None:
        assert summary["headline"]["metric"] == header.results.headline.metric


def _nothing_leaks(pair: Pair, caplog: pytest.LogCaptureFixture) -> None:
    homes = pair.uk.node.home.path.parent
    for path in homes.rglob("*"):
        if path.is_file():
            assert MARKER.encode() not in path.read_bytes(), path
    assert MARKER not in caplog.text


def test_the_summary_is_what_inspect_reports(logs: Logs) -> None:
    for path in (logs.success, logs.success_json, logs.error):
        summary = read_summary(path).model_dump(mode="json")
        _assert_summary_is_inspects(summary, path)
        assert MARKER not in json.dumps(summary)  # no input, answer or error text
    assert read_summary(logs.success).status == "success"
    assert read_summary(logs.success).headline is not None
    assert read_summary(logs.error).status == "error"


def test_a_file_inspect_cannot_read_is_not_summarised(tmp_path: Path) -> None:
    _require_inspect()
    other = tmp_path / "results.json"
    other.write_text('{"not": "a log"}')
    with pytest.raises(NotAnEvaluationLogError):
        read_summary(other)


def test_a_log_shared_opened_and_listed_at_the_partner(
    pair: Pair, logs: Logs, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    shared = {}
    for path in (logs.success_json, logs.error):
        result = _share(pair, path)
        assert result.exit_code == 0, (result.output, result.exception)
        shared[path] = json.loads(result.output)["id"]
    assert pair.deliver() == 2
    reader = pair.us.tokens[Role.READER]
    with httpx.Client(transport=pair.transport, base_url="http://us-aisi") as c:
        auth = {"Authorization": f"Bearer {reader}"}
        for path, art_id in shared.items():
            art = c.get(f"/v1/artifacts/{art_id}", headers=auth).json()
            assert art["filename"] == path.name
            assert art["topics"] == ["evaluation"] and art["purposes"] == ["evaluation"]
            summary = _predicate(art)["evaluation"]
            assert summary == art["evaluation"]
            _assert_summary_is_inspects(summary, path)
        ok = read_summary(logs.success_json)
        found = c.get(
            "/v1/artifacts", params={"task": ok.task, "model": ok.model}, headers=auth
        ).json()["items"]
        assert [a["id"] for a in found] == [shared[logs.success_json]]
        none = c.get("/v1/artifacts", params={"task": "other"}, headers=auth).json()["items"]
        assert none == []
        unknown = c.get("/v1/artifacts", params={"tsak": "x"}, headers=auth)
        assert unknown.status_code == 422
        assert unknown.headers["content-type"].startswith("application/problem+json")
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    got = _cli(
        "get", shared[logs.success_json], "-o", str(downloads), "--url", "http://us-aisi",
        "--token", reader,
    )  # fmt: skip
    assert got.exit_code == 0, (got.output, got.exception)
    opened = downloads / logs.success_json.name  # its own name: `inspect view` lists it
    assert opened.read_bytes() == logs.success_json.read_bytes()
    from inspect_ai.log import read_eval_log

    full = read_eval_log(str(opened))
    assert full.samples and MARKER in str(full.samples[0].input)
    _nothing_leaks(pair, caplog)


def test_the_console_shows_the_summary(pair: Pair, logs: Logs) -> None:
    result = _share(pair, logs.success)
    assert result.exit_code == 0, (result.output, result.exception)
    art = json.loads(result.output)["id"]
    import anyio

    async def page() -> str:
        async with pair.uk.client() as c:
            await sign_in(c, pair.uk.tokens[Role.AUDITOR])
            r = await c.get(f"/ui/artifacts/{art}")
            assert r.status_code == 200
            return r.text

    text = anyio.run(page)
    summary = read_summary(logs.success)
    assert "Evaluation log" in text
    assert f"<code>{summary.task}</code>" in text and f"<code>{summary.model}</code>" in text
    assert "accuracy" in text and logs.success.name in text


def test_dry_run_prints_the_summary_and_shares_nothing(pair: Pair, logs: Logs) -> None:
    result = _share(pair, logs.success, "--dry-run")
    assert result.exit_code == 0, (result.output, result.exception)
    shown = json.loads(result.output)
    assert shown["metadata"]["evaluation"] == read_summary(logs.success).model_dump(mode="json")
    assert shown["metadata"]["filename"] == logs.success.name
    assert shown["metadata"]["title"].startswith("Inspect evaluation: marker_task on ")
    words = _cli("share", str(logs.success), "--to", "us-aisi", "--tlp", "TLP:AMBER", "--dry-run")
    assert words.exit_code == 0 and "nothing was shared" in words.output
    with httpx.Client(transport=pair.transport, base_url="http://uk-aisi") as c:
        auth = {"Authorization": f"Bearer {pair.uk.tokens[Role.READER]}"}
        assert c.get("/v1/artifacts", headers=auth).json()["items"] == []


def test_the_publisher_overrides_every_field(pair: Pair, logs: Logs, tmp_path: Path) -> None:
    edited = read_summary(logs.success).model_dump(mode="json")
    edited["model"] = "a-model-under-embargo"
    edited["scorers"] = []
    (tmp_path / "summary.json").write_text(json.dumps(edited))
    result = _share(
        pair, logs.success, "--summary", str(tmp_path / "summary.json"), "--title", "Mine",
        "--topic", "safety-research", "--purpose", "evaluation",
    )  # fmt: skip
    assert result.exit_code == 0, (result.output, result.exception)
    art = json.loads(result.output)
    assert art["title"] == "Mine" and art["topics"] == ["safety-research"]
    assert (
        art["evaluation"]["model"] == "a-model-under-embargo" and art["evaluation"]["scorers"] == []
    )
    bad = dict(edited, samples_total=-1)
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    refused = _share(pair, logs.success, "--summary", str(tmp_path / "bad.json"))
    assert refused.exit_code != 0 and "samples_total" in str(refused.exception)
    plain = _share(
        pair, logs.success, "--no-summary", "--topic", "evaluation", "--purpose", "evaluation"
    )
    assert plain.exit_code == 0
    assert json.loads(plain.output)["evaluation"] is None


def test_a_node_without_inspect_shares_the_log_opaquely(
    pair: Pair, logs: Logs, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_import = builtins.__import__

    def no_inspect(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "inspect_ai" or name.startswith("inspect_ai."):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_inspect)
    with pytest.raises(InspectUnavailableError, match=r"pip install 'entente\[inspect\]'"):
        read_summary(logs.success)
    result = CliRunner().invoke(
        cli_app,
        ["share", str(logs.success), "--to", "us-aisi", "--tlp", "TLP:AMBER", "--url",
         "http://uk-aisi", "--token", pair.uk.tokens[Role.PUBLISHER], "--json",
         "--topic", "evaluation", "--purpose", "evaluation"],
    )  # fmt: skip
    assert result.exit_code == 0, (result.output, result.exception)
    assert "entente[inspect]" in result.output  # said on stderr (mixed in by the runner)
    art = json.loads(result.output.splitlines()[-1])
    assert art["evaluation"] is None and art["filename"] == logs.success.name
    assert art["title"] == logs.success.name


def test_the_hook_shares_each_finished_task_and_reports_denials(
    pair: Pair, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    _require_inspect()
    from inspect_ai.hooks._hooks import get_all_hooks

    import service.cli.inspect_hook  # registers the hook, as Inspect's entry point does

    assert any(isinstance(h, service.cli.inspect_hook.ShareLogs) for h in get_all_hooks())

    def in_process(url: str, token: str, **options: Any) -> Client:
        return Client(url, token, transport=pair.transport, **options)

    monkeypatch.setattr(service.cli.inspect_hook, "Client", in_process)
    caplog.set_level(logging.WARNING, logger="entente.inspect")
    monkeypatch.setenv("ENTENTE_URL", "http://uk-aisi")
    monkeypatch.setenv("ENTENTE_TOKEN", pair.uk.tokens[Role.PUBLISHER])
    monkeypatch.setenv("ENTENTE_INSPECT_PARTNERS", "us-aisi")
    monkeypatch.setenv("ENTENTE_INSPECT_TLP", "TLP:AMBER")
    made = _make_logs(tmp_path / "hooked")
    reports = [r.getMessage() for r in caplog.records if r.name == "entente.inspect"]
    assert len(reports) == 3, reports  # one per task, the errored one included
    assert all(r.startswith("entente: shared ") for r in reports), reports
    with httpx.Client(transport=pair.transport, base_url="http://uk-aisi") as c:
        auth = {"Authorization": f"Bearer {pair.uk.tokens[Role.READER]}"}
        items = c.get("/v1/artifacts", headers=auth).json()["items"]
    assert sorted(a["filename"] for a in items) == sorted(
        p.name for p in (made.success, made.success_json, made.error)
    )
    assert {a["evaluation"]["status"] for a in items} == {"success", "error"}
    assert pair.deliver() == 3

    caplog.clear()
    monkeypatch.setenv("ENTENTE_INSPECT_TLP", "TLP:RED")  # the example MOU allows up to AMBER
    again = _make_logs(tmp_path / "denied")
    assert again.success.exists()  # the evaluation itself went on
    from inspect_ai.log import read_eval_log

    assert read_eval_log(str(again.success), header_only=True).status == "success"
    denials = [r.getMessage() for r in caplog.records if r.name == "entente.inspect"]
    assert len(denials) == 3 and all("not shared" in d for d in denials), denials
    assert all("rule" in d and "[example]" in d for d in denials), denials

    caplog.clear()
    monkeypatch.setenv("ENTENTE_URL", "http://nowhere")  # unreachable: reported, not raised
    monkeypatch.setenv("ENTENTE_INSPECT_TLP", "TLP:AMBER")
    monkeypatch.setenv("ENTENTE_INSPECT_RETRIES", "0")
    _make_logs(tmp_path / "unreachable")
    failures = [r.getMessage() for r in caplog.records if r.name == "entente.inspect"]
    assert len(failures) == 3 and all("cannot reach the node" in f for f in failures), failures


def test_the_hook_is_an_inspect_entry_point() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["entry-points"]["inspect_ai"] == {"entente": "service.cli.inspect_hook"}
    assert any(d.startswith("inspect-ai") for d in project["optional-dependencies"]["inspect"])
    assert any(d.startswith("inspect-ai") for d in project["optional-dependencies"]["dev"])
