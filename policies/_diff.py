"""What an MOU amendment changes: two policy sets compared per partner, action and rule.

Rules are matched by kind and id. Every change says whether it ``widens`` what the partner
relationship allows (a new permit, a label added to a permit, a forbid removed, an obligation
dropped, a permit's own window made longer), ``narrows`` it, is ``mixed``, or is ``neutral``
(wording, clause references).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime

from crypto.vocab import TLP_LABELS
from policies._model import Forbid, Permit, Policy, format_time
from policies._set import PolicySet
from policies._summary import describe_conditions
from policies._vocab import ACTIONS, within

__all__ = ["Change", "diff"]

WIDENS, NARROWS, MIXED, NEUTRAL = "widens", "narrows", "mixed", "neutral"
_FLIP = {WIDENS: NARROWS, NARROWS: WIDENS, MIXED: MIXED, NEUTRAL: NEUTRAL}


@dataclass(frozen=True, order=True)
class Change:
    """One difference. ``action`` is ``*`` for the policy as a whole."""

    partner: str
    action: str
    subject: str  # "policy", "permit <id>", "forbid <id>"
    change: str  # added | removed | changed
    detail: str
    effect: str  # widens | narrows | mixed | neutral


def _covers(scopes: frozenset[str] | None, terms: frozenset[str] | None) -> bool:
    """Whether a condition ``scopes`` admits everything ``terms`` admits (``None`` is any)."""
    if scopes is None:
        return True
    if terms is None:
        return False
    return all(any(within(t, s) for s in scopes) for t in terms)


def _direction(old_admits_new: bool, new_admits_old: bool) -> str:
    if old_admits_new and new_admits_old:
        return NEUTRAL
    if new_admits_old:
        return WIDENS
    if old_admits_new:
        return NARROWS
    return MIXED


def _show(values: frozenset[str] | None, ordered: tuple[str, ...] = ()) -> str:
    if values is None:
        return "any"
    if ordered:
        return ", ".join(v for v in ordered if v in values)
    return ", ".join(sorted(values))


def _rule_changes(old: Permit | Forbid, new: Permit | Forbid) -> Iterator[tuple[str, str]]:
    """(detail, effect as seen for a permit) for each changed field of a rule."""
    for name, ordered in (("tlp", TLP_LABELS), ("topics", ()), ("purposes", ()), ("onward_to", ())):
        a, b = getattr(old, name), getattr(new, name)
        if a != b:
            effect = _direction(_covers(a, b), _covers(b, a))
            yield f"{name}: {_show(a, ordered)} -> {_show(b, ordered)}", effect
    for name in ("embargo", "expiry", "sealing"):
        a, b = getattr(old, name), getattr(new, name)
        if a != b:
            effect = WIDENS if b == "any" else NARROWS if a == "any" else MIXED
            yield f"{name}: {a} -> {b}", effect
    if isinstance(old, Permit) and isinstance(new, Permit):
        if old.originator_approval != new.originator_approval:
            yield (
                f"originator approval: {'required' if old.originator_approval else 'not required'}"
                f" -> {'required' if new.originator_approval else 'not required'}",
                NARROWS if new.originator_approval else WIDENS,
            )
        gone = set(old.obligations) - set(new.obligations)
        added = set(new.obligations) - set(old.obligations)
        for o in sorted(added):
            yield f"obligation added: {o.describe()}", NARROWS
        for o in sorted(gone):
            yield f"obligation removed: {o.describe()}", WIDENS
    if old.clause != new.clause:
        yield f"clause: {old.clause} -> {new.clause}", NEUTRAL
    if old.description != new.description:
        yield "description reworded", NEUTRAL


def _span(rule: Permit | Forbid, policy: Policy) -> tuple[datetime, datetime]:
    """When ``rule`` is in force: its own window within its policy's, else the policy's."""
    if rule.window is None:
        return policy.valid_from, policy.valid_until
    return max(rule.window[0], policy.valid_from), min(rule.window[1], policy.valid_until)


def _window_changes(
    old_rule: Permit | Forbid, old: Policy, new_rule: Permit | Forbid, new: Policy
) -> Iterator[tuple[str, str]]:
    """(detail, effect as seen for a permit) when a rule's own window changed; a change of the
    whole policy's window is the header's to report."""
    a, b = _span(old_rule, old), _span(new_rule, new)
    whole_old, whole_new = (old.valid_from, old.valid_until), (new.valid_from, new.valid_until)
    if a == b or (a == whole_old and b == whole_new):
        return
    effect = _direction(a[0] <= b[0] and b[1] <= a[1], b[0] <= a[0] and a[1] <= b[1])
    before, after = (" until ".join(format_time(t) for t in span) for span in (a, b))
    yield f"in force: {before} -> {after}", effect


def _policy_changes(old: Policy, new: Policy) -> Iterator[Change]:
    partner = new.partner

    def header(detail: str, effect: str) -> Change:
        return Change(partner, "*", "policy", "changed", detail, effect)

    if old.id != new.id:
        yield header(f"id: {old.id} -> {new.id}", NEUTRAL)
    if old.version != new.version:
        yield header(f"version: {old.version} -> {new.version}", NEUTRAL)
        if new.version < old.version:
            yield header("warning: the version went down", MIXED)
    elif old != new:
        yield header(f"warning: the terms changed but the version is still {new.version}", MIXED)
    if old.mou != new.mou:
        yield header(f"mou: {old.mou} -> {new.mou}", NEUTRAL)
    if old.valid_from != new.valid_from:
        effect = WIDENS if new.valid_from < old.valid_from else NARROWS
        yield header(
            f"valid_from: {format_time(old.valid_from)} -> {format_time(new.valid_from)}", effect
        )
    if old.valid_until != new.valid_until:
        effect = WIDENS if new.valid_until > old.valid_until else NARROWS
        yield header(
            f"valid_until: {format_time(old.valid_until)} -> {format_time(new.valid_until)}",
            effect,
        )
    if old.approved_by != new.approved_by:
        names = ", ".join(f"{a.name} ({a.date.isoformat()})" for a in new.approved_by)
        yield header(f"approved by: {names}", NEUTRAL)
    old_rules = {(r.kind, r.id): r for r in old.rules}
    new_rules = {(r.kind, r.id): r for r in new.rules}
    for key in sorted(old_rules.keys() | new_rules.keys()):
        kind, rule_id = key
        subject = f"{kind} {rule_id}"
        flip = kind == "forbid"
        a, b = old_rules.get(key), new_rules.get(key)
        for action in ACTIONS:
            in_a = a is not None and action in a.actions
            in_b = b is not None and action in b.actions
            if not in_a and not in_b:
                continue
            if in_b and not in_a and b is not None:
                effect = NARROWS if flip else WIDENS
                what = "added" if a is None else "changed"
                detail = _describe_rule(b) if a is None else f"now covers {action}"
                yield Change(partner, action, subject, what, detail, effect)
            elif in_a and not in_b and a is not None:
                effect = WIDENS if flip else NARROWS
                what = "removed" if b is None else "changed"
                detail = _describe_rule(a) if b is None else f"no longer covers {action}"
                yield Change(partner, action, subject, what, detail, effect)
            elif a is not None and b is not None:
                for detail, effect in (*_rule_changes(a, b), *_window_changes(a, old, b, new)):
                    yield Change(
                        partner,
                        action,
                        subject,
                        "changed",
                        detail,
                        _FLIP[effect] if flip else effect,
                    )


def _describe_rule(rule: Permit | Forbid) -> str:
    parts = [rule.clause, f"tlp {_show(rule.tlp, TLP_LABELS)}"]
    if rule.topics is not None:
        parts.append(f"topics {_show(rule.topics)}")
    if rule.purposes is not None:
        parts.append(f"purposes {_show(rule.purposes)}")
    conditions = describe_conditions(rule)
    if conditions != "-":
        parts.append(conditions)
    if isinstance(rule, Permit) and rule.obligations:
        parts.append("obligations " + ", ".join(o.kind for o in rule.obligations))
    return "; ".join(parts)


def diff(old: PolicySet, new: PolicySet) -> tuple[Change, ...]:
    """Every difference from ``old`` to ``new``, by partner, then action, then rule."""
    changes: list[Change] = []
    for partner in sorted(set(old.partners) | set(new.partners)):
        a, b = old.get(partner), new.get(partner)
        if a is None and b is not None:
            changes.append(
                Change(partner, "*", "policy", "added", f"{b.id} version {b.version}", WIDENS)
            )
        elif b is None and a is not None:
            changes.append(
                Change(partner, "*", "policy", "removed", f"{a.id} version {a.version}", NARROWS)
            )
        elif a is not None and b is not None:
            changes.extend(_policy_changes(a, b))
    order = {a: i for i, a in enumerate(("*", *ACTIONS))}
    return tuple(sorted(changes, key=lambda c: (c.partner, order[c.action], c.subject)))
