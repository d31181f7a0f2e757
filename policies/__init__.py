"""MOU terms as code: the policy model, its loader and validator, the evaluator and explanations.

Each partner's terms are one YAML file (format ``entente.policy/v1``, JSON Schema in
``policies/schema/policy.schema.json``), loaded strictly by :func:`load_policy`. A node's
policies form a :class:`PolicySet`, one per partner node id. :func:`evaluate` decides a
:class:`Request` at a given time: deny by default, forbid overrides permit, any error is a deny,
rule order never matters, an allow carries the union of the matching permits' obligations. The
:class:`Decision` names the deciding rules and their MOU clauses, the unmet conditions of every
candidate permit, and the exact policy (``policy_ref``: id, version, SHA-256 of the file);
:func:`explain` and :func:`summarize` put it in words.

Pure: no I/O beyond the thin file conveniences (:func:`load_file`, :func:`load_dir`, reading the
packaged schema and examples), no settings, no database; ``now`` is always a parameter. This
package never imports ``service/``; TLP labels, node ids and terms follow the federation's
grammar in ``crypto.vocab``.
"""

from __future__ import annotations

from policies._cases import Case, CaseFile, CaseResult, Expectation, load_cases, run_cases
from policies._decision import Decision, Unmet, summarize
from policies._diff import Change, diff
from policies._evaluate import evaluate
from policies._examples import example_files, example_nodes, examples_dir
from policies._explain import describe_request, explain
from policies._loader import (
    CASES_SUFFIX,
    load_dir,
    load_file,
    load_policy,
    parse_time,
    policy_files,
    schema,
)
from policies._model import (
    Approval,
    Forbid,
    Obligation,
    Permit,
    Policy,
    PolicyRef,
    Request,
    RuleRef,
    format_time,
)
from policies._set import PolicySet
from policies._summary import SummaryRow, summarize_policy
from policies._vocab import ACTIONS, FORMAT, OBLIGATION_KINDS, SEALING_KINDS
from policies.errors import PolicyError, PolicyEvaluationError, PolicyLoadError, PolicySetError

__all__ = [
    "ACTIONS",
    "CASES_SUFFIX",
    "FORMAT",
    "OBLIGATION_KINDS",
    "SEALING_KINDS",
    "Approval",
    "Case",
    "CaseFile",
    "CaseResult",
    "Change",
    "Decision",
    "Expectation",
    "Forbid",
    "Obligation",
    "Permit",
    "Policy",
    "PolicyError",
    "PolicyEvaluationError",
    "PolicyLoadError",
    "PolicyRef",
    "PolicySet",
    "PolicySetError",
    "Request",
    "RuleRef",
    "SummaryRow",
    "Unmet",
    "describe_request",
    "diff",
    "evaluate",
    "example_files",
    "example_nodes",
    "examples_dir",
    "explain",
    "format_time",
    "load_cases",
    "load_dir",
    "load_file",
    "load_policy",
    "parse_time",
    "policy_files",
    "run_cases",
    "schema",
    "summarize",
    "summarize_policy",
]
