"""The policy model: a partner's MOU terms as frozen values.

A :class:`Policy` is one file: a header and its ``permit`` and ``forbid`` rules. Constructing one
checks the invariants that a schema cannot express (unique rule ids, a window that is not empty,
onward conditions only on ``onward_share`` rules). This module does not read files, compile or
evaluate (``_loader``, ``_compile``, ``_evaluate``); it imports only the vocabulary and errors.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any, ClassVar

from crypto.vocab import TLP_LABELS, is_node_id, is_term
from policies._vocab import (
    ACTIONS,
    EMBARGO_STATES,
    EXPIRY_STATES,
    FORMAT,
    OBLIGATION_KINDS,
    SEALING_STATES,
)
from policies.errors import PolicyLoadError

__all__ = [
    "Approval",
    "Forbid",
    "Obligation",
    "Permit",
    "Policy",
    "PolicyRef",
    "Request",
    "RuleRef",
    "Window",
    "format_time",
]


# A rule's own window, ``(valid_from, valid_until)``: the rule is in force only when
# ``valid_from <= now < valid_until`` (and its policy is). Rules of an agreement carry the window
# of the terms entry they come from, so merging entries never lends one entry's window to another.
Window = tuple[datetime, datetime]


def format_time(value: datetime) -> str:
    """RFC 3339 in UTC with a ``Z``, the form used in documents, explanations and JSON."""
    # isoformat, not strftime: glibc's %Y does not pad years before 1000 ("500-01-01"), which
    # no RFC 3339 parser accepts back.
    value = value.astimezone(UTC).replace(tzinfo=None)
    return value.isoformat(timespec="microseconds" if value.microsecond else "seconds") + "Z"


@dataclass(frozen=True, order=True, slots=True)
class Obligation:
    """One obligation from the closed list. Only the fields of its ``kind`` are set.

    - ``attribute``: credit the originator as ``text``
    - ``retain_max``: keep the artifact at most ``days`` days
    - ``delete_at_expiry``: delete the artifact when it expires
    - ``inform``: notify the originator when the artifact is read
    - ``onward``: it may be passed on only to the nodes in ``to``, with the originator's approval
      when ``originator_approval``; its TLP label is never loosened
    """

    kind: str
    text: str = ""
    days: int = 0
    to: tuple[str, ...] = ()
    originator_approval: bool = False

    @classmethod
    def attribute(cls, text: str) -> Obligation:
        return cls("attribute", text=text)

    @classmethod
    def retain_max(cls, days: int) -> Obligation:
        return cls("retain_max", days=days)

    @classmethod
    def delete_at_expiry(cls) -> Obligation:
        return cls("delete_at_expiry")

    @classmethod
    def inform(cls) -> Obligation:
        return cls("inform")

    @classmethod
    def onward(cls, to: Iterable[str], *, originator_approval: bool) -> Obligation:
        return cls("onward", to=tuple(sorted(set(to))), originator_approval=originator_approval)

    def describe(self) -> str:
        """How a policy officer would say it."""
        if self.kind == "attribute":
            return f"attribute the originator as {self.text!r}"
        if self.kind == "retain_max":
            return f"retain at most {self.days} day{'s' if self.days != 1 else ''}"
        if self.kind == "delete_at_expiry":
            return "delete at expiry"
        if self.kind == "inform":
            return "inform the originator on read"
        if self.kind == "onward":
            approval = " with the originator's approval" if self.originator_approval else ""
            return f"onward only to {', '.join(self.to)}{approval}; TLP never loosened"
        return self.kind

    def to_json(self) -> dict[str, Any]:
        """The obligation as it appears in manifests and problem documents."""
        out: dict[str, Any] = {"kind": self.kind}
        if self.kind == "attribute":
            out["text"] = self.text
        elif self.kind == "retain_max":
            out["days"] = self.days
        elif self.kind == "onward":
            out["to"] = list(self.to)
            out["originator_approval"] = self.originator_approval
        return out

    def to_document(self) -> Any:
        """The value under ``obligations: {kind: ...}`` in a policy file."""
        if self.kind == "attribute":
            return self.text
        if self.kind == "retain_max":
            return {"days": self.days}
        if self.kind == "onward":
            return {"to": list(self.to), "originator_approval": self.originator_approval}
        return True


@dataclass(frozen=True, slots=True)
class Permit:
    """A rule that allows a request when every one of its conditions holds.

    ``topics`` and ``purposes`` are hierarchical: a request term matches when it is a rule term
    or below one (``evaluation/red-teaming`` is within ``evaluation``, never the reverse), and
    every term of the request must match. ``None`` means the rule does not constrain it.
    ``sealing: post-quantum`` holds only for an artifact sealed to hybrid ML-KEM recipients (a
    request whose sealing is not known does not hold).
    """

    kind: ClassVar[str] = "permit"

    id: str
    clause: str
    actions: frozenset[str]
    tlp: frozenset[str]
    topics: frozenset[str] | None = None
    purposes: frozenset[str] | None = None
    embargo: str = "ended"
    expiry: str = "any"
    sealing: str = "any"
    onward_to: frozenset[str] | None = None
    originator_approval: bool = False
    obligations: tuple[Obligation, ...] = ()
    description: str = ""
    line: int = field(default=0, compare=False)
    document: str = field(default="", compare=False)  # the signed agreement it comes from
    window: Window | None = None  # that document's [valid_from, valid_until); None: the policy's


@dataclass(frozen=True, slots=True)
class Forbid:
    """A rule that denies a request when every one of its conditions holds.

    ``topics`` and ``purposes`` hold when any term of the request is a rule term or below one.
    A forbid errs towards matching: a request that lacks an attribute the rule tests (no topics,
    no purposes, no onward target, no sealing kind) cannot rule it out, so it matches.
    """

    kind: ClassVar[str] = "forbid"

    id: str
    clause: str
    actions: frozenset[str]
    tlp: frozenset[str] | None = None
    topics: frozenset[str] | None = None
    purposes: frozenset[str] | None = None
    embargo: str = "any"
    expiry: str = "any"
    sealing: str = "any"
    onward_to: frozenset[str] | None = None
    description: str = ""
    line: int = field(default=0, compare=False)
    document: str = field(default="", compare=False)  # the signed agreement it comes from
    window: Window | None = None  # that document's [valid_from, valid_until); None: the policy's


@dataclass(frozen=True, slots=True)
class Approval:
    """Who approved the policy, in which role, on which date."""

    name: str
    role: str
    date: date


@dataclass(frozen=True, slots=True)
class PolicyRef:
    """What a signed manifest or an audit event records about the policy that decided."""

    id: str
    version: int
    sha256: str

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "version": self.version, "sha256": self.sha256}


@dataclass(frozen=True, slots=True)
class RuleRef:
    """A rule as a decision names it: id, kind (``permit``/``forbid``), MOU clause."""

    id: str
    kind: str
    clause: str
    description: str = ""
    document: str = ""  # the signed agreement (and its part) the rule is from, if any

    def to_json(self) -> dict[str, str]:
        out = {"id": self.id, "kind": self.kind, "clause": self.clause}
        if self.document:
            out["document"] = self.document
        return out


@dataclass(frozen=True, slots=True)
class Request:
    """What is asked of a partner's policy. Times are timezone-aware; ``None`` means absent.

    ``partner`` is the partner node the policy is about: the recipient of a ``share``, the
    sender of a ``receive``, the originator of what is ``read`` or passed on (``onward_share``,
    whose third node is ``onward_to``).
    """

    partner: str
    action: str
    tlp: str | None
    topics: frozenset[str] = frozenset()
    purposes: frozenset[str] = frozenset()
    embargo_until: datetime | None = None
    expires_at: datetime | None = None
    onward_to: str | None = None
    originator_approved: bool = False
    sealing: str | None = None  # post-quantum | classic; None when not known

    def __post_init__(self) -> None:
        for name in ("topics", "purposes"):
            value = getattr(self, name)
            if isinstance(value, str):
                raise TypeError(f"{name} must be a collection of terms, not a string")
            if not isinstance(value, frozenset):
                object.__setattr__(self, name, frozenset(value))

    def to_json(self) -> dict[str, Any]:
        return {
            "partner": self.partner,
            "action": self.action,
            "tlp": self.tlp,
            "topics": sorted(self.topics),
            "purposes": sorted(self.purposes),
            "embargo_until": format_time(self.embargo_until) if self.embargo_until else None,
            "expires_at": format_time(self.expires_at) if self.expires_at else None,
            "onward_to": self.onward_to,
            "originator_approved": self.originator_approved,
            "sealing": self.sealing,
        }


Rule = Permit | Forbid


@dataclass(frozen=True)
class Policy:
    """One partner's MOU terms: the header of the file and its rules.

    ``valid_from <= now < valid_until`` is the window in which the policy is in force; a rule
    with its own ``window`` (a rule from an agreement's terms) is in force only within both.
    ``sha256`` is the digest of the file's bytes; for a policy built in code it is the digest of
    its canonical JSON document. Rule order carries no meaning.
    """

    id: str
    version: int
    mou: str
    partner: str
    valid_from: datetime
    valid_until: datetime
    approved_by: tuple[Approval, ...]
    permits: tuple[Permit, ...]
    forbids: tuple[Forbid, ...] = ()
    description: str = ""
    source: str = field(default="<policy>", compare=False)
    sha256: str = field(default="", compare=False)
    # The evaluator's precompiled form (``policies._compile``), filled on first evaluation.
    _compiled: Any = field(init=False, repr=False, compare=False, default=None)

    def __post_init__(self) -> None:
        problems = list(_check(self))
        if problems:
            raise PolicyLoadError(self.source, problems)
        if not self.sha256:
            canonical = json.dumps(self.to_document(), sort_keys=True, separators=(",", ":"))
            object.__setattr__(self, "sha256", hashlib.sha256(canonical.encode()).hexdigest())

    @property
    def ref(self) -> PolicyRef:
        return PolicyRef(self.id, self.version, self.sha256)

    @property
    def policy_ref(self) -> dict[str, Any]:
        """``{"id", "version", "sha256"}``: what a manifest records about this policy."""
        return self.ref.to_json()

    @property
    def rules(self) -> tuple[Rule, ...]:
        return (*self.permits, *self.forbids)

    def in_force(self, now: datetime) -> bool:
        return self.valid_from <= now < self.valid_until

    def to_document(self) -> dict[str, Any]:
        """The policy as a document of the YAML format (a round trip through the loader)."""
        doc: dict[str, Any] = {
            "format": FORMAT,
            "id": self.id,
            "version": self.version,
            "mou": self.mou,
            "partner": self.partner,
            "valid_from": format_time(self.valid_from),
            "valid_until": format_time(self.valid_until),
            "approved_by": [
                {"name": a.name, "role": a.role, "date": a.date.isoformat()}
                for a in self.approved_by
            ],
        }
        if self.description:
            doc["description"] = self.description
        doc["permit"] = [_rule_document(r) for r in self.permits]
        if self.forbids:
            doc["forbid"] = [_rule_document(r) for r in self.forbids]
        return doc


def _rule_document(rule: Rule) -> dict[str, Any]:
    out: dict[str, Any] = {"id": rule.id, "clause": rule.clause}
    if rule.description:
        out["description"] = rule.description
    out["actions"] = [a for a in ACTIONS if a in rule.actions]
    if rule.tlp is not None:
        out["tlp"] = [t for t in TLP_LABELS if t in rule.tlp]
    for name in ("topics", "purposes", "onward_to"):
        value = getattr(rule, name)
        if value is not None:
            out[name] = sorted(value)
    if rule.embargo != ("ended" if isinstance(rule, Permit) else "any"):
        out["embargo"] = rule.embargo
    if rule.expiry != "any":
        out["expiry"] = rule.expiry
    if rule.sealing != "any":
        out["sealing"] = rule.sealing
    if isinstance(rule, Permit):
        if rule.originator_approval:
            out["originator_approval"] = True
        if rule.obligations:
            out["obligations"] = {o.kind: o.to_document() for o in rule.obligations}
    return out


def _check(policy: Policy) -> Iterator[tuple[int, str]]:
    """Invariants of a policy, as ``(line, problem)``; the loader has checked the vocabulary."""
    if not is_node_id(policy.partner):
        yield 0, f"invalid partner node id {policy.partner!r}"
    if isinstance(policy.version, bool) or not isinstance(policy.version, int):
        yield 0, "version must be a whole number"
    elif policy.version < 1:
        yield 0, "version must be 1 or more"
    for name in ("valid_from", "valid_until"):
        value = getattr(policy, name)
        if not isinstance(value, datetime) or value.utcoffset() is None:
            yield 0, f"{name} must be a time with a timezone"
            return
    if policy.valid_until <= policy.valid_from:
        yield (
            0,
            (
                f"valid_until ({format_time(policy.valid_until)}) is not after "
                f"valid_from ({format_time(policy.valid_from)})"
            ),
        )
    if not policy.approved_by:
        yield 0, "approved_by is empty: a policy needs at least one approval"
    seen: dict[str, int] = {}
    for rule in policy.rules:
        if rule.id in seen:
            yield rule.line, f"duplicate rule id {rule.id!r} (first used on line {seen[rule.id]})"
        else:
            seen[rule.id] = rule.line
        yield from _check_rule(rule)


def _check_rule(rule: Rule) -> Iterator[tuple[int, str]]:
    where = f"{rule.kind} rule {rule.id!r}"
    line = rule.line
    if not rule.id:
        yield line, f"a {rule.kind} rule has an empty id"
    if not rule.clause.strip():
        yield line, f"{where} has an empty clause"
    if not rule.actions:
        yield line, f"{where} lists no actions"
    for action in sorted(rule.actions - set(ACTIONS)):
        yield line, f"{where}: unknown action {action!r}"
    if rule.tlp is not None:
        if not rule.tlp:
            yield line, f"{where} lists no TLP labels"
        for label in sorted(rule.tlp - set(TLP_LABELS)):
            yield line, f"{where}: unknown TLP label {label!r}"
    for name in ("topics", "purposes"):
        terms = getattr(rule, name)
        if terms is not None:
            if not terms:
                yield line, f"{where}: {name} is empty (leave it out to allow any)"
            for term in sorted(terms):
                if not is_term(term):
                    yield line, f"{where}: invalid term {term!r} in {name}"
    if rule.window is not None:
        start, stop = rule.window
        if start.utcoffset() is None or stop.utcoffset() is None:
            yield line, f"{where}: its window must be times with a timezone"
        elif stop <= start:
            yield (
                line,
                f"{where}: its window is empty (valid_until {format_time(stop)} is not after "
                f"valid_from {format_time(start)})",
            )
    if rule.embargo not in EMBARGO_STATES:
        yield line, f"{where}: embargo must be one of {', '.join(EMBARGO_STATES)}"
    if rule.expiry not in EXPIRY_STATES:
        yield line, f"{where}: expiry must be one of {', '.join(EXPIRY_STATES)}"
    if rule.sealing not in SEALING_STATES:
        yield line, f"{where}: sealing must be one of {', '.join(SEALING_STATES)}"
    onward_only = rule.actions == {"onward_share"}
    if rule.onward_to is not None:
        if not onward_only:
            yield (
                line,
                f"{where}: onward_to applies only to a rule whose actions are [onward_share]",
            )
        if not rule.onward_to:
            yield line, f"{where}: onward_to is empty"
        for node in sorted(rule.onward_to):
            if not is_node_id(node):
                yield line, f"{where}: invalid node id {node!r} in onward_to"
    if isinstance(rule, Permit):
        if rule.originator_approval and not onward_only:
            yield (
                line,
                (
                    f"{where}: originator_approval applies only to a rule whose actions are "
                    "[onward_share]"
                ),
            )
        if "onward_share" in rule.actions and rule.onward_to is None:
            yield line, f"{where} permits onward_share but does not say to whom (onward_to)"
        kinds = [o.kind for o in rule.obligations]
        for kind in sorted(set(kinds) - set(OBLIGATION_KINDS)):
            yield line, f"{where}: unknown obligation {kind!r}"
        if len(set(kinds)) != len(kinds):
            yield line, f"{where}: an obligation is listed twice"
        for o in rule.obligations:
            if o.kind == "retain_max" and o.days < 1:
                yield line, f"{where}: retain_max must be at least 1 day"
            if o.kind == "onward" and not o.to:
                yield line, f"{where}: the onward obligation names no node"
