"""A node's active policies, one per partner at any time: :class:`PolicySet` (read-only).

It indexes :class:`~policies._model.Policy` values by partner. Two policies for one partner are
refused unless their windows do not overlap (an agreement and its amendment: the amendment's
terms begin where the earlier ones end); :meth:`PolicySet.at` picks the one in force. It does not
load files (``_loader``) or evaluate (``_evaluate``).
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType
from typing import Any

from policies._model import Policy
from policies.errors import PolicySetError

__all__ = ["PolicySet"]


@dataclass(frozen=True)
class PolicySet:
    """The active policies of a node, the latest per partner node id (read-only).

    ``earlier`` holds, per partner, the policies that end where a later one begins (oldest
    first); :meth:`at` picks the one in force at a time.
    """

    policies: Mapping[str, Policy]
    earlier: Mapping[str, tuple[Policy, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for partner, policy in self.policies.items():
            if partner != policy.partner:
                raise PolicySetError(
                    f"{policy.source}: filed under partner {partner!r} but is about "
                    f"{policy.partner!r}"
                )
        object.__setattr__(self, "policies", MappingProxyType(dict(self.policies)))
        object.__setattr__(self, "earlier", MappingProxyType(dict(self.earlier)))

    @classmethod
    def from_policies(cls, policies: Iterable[Policy]) -> PolicySet:
        """Index policies by partner; two for one partner whose windows overlap are a
        :class:`PolicySetError`."""
        by_partner: dict[str, list[Policy]] = {}
        for policy in policies:
            by_partner.setdefault(policy.partner, []).append(policy)
        latest: dict[str, Policy] = {}
        earlier: dict[str, tuple[Policy, ...]] = {}
        for partner, found in sorted(by_partner.items()):
            found.sort(key=lambda p: p.valid_from)
            for a, b in itertools.pairwise(found):
                if a.valid_until > b.valid_from:
                    raise PolicySetError(
                        f"{b.source}: a second policy for partner {partner!r} "
                        f"(the first is {a.source}); keep one file per partner"
                    )
            latest[partner] = found[-1]
            if len(found) > 1:
                earlier[partner] = tuple(found[:-1])
        return cls(latest, earlier)

    def at(self, partner: str, now: datetime) -> Policy | None:
        """The policy for ``partner`` in force at ``now``, else its latest (or None)."""
        latest = self.policies.get(partner)
        if latest is not None and now < latest.valid_from:
            for policy in self.earlier.get(partner, ()):
                if policy.valid_from <= now < policy.valid_until:
                    return policy
        return latest

    @classmethod
    def empty(cls) -> PolicySet:
        return cls({})

    def get(self, partner: str) -> Policy | None:
        return self.policies.get(partner)

    @property
    def partners(self) -> tuple[str, ...]:
        return tuple(self.policies)

    def __iter__(self) -> Iterator[Policy]:
        return iter(self.policies.values())

    def __len__(self) -> int:
        return len(self.policies)

    def refs(self) -> list[dict[str, Any]]:
        """The ``policy_ref`` of every policy with its partner, for an audit event."""
        every = [*(p for ps in self.earlier.values() for p in ps), *self]
        return [{"partner": p.partner, **p.policy_ref} for p in every]

    @property
    def sha256(self) -> str:
        """One digest for the whole set: changes whenever any policy is added, removed or edited."""
        canonical = json.dumps(self.refs(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()
