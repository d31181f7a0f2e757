"""Policies precompiled for the evaluator: rules bucketed by (action, TLP label).

:func:`compiled_form` turns a :class:`~policies._model.Policy` into buckets keyed by (action, TLP
label) once, on its first evaluation, and keeps the result on the policy; each condition of a
compiled rule is then a set lookup or a prefix test. Rules with their own window (agreement
terms merged into one policy) cut the policy's window into segments, each with the buckets of
the rules in force throughout it, so a rule out of its window is never looked at. This module
builds no decision and no sentence (see ``_evaluate`` and ``_decision``).
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence
from datetime import datetime

from crypto.vocab import TLP_LABELS
from policies._model import Forbid, Permit, Policy, PolicyRef, RuleRef, Window
from policies._vocab import ACTIONS

__all__ = ["Compiled", "compile_policy", "compiled_form"]

_ANY, _ENDED, _ACTIVE = 0, 1, 2  # embargo
_SET, _UNSET = 1, 2  # expiry (0 is any)
_EMBARGO = {"any": _ANY, "ended": _ENDED, "active": _ACTIVE}
_EXPIRY = {"any": _ANY, "set": _SET, "unset": _UNSET}
_SEALING = {"any": None, "post-quantum": "post-quantum", "classic": "classic"}


def _terms(values: frozenset[str] | None) -> tuple[frozenset[str] | None, tuple[str, ...]]:
    """(exact terms, ``term/`` prefixes) of a rule's topics or purposes."""
    if values is None:
        return None, ()
    return values, tuple(sorted(v + "/" for v in values))


class _CPermit:
    __slots__ = (
        "approval",
        "embargo",
        "expiry",
        "obligations",
        "onward_to",
        "purpose_prefixes",
        "purposes",
        "ref",
        "rule",
        "sealing",
        "sorted_obligations",
        "topic_prefixes",
        "topics",
    )

    def __init__(self, rule: Permit) -> None:
        self.rule = rule
        self.ref = RuleRef(rule.id, "permit", rule.clause, rule.description, rule.document)
        self.topics, self.topic_prefixes = _terms(rule.topics)
        self.purposes, self.purpose_prefixes = _terms(rule.purposes)
        self.embargo = _EMBARGO[rule.embargo]
        self.expiry = _EXPIRY[rule.expiry]
        self.sealing = _SEALING[rule.sealing]
        self.onward_to = rule.onward_to
        self.approval = rule.originator_approval
        self.obligations = frozenset(rule.obligations)
        self.sorted_obligations = tuple(sorted(self.obligations))

    def holds(
        self,
        topics: frozenset[str],
        purposes: frozenset[str],
        embargoed: bool,
        has_expiry: bool,
        onward_to: str | None,
        approved: bool,
        sealing: str | None,
    ) -> bool:
        exact = self.topics
        if exact is not None:
            if not topics:
                return False
            prefixes = self.topic_prefixes
            for t in topics:
                if t not in exact and not t.startswith(prefixes):
                    return False
        exact = self.purposes
        if exact is not None:
            if not purposes:
                return False
            prefixes = self.purpose_prefixes
            for t in purposes:
                if t not in exact and not t.startswith(prefixes):
                    return False
        embargo = self.embargo
        if embargo and embargoed is (embargo == _ENDED):
            return False
        expiry = self.expiry
        if expiry and has_expiry is (expiry == _UNSET):
            return False
        if self.sealing is not None and sealing != self.sealing:
            return False  # an unknown sealing kind does not meet a rule that names one
        if self.onward_to is not None and onward_to not in self.onward_to:
            return False
        return approved or not self.approval


