"""A decision of the evaluator, and how it explains itself in one line.

:class:`Decision` is what :func:`policies.evaluate` returns: the verdict, the deciding rules, the
obligations and the exact policy. Its explanations (the conditions that held, the candidate
permits that did not, the one-line :func:`summarize`) are computed only when asked for, from the
same request and time. This module does not evaluate (``_evaluate``) and does not write the
several-line account of a decision (``_explain``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property
from typing import Any

from crypto.vocab import TLP_LABELS
from policies._compile import Compiled
from policies._model import Forbid, Obligation, Permit, PolicyRef, Request, RuleRef, format_time
from policies._vocab import within

__all__ = [
    "ERROR",
    "EXPIRED",
    "FORBIDDEN",
    "INVALID_REQUEST",
    "NOT_IN_FORCE",
    "NO_MATCHING_PERMIT",
    "NO_POLICY",
    "PARTNER_REFUSES",
    "PERMITTED",
    "Decision",
    "Unmet",
    "headline",
    "rule_words",
    "summarize",
]

# Decision.reason: why the decision is what it is (stable strings, used in JSON and tests).
PERMITTED = "permitted"
FORBIDDEN = "forbidden"
NO_MATCHING_PERMIT = "no-matching-permit"
PARTNER_REFUSES = "partner-refuses"  # the partner's own signed terms would refuse to receive it
NO_POLICY = "no-policy"
NOT_IN_FORCE = "not-in-force"
EXPIRED = "expired"
INVALID_REQUEST = "invalid-request"
ERROR = "error"


@dataclass(frozen=True, slots=True)
class Unmet:
    """A candidate permit that did not hold, and the conditions it needed that were not met."""

    rule: RuleRef
    conditions: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {**self.rule.to_json(), "unmet": list(self.conditions)}


@dataclass(frozen=True)
class Decision:
    """The outcome of one evaluation, with everything needed to explain and record it.

    ``rules`` are the deciding rules: the matching permits of an allow, the matching forbids of a
    forbidden deny, none otherwise. ``unmet`` lists every candidate permit (those covering the
    action) that did not hold, with its unmet conditions. ``policy`` identifies the exact policy
    file (id, version, SHA-256) and is what a signed manifest records, as :attr:`policy_ref`.
    """

    allowed: bool
    reason: str
    request: Request
    now: datetime
    rules: tuple[RuleRef, ...] = ()
    obligations: tuple[Obligation, ...] = ()
    policy: PolicyRef | None = None
    detail: str = ""
    _compiled: Compiled | None = field(default=None, repr=False, compare=False)

    @property
    def effect(self) -> str:
        return "allow" if self.allowed else "deny"

    @property
    def policy_ref(self) -> dict[str, Any] | None:
        return self.policy.to_json() if self.policy else None

    @cached_property
    def unmet(self) -> tuple[Unmet, ...]:
        """Each candidate permit that did not hold, with the conditions it needed."""
        if self._compiled is None:
            return ()
        out = []
        for cp in self._compiled.candidates.get(self.request.action, ()):
            checks = _permit_checks(cp.rule, self.request, self.now)
            missing = tuple(text for ok, text in checks if not ok)
            if missing:
                out.append(Unmet(cp.ref, missing))
        return tuple(out)

    @cached_property
    def findings(self) -> dict[str, tuple[str, ...]]:
        """For each deciding rule id, the conditions of that rule that held."""
        if self._compiled is None:
            return {}
        policy = self._compiled.policy
        by_id = {r.id: r for r in policy.rules}
        out: dict[str, tuple[str, ...]] = {}
        for ref in self.rules:
            rule = by_id[ref.id]
            checks = (
                _permit_checks(rule, self.request, self.now)
                if isinstance(rule, Permit)
                else _forbid_checks(rule, self.request, self.now)
            )
            out[ref.id] = tuple(text for ok, text in checks if ok)
        return out

    @property
    def summary(self) -> str:
        """One line for a policy officer, a log line or a problem document's ``detail``."""
        return summarize(self)

    def to_json(self) -> dict[str, Any]:
        """The decision as recorded in manifests, audit events and problem documents."""
        return {
            "effect": self.effect,
            "reason": self.reason,
            "summary": self.summary,
            "request": self.request.to_json(),
            "evaluated_at": format_time(self.now),
            "rules": [r.to_json() for r in self.rules],
            "unmet": [u.to_json() for u in self.unmet],
            "obligations": [o.to_json() for o in self.obligations],
            "policy": self.policy_ref,
        }


