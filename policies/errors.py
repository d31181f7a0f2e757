"""Every error that leaves ``policies/``.

One boundary, one family: callers catch :class:`PolicyError` (or one of its subclasses). Messages
name the file, the line and the problem, so the CLI can print them on one line and a policy officer
can fix the file without reading a traceback.

    PolicyError
    ├── PolicyLoadError        a policy (or golden-case) file cannot be loaded: not YAML, not the
    │                          format, an unknown key or term, a rule without an id or clause, an
    │                          empty rule set, an invalid date. Carries ``source``, ``line`` and
    │                          ``problem`` (the first of ``problems``, sorted by line).
    ├── PolicySetError         policies that load one by one do not form a set: two files for one
    │                          partner.
    └── PolicyEvaluationError  an evaluation could not run. It never leaves :func:`evaluate`,
                               which turns every error into a deny; it exists so that the reason
                               of such a deny has a name.
"""

from __future__ import annotations

__all__ = ["PolicyError", "PolicyEvaluationError", "PolicyLoadError", "PolicySetError"]


class PolicyError(Exception):
    """Base of every error raised by ``policies/``."""


class PolicyLoadError(PolicyError):
    """A policy or golden-case file cannot be loaded.

    ``problems`` lists every ``(line, problem)`` found, sorted by line; ``line`` and ``problem``
    are the first of them. ``line`` is 1-based, or 0 when the problem concerns the whole file.
    """

    def __init__(self, source: str, problems: list[tuple[int, str]]) -> None:
        if not problems:
            problems = [(0, "invalid policy file")]
        self.source = source
        self.problems = tuple(sorted(problems, key=lambda p: p[0]))
        self.line, self.problem = self.problems[0]
        more = len(self.problems) - 1
        suffix = f" (and {more} more problem{'s' if more > 1 else ''})" if more else ""
        where = f"{source}:{self.line}" if self.line else source
        super().__init__(f"{where}: {self.problem}{suffix}")

    def lines(self) -> list[str]:
        """Every problem as ``source:line: problem``, one per line."""
        return [
            f"{self.source}:{line}: {problem}" if line else f"{self.source}: {problem}"
            for line, problem in self.problems
        ]


class PolicySetError(PolicyError):
    """Policies that are each valid cannot be combined into one set (a duplicate partner)."""


class PolicyEvaluationError(PolicyError):
    """An evaluation could not run; :func:`policies.evaluate` turns it into a deny."""
