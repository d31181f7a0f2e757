"""What a policy allows, per action, in rows a policy officer can scan (``policy check``)."""

from __future__ import annotations

from dataclasses import dataclass

from crypto.vocab import TLP_LABELS
from policies._model import Forbid, Permit, Policy
from policies._vocab import ACTIONS

__all__ = ["SummaryRow", "describe_conditions", "summarize_policy"]


@dataclass(frozen=True)
class SummaryRow:
    action: str
    kind: str  # permit | forbid
    rule: str
    clause: str
    tlp: str
    topics: str
    purposes: str
    conditions: str
    obligations: str


def _labels(labels: frozenset[str] | None) -> str:
    if labels is None:
        return "any"
    return ", ".join(t for t in TLP_LABELS if t in labels)


def _terms(terms: frozenset[str] | None) -> str:
    return "any" if terms is None else ", ".join(sorted(terms))


def describe_conditions(rule: Permit | Forbid) -> str:
    """The embargo, expiry, sealing and onward conditions of a rule, in words."""
    parts = []
    default_embargo = "ended" if isinstance(rule, Permit) else "any"
    if rule.embargo != default_embargo or isinstance(rule, Permit):
        parts.append(
            {
                "ended": "after any embargo",
                "active": "only under embargo",
                "any": "embargo or not",
            }[rule.embargo]
        )
    if rule.expiry == "set":
        parts.append("must carry an expiry")
    elif rule.expiry == "unset":
        parts.append("without an expiry")
    if rule.sealing != "any":
        parts.append(f"sealed {rule.sealing}")
    if rule.onward_to is not None:
        parts.append("onward to " + ", ".join(sorted(rule.onward_to)))
    if isinstance(rule, Permit) and rule.originator_approval:
        parts.append("originator approval")
    return "; ".join(parts) or "-"


def summarize_policy(policy: Policy) -> tuple[SummaryRow, ...]:
    """One row per (action, rule), actions in vocabulary order, forbids first within an action."""
    rows = []
    for action in ACTIONS:
        rules: list[Permit | Forbid] = [
            *sorted((r for r in policy.forbids if action in r.actions), key=lambda r: r.id),
            *sorted((r for r in policy.permits if action in r.actions), key=lambda r: r.id),
        ]
        for rule in rules:
            obligations = (
                "; ".join(o.describe() for o in rule.obligations)
                if isinstance(rule, Permit)
                else ""
            )
            rows.append(
                SummaryRow(
                    action=action,
                    kind=rule.kind,
                    rule=rule.id,
                    clause=rule.clause,
                    tlp=_labels(rule.tlp),
                    topics=_terms(rule.topics),
                    purposes=_terms(rule.purposes),
                    conditions=describe_conditions(rule),
                    obligations=obligations or "-",
                )
            )
    return tuple(rows)