# --- explanations (slow path) -----------------------------------------------------------------


def _labels(labels: Iterable[str]) -> str:
    return ", ".join(t for t in TLP_LABELS if t in set(labels))


def _list(values: Iterable[str]) -> str:
    return ", ".join(sorted(values))


def _embargo_text(request: Request) -> str:
    until = request.embargo_until
    return f"the artifact is under embargo until {format_time(until) if until else '?'}"


def _permit_checks(rule: Permit, request: Request, now: datetime) -> list[tuple[bool, str]]:
    """Every condition of a permit as (holds, sentence); its own window only when it is out."""
    out: list[tuple[bool, str]] = []
    if rule.window is not None and not rule.window[0] <= now < rule.window[1]:
        start, stop = (format_time(t) for t in rule.window)
        out.append((False, f"not in force: its terms run from {start} until {stop}"))
    if request.tlp in rule.tlp:
        out.append((True, f"{request.tlp} is one of {_labels(rule.tlp)}"))
    elif request.tlp is None:
        out.append((False, f"the request has no TLP label; the rule needs {_labels(rule.tlp)}"))
    else:
        out.append((False, f"{request.tlp} is not one of {_labels(rule.tlp)}"))
    for name, singular in (("topics", "topic"), ("purposes", "purpose")):
        scopes: frozenset[str] | None = getattr(rule, name)
        values: frozenset[str] = getattr(request, name)
        if scopes is None:
            continue
        if not values:
            out.append((False, f"the request names no {singular}; the rule needs {_list(scopes)}"))
            continue
        for value in sorted(values):
            inside = [s for s in sorted(scopes) if within(value, s)]
            if inside:
                out.append((True, f"{singular} {value} is within {inside[0]}"))
            else:
                out.append((False, f"{singular} {value} is not within {_list(scopes)}"))
    embargoed = request.embargo_until is not None and now < request.embargo_until
    if rule.embargo == "ended":
        if embargoed:
            out.append((False, _embargo_text(request) + "; the rule applies once it has ended"))
        else:
            out.append((True, "the artifact is not under embargo"))
    elif rule.embargo == "active":
        if embargoed:
            out.append((True, _embargo_text(request)))
        else:
            out.append((False, "the artifact is not under embargo; the rule applies during one"))
    if rule.expiry == "set":
        if request.expires_at is None:
            out.append((False, "the artifact has no expiry; the rule needs one"))
        else:
            out.append((True, f"the artifact expires at {format_time(request.expires_at)}"))
    elif rule.expiry == "unset":
        if request.expires_at is None:
            out.append((True, "the artifact has no expiry"))
        else:
            out.append((False, "the artifact has an expiry; the rule applies only without one"))
    if rule.sealing != "any":
        if request.sealing == rule.sealing:
            out.append((True, f"the artifact is sealed {rule.sealing}"))
        elif request.sealing is None:
            out.append((False, f"the sealing is not known; the rule needs {rule.sealing}"))
        else:
            out.append(
                (False, f"the artifact is sealed {request.sealing}; the rule needs {rule.sealing}")
            )
    if rule.onward_to is not None:
        if request.onward_to is None:
            out.append((False, "the request names no onward recipient"))
        elif request.onward_to in rule.onward_to:
            out.append((True, f"{request.onward_to} is one of {_list(rule.onward_to)}"))
        else:
            out.append((False, f"{request.onward_to} is not one of {_list(rule.onward_to)}"))
    if rule.originator_approval:
        if request.originator_approved is True:
            out.append((True, "the originator approved it"))
        else:
            out.append((False, "the originator has not approved it"))
    return out


