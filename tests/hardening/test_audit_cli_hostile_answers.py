"""What a node being audited answers cannot crash ``entente audit`` or write to the auditor's
terminal (found by review).

``audit verify --url``, ``audit export --url`` and ``audit checkpoint --url`` read a node that
may be hostile. Crafted answers (an error body nested 200,000 deep, a witness list that is a
number, a rotation entry without a usable seq) used to end in a Python traceback; ``audit
checkpoint --url`` wrote whatever the node sent, escapes included, to the terminal, unverified;
and a problem detail or an entry id from the node, or a bundle's ``exported_at``, could print
lines of their own after a verdict (a green VERIFIED after a FAILED). Now each ends in one
``entente:`` line or a FAILED verdict, and every outside value is printed inert.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from subprocess import CompletedProcess

import pytest

from crypto.note import Checkpoint, parse_note
from service.audit.bundle import ExportFilter, header_line, trailer_line
from service.audit.checkpoints import latest_checkpoint
from service.audit.entries import log_origin
from service.node import Node
from tests.hardening.standin import Answer, StandIn, as_json, body, problem, stand_in
from tests.hardening.test_l3_terminal_escapes import FORBIDDEN, HOSTILE, _assert_inert
from tests.nodes import base_env, run_cli
from tests.service.audit_fixtures import add_events, make_node, seq_all

DEEP = b"[" * 200_000  # deeper than any parser's recursion


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    n = make_node(tmp_path, "uk-aisi", f"sqlite:///{tmp_path / 'uk.db'}")
    add_events(n, 3)
    seq_all(n)
    yield n
    n.db.dispose()


@pytest.fixture
def standin() -> Iterator[StandIn]:
    with stand_in() as s:
        yield s


def _note(node: Node) -> bytes:
    with node.db.session() as session:
        return latest_checkpoint(session).note


def _serve_log(standin: StandIn, node: Node) -> None:
    """A node that answers like ``node`` up to its entries: descriptor, no witness, no
    rotation, its real checkpoints."""
    note = _note(node)
    size = Checkpoint.parse(parse_note(note).text).size
    standin.routes.update(
        {
            "/.well-known/entente.json": body(node.descriptor().to_bytes()),
            "/audit/v1/witnesses": as_json({"witnesses": []}),
            "/audit/v1/entries": as_json({"entries": [], "next": None}),
            "/audit/v1/checkpoints": as_json(
                {"checkpoints": [{"size": size, "note": note.decode()}], "next": None}
            ),
        }
    )


def _env() -> dict[str, str]:
    return {**base_env(), "ENTENTE_TOKEN": "ent_x_y", "COLUMNS": "2000"}


def _verify(standin: StandIn, tmp_path: Path) -> CompletedProcess[str]:
    state = str(tmp_path / "state.json")
    return run_cli("audit", "verify", "--url", standin.url, "--state", state, env=_env())


def _assert_clean_failure(result: CompletedProcess[str]) -> None:
    """Exit 1 with one ``entente:`` line, or a FAILED verdict; never a traceback."""
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    err = result.stderr.strip().splitlines()
    if err:
        assert len(err) == 1 and err[0].startswith("entente: "), result.stderr
    else:
        assert result.stdout.startswith("FAILED audit log"), result.stdout


def _assert_no_forged_lines(text: str) -> None:
    """The outside text is shown, inert, on the line that quotes it: it starts none of its own
    (no "forged line", no second verdict, no second "complete" line)."""
    _assert_inert(text)
    lines = text.splitlines()
    assert not any(line.startswith("forged line") for line in lines), text
    assert not any(line.startswith("VERIFIED") for line in lines[1:]), text
    assert not any(line.startswith("  complete     every entry") for line in lines), text


# ---------------------------------------------------------------------------------------------
# Finding 5: crafted answers end in one line or a FAILED verdict


@pytest.mark.parametrize("error", [b"[]", DEEP, b'"a string"'], ids=["list", "deep", "string"])
def test_export_url_with_a_crafted_error_body_is_one_line(standin: StandIn, error: bytes) -> None:
    standin.routes["/audit/v1/bundle"] = body(error, 500)
    result = run_cli("audit", "export", "--url", standin.url, env=_env())
    _assert_clean_failure(result)
    assert "answered 500" in result.stderr


ROTATION = {"kind": "key.rotated"}
CRAFTED: dict[str, dict[str, Answer]] = {
    "witness list a number": {"/audit/v1/witnesses": as_json({"witnesses": 5})},
    "witness list not an object": {"/audit/v1/witnesses": as_json([1, 2])},
    "deep error body": {"/audit/v1/witnesses": body(DEEP, 500)},
    "rotation page without seq": {
        "/audit/v1/entries": as_json({"entries": [{}], "next": "1"}),
    },
    "rotation seq not a number": {
        "/audit/v1/entries": as_json({"entries": [{**ROTATION, "seq": "x"}], "next": None}),
    },
    "rotation not an object": {"/audit/v1/entries": as_json({"entries": [7], "next": None})},
    "rotation detail deep": {
        "/audit/v1/entries": as_json(
            {"entries": [{**ROTATION, "seq": 1, "detail": "[" * 200_000}], "next": None}
        ),
    },
    "checkpoint size out of range": {
        "/audit/v1/checkpoints": body(b'{"checkpoints": [{"size": 1e400}], "next": null}'),
    },
}


@pytest.mark.parametrize("routes", CRAFTED.values(), ids=CRAFTED.keys())
def test_verify_url_with_a_crafted_answer_fails_cleanly(
    node: Node, standin: StandIn, tmp_path: Path, routes: dict[str, Answer]
) -> None:
    _serve_log(standin, node)
    standin.routes.update(routes)
    _assert_clean_failure(_verify(standin, tmp_path))


def test_checkpoint_url_that_is_not_utf8_is_one_line(node: Node, standin: StandIn) -> None:
    _serve_log(standin, node)
    standin.routes["/audit/v1/checkpoint"] = body(b"\xff\xfe not text\n", kind="text/plain")
    result = run_cli("audit", "checkpoint", "--url", standin.url, env=_env())
    _assert_clean_failure(result)


# ---------------------------------------------------------------------------------------------
# Finding 6: what the node or a bundle supplies is printed inert


def test_checkpoint_url_prints_only_a_verified_note(node: Node, standin: StandIn) -> None:
    _serve_log(standin, node)
    note = _note(node)
    standin.routes["/audit/v1/checkpoint"] = body(note, kind="text/plain")
    shown = run_cli("audit", "checkpoint", "--url", standin.url, env=_env())
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout == note.decode()

    standin.routes["/audit/v1/checkpoint"] = body(HOSTILE.encode(), kind="text/plain")
    hostile = run_cli("audit", "checkpoint", "--url", standin.url, env=_env())
    for char in FORBIDDEN:
        assert char not in hostile.stdout + hostile.stderr
    assert "forged line" not in hostile.stdout
    _assert_clean_failure(hostile)


def test_verify_prints_a_node_problem_detail_inert(
    node: Node, standin: StandIn, tmp_path: Path
) -> None:
    _serve_log(standin, node)
    standin.routes["/audit/v1/entries"] = problem(500, HOSTILE)
    result = _verify(standin, tmp_path)
    _assert_clean_failure(result)
    _assert_no_forged_lines(result.stdout)


def test_verify_prints_an_entry_id_from_the_node_inert(
    node: Node, standin: StandIn, tmp_path: Path
) -> None:
    _serve_log(standin, node)
    forged = "\n[bold green]VERIFIED[/] audit log " + HOSTILE
    lines = [{"seq": "x", "id": forged}, {"seq": 0, "id": forged}]
    for line in lines:
        standin.routes["/audit/v1/export"] = body(json.dumps(line).encode() + b"\n")
        result = _verify(standin, tmp_path)
        _assert_clean_failure(result)
        _assert_no_forged_lines(result.stdout)
        as_json_out = run_cli(
            "audit", "verify", "--url", standin.url, "--json",
            "--state", str(tmp_path / "state.json"), env=_env(),
        )  # fmt: skip
        verdict = json.loads(as_json_out.stdout)
        assert verdict["ok"] is False
        assert verdict["bad_id"] is None  # an id is a number; this one is not


def test_verify_export_prints_the_bundles_strings_inert(node: Node, tmp_path: Path) -> None:
    note = _note(node)
    cp = Checkpoint.parse(parse_note(note).text)
    flt = ExportFilter(0, cp.size - 1, ("read",), HOSTILE[:120])  # matches no entry
    forged = HOSTILE + f"\n  complete     every entry from 0 to {cp.size - 1} is present"
    bundle = tmp_path / "bundle.jsonl"
    header = header_line(
        node_id=node.node_id, origin=log_origin(node.node_id), checkpoint=note,
        size=cp.size, root=cp.root_hash, flt=flt, exported_at=forged,
    )  # fmt: skip
    bundle.write_bytes(header + trailer_line(0))
    descriptor = tmp_path / "uk.json"
    descriptor.write_bytes(node.descriptor().to_bytes())
    result = run_cli(
        "audit", "verify-export", str(bundle), "--descriptor", str(descriptor), env=_env()
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("VERIFIED export bundle")
    assert "complete     not provable" in result.stdout
    _assert_no_forged_lines(result.stdout)