class _CForbid:
    __slots__ = (
        "embargo",
        "expiry",
        "onward_to",
        "purpose_prefixes",
        "purposes",
        "ref",
        "rule",
        "sealing",
        "topic_prefixes",
        "topics",
    )

    def __init__(self, rule: Forbid) -> None:
        self.rule = rule
        self.ref = RuleRef(rule.id, "forbid", rule.clause, rule.description, rule.document)
        self.topics, self.topic_prefixes = _terms(rule.topics)
        self.purposes, self.purpose_prefixes = _terms(rule.purposes)
        self.embargo = _EMBARGO[rule.embargo]
        self.expiry = _EXPIRY[rule.expiry]
        self.sealing = _SEALING[rule.sealing]
        self.onward_to = rule.onward_to

    def matches(
        self,
        topics: frozenset[str],
        purposes: frozenset[str],
        embargoed: bool,
        has_expiry: bool,
        onward_to: str | None,
        sealing: str | None,
    ) -> bool:
        # A forbid matches when any term of the request is within one of its terms; a request
        # without the attribute cannot rule the forbid out, so it matches too (fail closed).
        exact = self.topics
        if exact is not None and topics:
            prefixes = self.topic_prefixes
            for t in topics:
                if t in exact or t.startswith(prefixes):
                    break
            else:
                return False
        exact = self.purposes
        if exact is not None and purposes:
            prefixes = self.purpose_prefixes
            for t in purposes:
                if t in exact or t.startswith(prefixes):
                    break
            else:
                return False
        embargo = self.embargo
        if embargo and embargoed is (embargo == _ENDED):
            return False
        expiry = self.expiry
        if expiry and has_expiry is (expiry == _UNSET):
            return False
        if self.sealing is not None and sealing is not None and sealing != self.sealing:
            return False
        return not (
            self.onward_to is not None and onward_to is not None and onward_to not in self.onward_to
        )


Buckets = dict[tuple[str, str], tuple[tuple[_CForbid, ...], tuple[_CPermit, ...]]]


class Compiled:
    """A policy ready for evaluation: its rules bucketed by (action, TLP label).

    ``cuts`` are the times inside the policy's window where a rule with its own window comes
    into or goes out of force; ``segments[i]`` holds the buckets of the rules in force from the
    ``i``-th cut (from ``valid_from`` for the first) until the next. Without such rules there is
    one segment. ``candidates`` keeps every permit, in force or not, for explanations.
    """

    __slots__ = ("candidates", "cuts", "policy", "ref", "segments", "valid_from", "valid_until")

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.ref = PolicyRef(policy.id, policy.version, policy.sha256)
        self.valid_from = policy.valid_from
        self.valid_until = policy.valid_until
        permits = [_CPermit(r) for r in sorted(policy.permits, key=lambda r: r.id)]
        forbids = [_CForbid(r) for r in sorted(policy.forbids, key=lambda r: r.id)]
        self.candidates = {a: tuple(p for p in permits if a in p.rule.actions) for a in ACTIONS}
        inside = {
            t
            for r in policy.rules
            if r.window is not None
            for t in r.window
            if self.valid_from < t < self.valid_until
        }
        self.cuts = tuple(sorted(inside))
        self.segments = tuple(
            _buckets(
                [p for p in permits if _in_force(p.rule.window, start)],
                [f for f in forbids if _in_force(f.rule.window, start)],
            )
            for start in (self.valid_from, *self.cuts)
        )

    def buckets_at(self, now: datetime) -> Buckets:
        """The buckets of the rules in force at ``now`` (a time within the policy's window)."""
        if not self.cuts:
            return self.segments[0]
        return self.segments[bisect_right(self.cuts, now)]


def _in_force(window: Window | None, start: datetime) -> bool:
    """Whether a rule with ``window`` is in force over the segment that begins at ``start``
    (no window of a rule begins or ends inside a segment)."""
    return window is None or window[0] <= start < window[1]


def _buckets(permits: Sequence[_CPermit], forbids: Sequence[_CForbid]) -> Buckets:
    return {
        (action, label): (
            tuple(
                f
                for f in forbids
                if action in f.rule.actions and (f.rule.tlp is None or label in f.rule.tlp)
            ),
            tuple(p for p in permits if action in p.rule.actions and label in p.rule.tlp),
        )
        for action in ACTIONS
        for label in TLP_LABELS
    }


def compile_policy(policy: Policy) -> Compiled:
    return Compiled(policy)


def compiled_form(policy: Policy) -> Compiled:
    """The compiled form of ``policy``, built on first use and kept on the policy."""
    done: Compiled | None = policy._compiled
    if done is None:
        done = compile_policy(policy)
        object.__setattr__(policy, "_compiled", done)
    return done
