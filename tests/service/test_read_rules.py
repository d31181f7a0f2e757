"""The pure rules that keep an artifact from being read (service/artifacts/read_rules.py):
facts and ``now`` in, nothing or the refusal out. No database, no node."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest

from service.artifacts.read_rules import ReadFacts, check_readable
from service.errors import ConflictError, EntenteError, ForbiddenError, GoneError

T0 = datetime(2026, 3, 1, tzinfo=UTC)
DAY = timedelta(days=1)


@dataclass(frozen=True)
class Case:
    name: str
    facts: ReadFacts
    now: datetime
    res: type[EntenteError] | None = None  # None: readable
    reason: str | None = None
    extra: dict[str, str] = field(default_factory=dict)


def facts(**changes: object) -> ReadFacts:
    return ReadFacts(artifact_id="a-1", recorded_at=T0, **changes)  # type: ignore[arg-type]


CASES = [
    Case("nothing applies", facts(), T0 + 400 * DAY),
    Case(
        "revoked",
        facts(revoked_at=T0),
        T0,
        GoneError,
        "revoked",
        {"revoked_at": "2026-03-01T00:00:00Z"},
    ),
    Case(
        "under embargo",
        facts(embargo_until=T0 + DAY),
        T0,
        ForbiddenError,
        "embargo",
        {"embargo_until": (T0 + DAY).isoformat()},
    ),
    Case("the embargo has ended", facts(embargo_until=T0 + DAY), T0 + DAY),
    Case("not expired yet", facts(expires_at=T0 + DAY), T0 + DAY - timedelta(seconds=1)),
    Case("expired at the instant", facts(expires_at=T0 + DAY), T0 + DAY, ConflictError, "expired"),
    Case("within retention", facts(retention_days=30), T0 + 29 * DAY),
    Case("past retention", facts(retention_days=30), T0 + 30 * DAY, ConflictError, "retention"),
    # the first that applies is the one reported
    Case(
        "revoked and embargoed",
        facts(revoked_at=T0, embargo_until=T0 + DAY),
        T0,
        GoneError,
        "revoked",
        {"revoked_at": "2026-03-01T00:00:00Z"},
    ),
    Case(
        "embargoed and expired",
        facts(embargo_until=T0 + 2 * DAY, expires_at=T0),
        T0 + DAY,
        ForbiddenError,
        "embargo",
        {"embargo_until": (T0 + 2 * DAY).isoformat()},
    ),
    Case(
        "expired and past retention",
        facts(expires_at=T0 + DAY, retention_days=1),
        T0 + 2 * DAY,
        ConflictError,
        "expired",
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_read_rules(case: Case) -> None:
    if case.res is None:
        check_readable(case.facts, now=case.now)
        return
    with pytest.raises(case.res) as caught:
        check_readable(case.facts, now=case.now)
    assert type(caught.value) is case.res
    assert caught.value.extra == {"reason": case.reason, **case.extra}
    assert "a-1" in caught.value.message
