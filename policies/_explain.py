"""Decisions in words, the way a policy officer reads them.

:func:`explain` gives the full account: the request, the deciding rules with their clauses and
the conditions that held, every candidate permit that did not hold and why, the obligations, and
the exact policy. The one line of logs, problem documents and the demo is ``summarize`` in
``_decision``, which a decision carries as its ``summary``.
"""

from __future__ import annotations

from policies._decision import (
    FORBIDDEN,
    NO_MATCHING_PERMIT,
    PERMITTED,
    Decision,
    headline,
)
from policies._model import Request, RuleRef, format_time

__all__ = ["describe_request", "explain"]


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
    if request.sealing is not None:
        parts.append(f"sealed {request.sealing}")
    if request.originator_approved:
        parts.append("approved by the originator")
    return "; ".join(parts)


def explain(decision: Decision) -> str:
    """Several lines: everything a policy officer needs to see why, and under which terms."""
    request = decision.request
    lines = [headline(decision), f"  request    {describe_request(request)}"]
    if decision.policy is not None:
        pref = decision.policy
        lines.append(f"  policy     {pref.id} version {pref.version} (sha256 {pref.sha256})")
    lines.append(f"  at         {format_time(decision.now)}")
    if decision.reason == PERMITTED:
        lines.append("  permitted by")
        for ref in decision.rules:
            lines.append(f"    {ref.id}  {ref.clause}{_from(ref)}")
            lines.extend(f"      + {text}" for text in decision.findings.get(ref.id, ()))
        if decision.obligations:
            lines.append("  obligations")
            lines.extend(f"    - {o.describe()}" for o in decision.obligations)
        else:
            lines.append("  obligations none")
    elif decision.reason == FORBIDDEN:
        lines.append("  forbidden by")
        for ref in decision.rules:
            lines.append(f"    {ref.id}  {ref.clause}{_from(ref)}")
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
            lines.append(f"    {u.rule.id}  {u.rule.clause}{_from(u.rule)}")
            lines.extend(f"      - {text}" for text in u.conditions)
    elif (
        decision.reason in (NO_MATCHING_PERMIT, FORBIDDEN)
        and decision._compiled is not None
        and not decision._compiled.candidates.get(request.action)
    ):
        lines.append(f"  no permit of this policy covers {request.action}")
    return "\n".join(lines)


def _from(ref: RuleRef) -> str:
    return f"  [{ref.document}]" if ref.document else ""
