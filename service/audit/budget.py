"""How many refusals of one unit of work are audited one entry each: the rest in one summary.

A pulled round brings what the partner chose: up to ``MAX_PAGES_PER_ROUND`` pages of
``PAGE_SIZE`` items (``service.federation.pull``), each of which our checks or our inbound
policy may refuse. Audited one entry, and one transaction, each, a partner holding its own key
could make every round write 20,000 entries, and our database spend its time on them instead of
on the other partners' work. A :class:`RefusalBudget` lets the first ``most`` refusals of the
round be audited whole (artifact, rule, clause, decision, as always); each one after them is
counted with its reason, and :meth:`RefusalBudget.write` records them as one ``summary`` entry of
the same kind when the round ends: every refusal stays on record, the entries a round can add
stay bounded. A pushed batch (up to 64 items a request, ``service.api.federation``) has a budget
of its own, of 4.

This module does not decide what is refused, nor which unit of work has a budget.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

__all__ = ["SUMMARY_RULE", "RefusalBudget"]

SUMMARY_RULE = "summary"  # the rule of a summary entry, as the refusal ledger's
MAX_REASONS = 16  # distinct reasons named in one summary; the rest count as "other"


class RefusalBudget:
    """The first ``most`` refusals of a unit of work audited each; the rest counted."""

    def __init__(self, most: int) -> None:
        if most < 0:
            raise ValueError("a refusal budget cannot be negative")
        self.most = most
        self.audited = 0
        self.held = 0  # refusals counted, not audited one by one
        self.reasons: Counter[str] = Counter()

    def admit(self, reason: str) -> bool:
        """Whether this refusal is audited on its own; if not, it is counted for the summary."""
        if self.audited < self.most:
            self.audited += 1
            return True
        self.held += 1
        key = reason[:100]
        if key in self.reasons or len(self.reasons) < MAX_REASONS:
            self.reasons[key] += 1
        else:
            self.reasons["other"] += 1
        return False

    def write(self, record: Callable[[dict[str, Any]], None]) -> bool:
        """Hand the summary of the refusals counted, if any, to ``record`` (which audits it as
        one entry, rule :data:`SUMMARY_RULE`) and start counting afresh; whether it did."""
        if not self.held:
            return False
        summary = {
            "summary": True,
            "count": self.held,
            "audited_each": self.audited,
            "reasons": dict(self.reasons.most_common()),
        }
        record(summary)
        self.held = 0
        self.reasons.clear()
        return True
