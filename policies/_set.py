"""A node's active policies, one per partner: :class:`PolicySet` (read-only).

It indexes :class:`~policies._model.Policy` values by partner and refuses two for one partner;
it does not load files (``_loader``) or evaluate (``_evaluate``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from policies._model import Policy
from policies.errors import PolicySetError

__all__ = ["PolicySet"]


@dataclass(frozen=True)
class PolicySet:
    """The active policies of a node, one per partner node id (read-only)."""

    policies: Mapping[str, Policy]

    def __post_init__(self) -> None:
        for partner, policy in self.policies.items():
            if partner != policy.partner:
                raise PolicySetError(
                    f"{policy.source}: filed under partner {partner!r} but is about "
                    f"{policy.partner!r}"
                )
        object.__setattr__(self, "policies", MappingProxyType(dict(self.policies)))

    @classmethod
    def from_policies(cls, policies: Iterable[Policy]) -> PolicySet:
        """Index policies by partner; two policies for one partner are a :class:`PolicySetError`."""
        by_partner: dict[str, Policy] = {}
        for policy in policies:
            other = by_partner.get(policy.partner)
            if other is not None:
                raise PolicySetError(
                    f"{policy.source}: a second policy for partner {policy.partner!r} "
                    f"(the first is {other.source}); keep one file per partner"
                )
            by_partner[policy.partner] = policy
        return cls(dict(sorted(by_partner.items())))

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
        return [{"partner": p.partner, **p.policy_ref} for p in self]

    @property
    def sha256(self) -> str:
        """One digest for the whole set: changes whenever any policy is added, removed or edited."""
        canonical = json.dumps(self.refs(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()
