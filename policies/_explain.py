"""Decisions in words, the way a policy officer reads them.

:func:`summarize` gives one line (logs, problem documents, the demo); :func:`explain` gives the
full account: the request, the deciding rules with their clauses and the conditions that held,
every candidate permit that did not hold and why, the obligations, and the exact policy.
"""

from __future__ import annotations

from policies._evaluate import FORBIDDEN, NO_MATCHING_PERMIT, PERMITTED, Decision, RuleRef
from policies._model import Request, format_time

__all__ = ["describe_request", "explain", "summarize"]


def _rule(ref: RuleRef) -> str:
    return f"{ref.id} ({ref.clause})"


def describe_request(request: Request) -> str:
    """``TLP:AMBER; topics evaluation; purposes evaluation/red-teaming`` and the like."""
    parts = [request.tlp or "no TLP label"]
    parts.append(f"topics {', '.join(sorted(request.topics))}" if request.topics else "no topics")
    if request.purposes:
        parts.append(f"purposes {', '.join(sorted(request.purposes))}")
    else:
        parts.append("no purposes")
    if request.embargo_until is not None:
        parts.append(f"embargo until {format_time(request.embargo_until)}")
    if request.expires_at is not None:
        parts.append(f"expires {format_time(request.expires_at)}")
    if request.onward_to is not None:
        parts.append(f"onward to {request.onward_to}")
    if request.originator_approved:
        parts.append("approved by the originator")
    return "; ".join(parts)


def _headline(decision: Decision) -> str:
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
    head = _headline(decision)
    if decision.reason == PERMITTED:
        rules = " and ".join(_rule(r) for r in decision.rules)
        line = f"{head}: permitted by {rules}"
        if decision.obligations:
            line += "; obligations: " + "; ".join(o.describe() for o in decision.obligations)
        return line
    if decision.reason == FORBIDDEN:
        parts = []
        for ref in decision.rules:
            why = decision.findings.get(ref.id, ())
            parts.append(f"rule {_rule(ref)} forbids it" + (f": {'; '.join(why)}" if why else ""))
        return f"{head}: " + "; ".join(parts)
    if decision.reason == NO_MATCHING_PERMIT:
        unmet = decision.unmet
        if not unmet:
            return f"{head}: no permit covers {decision.request.action}"
        reasons = "; ".join(f"{u.rule.id}: {', '.join(u.conditions)}" for u in unmet)
        return f"{head}: no permit matches ({reasons})"
    return f"{head}: {decision.detail}"


def explain(decision: Decision) -> str:
    """Several lines: everything a policy officer needs to see why, and under which terms."""
    request = decision.request
    lines = [_headline(decision), f"  request    {describe_request(request)}"]
    if decision.policy is not None:
        pref = decision.policy
        lines.append(f"  policy     {pref.id} version {pref.version} (sha256 {pref.sha256})")
    lines.append(f"  at         {format_time(decision.now)}")
    if decision.reason == PERMITTED:
        lines.append("  permitted by")
        for ref in decision.rules:
            lines.append(f"    {ref.id}  {ref.clause}")
            lines.extend(f"      + {text}" for text in decision.findings.get(ref.id, ()))
        if decision.obligations:
            lines.append("  obligations")
            lines.extend(f"    - {o.describe()}" for o in decision.obligations)
        else:
            lines.append("  obligations none")
    elif decision.reason == FORBIDDEN:
        lines.append("  forbidden by")
        for ref in decision.rules:
            lines.append(f"    {ref.id}  {ref.clause}")
            lines.extend(f"      ! {text}" for text in decision.findings.get(ref.id, ()))
    elif decision.reason == NO_MATCHING_PERMIT:
        lines.append("  no permit matches (deny by default)")
    else:
        lines.append(f"  reason     {decision.reason}: {decision.detail}")
    unmet = decision.unmet
    if unmet:
        title = "other permits" if decision.allowed else "permits that did not apply"
        lines.append(f"  {title}")
        for u in unmet:
            lines.append(f"    {u.rule.id}  {u.rule.clause}")
            lines.extend(f"      - {text}" for text in u.conditions)
    elif (
        decision.reason in (NO_MATCHING_PERMIT, FORBIDDEN)
        and decision._compiled is not None
        and not decision._compiled.candidates.get(request.action)
    ):
        lines.append(f"  no permit of this policy covers {request.action}")
    return "\n".join(lines)
