"""One vocabulary: the API, manifests, descriptors and policies accept the same TLP labels, node ids
and terms (``crypto.vocab``), so no policy can name what no request could ever carry."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, get_args

import pydantic
import pytest

from crypto.vocab import MAX_TERM_CHARS, NODE_ID_REGEX, TERM_REGEX, TLP_LABELS, is_node_id, is_term
from policies import PolicyLoadError, load_policy, schema
from service.schemas import NodeId, ShareMetadata, Term, TlpLabel

NODE_IDS = [
    "uk-aisi",
    "a",
    "x" * 63,
    "uk.aisi",
    "uk_aisi",
    "-uk",
    "uk-",
    "UK",
    "x" * 64,
    "",
    "uk\n",
]
TERMS = [
    "evaluation",
    "evaluation/red-teaming",
    "a/" * 59 + "a",
    "eval.v2",
    "eval_v2",
    "Evaluation",
    "evaluation/",
    "/evaluation",
    "a//b",
    "-a",
    "x" * (MAX_TERM_CHARS + 1),
    "",
]


def _api_accepts(kind: Any, value: str) -> bool:
    try:
        pydantic.TypeAdapter(kind).validate_python(value)
    except pydantic.ValidationError:
        return False
    return True


def test_the_api_and_the_policy_schema_spell_the_core_grammar() -> None:
    defs = schema()["$defs"]
    assert defs["node"]["pattern"] == NODE_ID_REGEX
    assert defs["term"]["pattern"] == TERM_REGEX
    assert defs["term"]["maxLength"] == MAX_TERM_CHARS
    assert defs["label"]["enum"] == list(TLP_LABELS)
    assert get_args(TlpLabel) == TLP_LABELS


@pytest.mark.parametrize("value", NODE_IDS)
def test_a_node_id_is_one_grammar(value: str) -> None:
    assert _api_accepts(NodeId, value) is is_node_id(value)


@pytest.mark.parametrize("value", TERMS)
def test_a_term_is_one_grammar(value: str) -> None:
    assert _api_accepts(Term, value) is is_term(value)
    share = {"title": "t", "tlp": "TLP:GREEN", "partners": ["uk-aisi"], "topics": [value]}
    try:
        ShareMetadata.model_validate(share)
        api = True
    except pydantic.ValidationError:
        api = False
    assert api is is_term(value)


POLICY = """\
format: entente.policy/v1
id: test.partner-a
version: 1
mou: Test MOU
partner: {partner}
valid_from: 2025-01-01
valid_until: 2026-12-31
approved_by:
  - {{name: T. Officer, role: Policy officer, date: 2024-12-01}}
permit:
  - id: share-eval
    clause: Test MOU §1
    actions: [share]
    tlp: [TLP:GREEN]
    topics: ["{topic}"]
"""


@pytest.mark.parametrize("value", NODE_IDS)
def test_a_policy_names_only_partners_the_api_accepts(value: str) -> None:
    text = POLICY.format(partner=f'"{value}"', topic="evaluation")
    if is_node_id(value):
        assert load_policy(text, source="p.yaml").partner == value
    else:
        with pytest.raises(PolicyLoadError) as caught:
            load_policy(text, source="p.yaml")
        assert caught.value.line == 5 and str(caught.value).startswith("p.yaml:5: ")


@pytest.mark.parametrize("value", [t for t in TERMS if "\n" not in t])
def test_a_policy_names_only_topics_the_api_accepts(value: str) -> None:
    text = POLICY.format(partner="partner-a", topic=value)
    if is_term(value):
        policy = load_policy(text, source="p.yaml")
        assert policy.permits[0].topics == frozenset({value})
        assert policy.in_force(datetime(2026, 1, 1, tzinfo=UTC))
    else:
        with pytest.raises(PolicyLoadError) as caught:
            load_policy(text, source="p.yaml")
        assert caught.value.line == 15 and str(caught.value).startswith("p.yaml:15: ")