def _forbid_checks(rule: Forbid, request: Request, now: datetime) -> list[tuple[bool, str]]:
    """Every condition of a forbid as (holds, sentence)."""
    out: list[tuple[bool, str]] = []
    if rule.tlp is not None:
        if request.tlp in rule.tlp:
            out.append((True, f"{request.tlp} is one of {_labels(rule.tlp)}"))
        else:
            out.append((False, f"{request.tlp} is not one of {_labels(rule.tlp)}"))
    for name, singular in (("topics", "topic"), ("purposes", "purpose")):
        scopes: frozenset[str] | None = getattr(rule, name)
        values: frozenset[str] = getattr(request, name)
        if scopes is None:
            continue
        if not values:
            out.append(
                (True, f"the request names no {singular}, so {_list(scopes)} cannot be ruled out")
            )
            continue
        hits = [(v, s) for v in sorted(values) for s in sorted(scopes) if within(v, s)]
        if hits:
            out.extend((True, f"{singular} {v} is within forbidden {s}") for v, s in hits)
        else:
            out.append((False, f"no {singular} is within {_list(scopes)}"))
    embargoed = request.embargo_until is not None and now < request.embargo_until
    if rule.embargo == "active":
        if embargoed:
            out.append((True, _embargo_text(request)))
        else:
            out.append((False, "the artifact is not under embargo"))
    elif rule.embargo == "ended":
        out.append((not embargoed, "the artifact is not under embargo"))
    if rule.expiry == "unset":
        out.append((request.expires_at is None, "the artifact has no expiry"))
    elif rule.expiry == "set":
        out.append((request.expires_at is not None, "the artifact has an expiry"))
    if rule.sealing != "any":
        if request.sealing is None:
            out.append((True, f"the sealing is not known, so {rule.sealing} cannot be ruled out"))
        else:
            out.append((request.sealing == rule.sealing, f"the artifact is sealed {rule.sealing}"))
    if rule.onward_to is not None:
        if request.onward_to is None:
            out.append((True, "the request names no onward recipient"))
        else:
            out.append(
                (
                    request.onward_to in rule.onward_to,
                    f"{request.onward_to} is one of {_list(rule.onward_to)}",
                )
            )
    if not out:
        out.append((True, f"the rule forbids every {request.action}"))
    return out


def rule_words(ref: RuleRef) -> str:
    return f"{ref.id} ({ref.clause})"


def headline(decision: Decision) -> str:
    request = decision.request
    verb = "ALLOW" if decision.allowed else "DENY"
    if request.action == "receive":
        where = f"from {request.partner}"
    elif request.action in ("read", "onward_share"):
        where = f"of an artifact from {request.partner}"
        if request.action == "onward_share" and request.onward_to:
            where += f" to {request.onward_to}"
    else:
        where = f"to {request.partner}"
    return f"{verb} {request.action} {where}"


def summarize(decision: Decision) -> str:
    """One line: the verdict, the deciding rule(s) and clause(s), and the main reason."""
    head = headline(decision)
    if decision.reason == PERMITTED:
        rules = " and ".join(rule_words(r) for r in decision.rules)
        line = f"{head}: permitted by {rules}"
        if decision.obligations:
            line += "; obligations: " + "; ".join(o.describe() for o in decision.obligations)
        return line
    if decision.reason == FORBIDDEN:
        parts = []
        for ref in decision.rules:
            why = decision.findings.get(ref.id, ())
            because = f": {'; '.join(why)}" if why else ""
            parts.append(f"rule {rule_words(ref)} forbids it{because}")
        return f"{head}: " + "; ".join(parts)
    if decision.reason == NO_MATCHING_PERMIT:
        unmet = decision.unmet
        if not unmet:
            return f"{head}: no permit covers {decision.request.action}"
        reasons = "; ".join(f"{u.rule.id}: {', '.join(u.conditions)}" for u in unmet)
        return f"{head}: no permit matches ({reasons})"
    return f"{head}: {decision.detail}"
