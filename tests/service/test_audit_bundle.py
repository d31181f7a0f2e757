"""Export bundles: written from the database (``service.audit.export``) and checked offline with
the log key alone (``service.audit.bundle``): each kind of tampering fails, naming why."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from crypto.keys import SigningKey
from crypto.note import NoteVerifier
from service.audit.bundle import (
    BundleVerdict,
    ExportFilter,
    bounded_lines,
    verify_bundle,
)
from service.audit.entries import encode_leaf, log_origin, log_signer
from service.audit.errors import BundleError
from service.audit.export import bundle_lines, plan_export
from service.errors import InvalidInputError, NotFoundError
from service.node import Node
from tests.service.audit_fixtures import T0, add_events, make_node, seq_all


@pytest.fixture
def node(tmp_path: Path, db_url: str) -> Iterator[Node]:
    n = make_node(tmp_path, "uk-aisi", db_url)
    add_events(n, 7, kind="read", partner="us-aisi")
    add_events(n, 4, kind="share.denied", partner="ca-aisi")
    seq_all(n)
    yield n
    n.db.dispose()


def export(node: Node, **kw: Any) -> list[bytes]:
    args: dict[str, Any] = {"first": None, "last": None, "kinds": (), "artifact": None}
    args.update(kw)
    with node.db.session() as session:
        plan = plan_export(
            session, node_id=node.node_id, max_entries=node.settings.audit_export_max_entries,
            **args,
        )  # fmt: skip
    data = b"".join(bundle_lines(node.db.session, plan, now=T0))
    assert data.endswith(b"\n")
    return data.split(b"\n")[:-1]


def key(node: Node) -> NoteVerifier:
    return log_signer(node).verifier


def check(node: Node, lines: list[bytes]) -> BundleVerdict:
    return verify_bundle(lines, log=key(node))


def edit(line: bytes, **changes: Any) -> bytes:
    obj = json.loads(line)
    obj.update(changes)
    return json.dumps(obj, separators=(",", ":")).encode()


def test_whole_log_verifies_and_is_complete(node: Node) -> None:
    lines = export(node)
    verdict = check(node, lines)
    header = json.loads(lines[0])
    assert (verdict.count, verdict.size, verdict.complete) == (11, 11, True)
    assert verdict.origin == log_origin("uk-aisi") == header["origin"]
    assert verdict.filter == ExportFilter(0, 10)
    assert [json.loads(line)["seq"] for line in lines[1:-1]] == list(range(11))
    assert json.loads(lines[-1]) == {"end": True, "count": 11}
    # Each leaf is the entry's canonical encoding, so SHA-256(0x00 || leaf) is its leaf hash.
    leaf = base64.b64decode(json.loads(lines[1])["leaf"])
    assert encode_leaf(json.loads(leaf)) == leaf


def test_filters_by_kind_artifact_and_range(node: Node) -> None:
    denied = check(node, lines := export(node, kinds=["share.denied"]))
    kinds = {json.loads(base64.b64decode(json.loads(x)["leaf"]))["kind"] for x in lines[1:-1]}
    assert (denied.count, kinds, denied.complete) == (4, {"share.denied"}, False)
    one = check(node, export(node, artifact="art-0002"))
    assert one.count == 2  # art-0002 was read once and denied once
    part = check(node, export(node, first=3, last=5))
    assert (part.count, part.complete, part.filter.to_json()["from"]) == (3, True, 3)
    assert check(node, export(node, artifact="nothing-like-it")).count == 0


def test_a_tampered_entry_fails(node: Node) -> None:
    lines = export(node)
    entry = json.loads(base64.b64decode(json.loads(lines[3])["leaf"]))
    entry["actor"] = "reader:mallory"
    lines[3] = edit(lines[3], leaf=base64.b64encode(encode_leaf(entry)).decode())
    with pytest.raises(BundleError, match=r"entry 2 \(line 4\) is not in the log signed at size"):
        check(node, lines)


def test_a_wrong_proof_fails(node: Node) -> None:
    lines = export(node)
    proof = json.loads(lines[5])["proof"]
    lines[5] = edit(lines[5], proof=[base64.b64encode(bytes(32)).decode(), *proof[1:]])
    with pytest.raises(BundleError, match=r"entry 4 .* proof was altered"):
        check(node, lines)
    short = export(node)
    short[2] = edit(short[2], proof=json.loads(short[2])["proof"][:-1])
    with pytest.raises(BundleError, match=r"entry 1 .*inclusion proof is too short"):
        check(node, short)


def test_a_wrong_checkpoint_key_fails(node: Node) -> None:
    lines = export(node)
    other = NoteVerifier(log_origin("uk-aisi"), SigningKey.generate().public)
    with pytest.raises(BundleError, match=r"not signed by the log key entente\.dev/audit/uk-aisi"):
        verify_bundle(lines, log=other)
    # A forged checkpoint with its proofs rebuilt would need the log key; a changed root fails.
    header = json.loads(lines[0])
    note = header["checkpoint"].split("\n")
    note[2] = base64.b64encode(bytes(32)).decode()
    lines[0] = edit(lines[0], checkpoint="\n".join(note))
    with pytest.raises(BundleError, match="does not verify"):
        check(node, lines)


def test_the_filter_must_be_what_the_header_says(node: Node) -> None:
    lines = export(node, kinds=["read"])
    lines[0] = edit(
        lines[0], filter={"from": 0, "to": 10, "kind": ["share.denied"], "artifact": None}
    )
    with pytest.raises(BundleError, match=r"\(read\) is outside the bundle's filter"):
        check(node, lines)
    # Claiming a whole range for a kind-filtered export: the missing entries are noticed.
    widened = export(node, kinds=["share.denied"])
    widened[0] = edit(widened[0], filter={"from": 0, "to": 10, "kind": [], "artifact": None})
    with pytest.raises(BundleError, match="entry 0 is missing"):
        check(node, widened)


def test_dropped_reordered_or_cut_short_fails(node: Node) -> None:
    lines = export(node)
    with pytest.raises(BundleError, match="entry 4 is missing"):
        check(node, lines[:5] + lines[6:-1] + [b'{"count":10,"end":true}'])
    swapped = [*lines[:2], lines[3], lines[2], *lines[4:]]
    with pytest.raises(BundleError, match=r"entry 1 is missing \(line 3 is entry 2\)"):
        check(node, swapped)
    reads = export(node, kinds=["read"])
    with pytest.raises(BundleError, match=r"entry 1 \(line 4\) is not after entry 2"):
        check(node, [*reads[:2], reads[3], reads[2], *reads[4:]])
    with pytest.raises(BundleError, match="without its trailer: cut short"):
        check(node, lines[:-1])
    with pytest.raises(BundleError, match="does not count 11 entries"):
        check(node, [*lines[:-1], b'{"count":12,"end":true}'])
    with pytest.raises(BundleError, match="more after the trailer"):
        check(node, [*lines, lines[1]])
    with pytest.raises(BundleError, match="empty"):
        check(node, [])
    with pytest.raises(BundleError, match="not JSON"):
        check(node, [lines[0], b"{oops"])


def test_a_long_line_is_refused_before_it_is_held() -> None:
    stream = io.BytesIO(b"short\n" + b"x" * 100 + b"\n")
    with pytest.raises(BundleError, match="line 2 is longer than 50 bytes"):
        list(bounded_lines(stream, limit=50))
    assert list(bounded_lines(io.BytesIO(b"a\nb"))) == [b"a", b"b"]


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"last": 11}, "to is 11, but the latest checkpoint covers entries 0 to 10"),
        ({"first": 6, "last": 5}, r"from \(6\) is after to \(5\)"),
        ({"kinds": ["no.such"]}, "unknown event kind 'no.such'"),
        ({"artifact": "x" * 65}, "artifact is an artifact id"),
        ({"first": -1}, "log indexes"),
    ],
)
def test_bad_plans_are_refused(node: Node, kw: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        export(node, **kw)


def test_an_export_is_bounded(node: Node) -> None:
    with (
        node.db.session() as session,
        pytest.raises(InvalidInputError, match=r"spans at most 5 entries.*is 11"),
    ):
        plan_export(
            session, node_id="uk-aisi", first=None, last=None, kinds=(), artifact=None,
            max_entries=5,
        )  # fmt: skip


def test_an_unsigned_log_has_nothing_to_export(tmp_path: Path) -> None:
    fresh = make_node(tmp_path, "ca-aisi", f"sqlite:///{tmp_path / 'ca.db'}")
    try:
        with pytest.raises(NotFoundError, match="no signed checkpoint"):
            export(fresh)
    finally:
        fresh.db.dispose()
