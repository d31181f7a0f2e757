"""A node's policy set assembled from its local files and the agreements it holds.

The rules (``policies._agreement`` for the documents themselves):

* only agreements signed by *every* party count; one signed by some parties is proposed and
  enforces nothing;
* a fully signed amendment ends its predecessor's terms at its ``in_force_from`` (each policy's
  window is cut there), so the old terms stay in force until the new ones begin;
* the partner's terms with this node, from the same signed documents, are kept too
  (:attr:`Assembled.theirs`): :func:`partner_accepts` checks a share against them before it
  leaves, so a node knows the partner will accept what it sends;
* an unsigned local file may only make the node stricter: for a partner under an agreement it
  may carry ``forbid`` rules and no ``permit`` (its forbids join the agreement's); for a partner
  under none it is refused when signed agreements are required, and otherwise kept as the
  node's own (unsigned) terms, reported as such.

Pure: no keys and no I/O; signature checks are the caller's (``service.agreements``).
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from policies._agreement import Agreement
from policies._decision import PARTNER_REFUSES, Decision
from policies._evaluate import evaluate
from policies._model import Policy, format_time
from policies._set import PolicySet
from policies.errors import PolicyLoadError

__all__ = [
    "AgreementStatus",
    "Assembled",
    "Held",
    "assemble",
    "partner_accepts",
    "receiver",
]


@dataclass(frozen=True)
class Held:
    """An agreement a node holds, with the parties whose officers' signatures verified."""

    name: str  # the file it came in
    agreement: Agreement
    signed_by: frozenset[str]

    @property
    def complete(self) -> bool:
        return self.signed_by >= set(self.agreement.parties)


@dataclass(frozen=True)
class AgreementStatus:
    """What one held agreement means for the node, for ``agreement list`` and partners."""

    id: str
    version: int
    sha256: str
    parties: tuple[str, ...]
    signed_by: tuple[str, ...]
    in_force_from: datetime
    state: str  # "proposed" | "adopted" | "superseded"
    superseded_at: datetime | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "version": self.version,
            "sha256": self.sha256,
            "parties": list(self.parties),
            "signed_by": list(self.signed_by),
            "awaiting": [p for p in self.parties if p not in self.signed_by],
            "in_force_from": format_time(self.in_force_from),
            "state": self.state,
            "superseded_at": None
            if self.superseded_at is None
            else format_time(self.superseded_at),
        }


@dataclass(frozen=True)
class Assembled:
    policies: PolicySet
    agreements: tuple[AgreementStatus, ...]
    unsigned: tuple[str, ...]  # partners whose permits come from an unsigned local file
    theirs: dict[str, PolicySet] = field(default_factory=dict)  # each partner's terms with us


def assemble(
    node_id: str,
    *,
    local: Sequence[Policy],
    held: Sequence[Held],
    require_signed: bool,
) -> Assembled:
    """The node's policy set from its local files and the agreements it holds (module doc)."""
    chains: dict[str, list[Held]] = {}
    statuses: list[AgreementStatus] = []
    for h in held:
        if node_id not in h.agreement.parties:
            raise PolicyLoadError(h.name, [(0, f"{node_id} is not a party to this agreement")])
        if h.complete:
            chains.setdefault(h.agreement.id, []).append(h)
        else:
            statuses.append(_status(h, "proposed"))
    signed: list[Policy] = []
    theirs: dict[str, list[Policy]] = {}
    for ident, chain in sorted(chains.items()):
        chain.sort(key=lambda h: h.agreement.version)
        for earlier, later in itertools.pairwise(chain):
            if later.agreement.supersedes != earlier.agreement.sha256:
                raise PolicyLoadError(
                    later.name,
                    [
                        (
                            0,
                            f"{ident} v{later.agreement.version} does not supersede the signed "
                            f"v{earlier.agreement.version} held here",
                        )
                    ],
                )
        for i, h in enumerate(chain):
            ends = chain[i + 1].agreement.in_force_from if i + 1 < len(chain) else None
            statuses.append(_status(h, "adopted" if ends is None else "superseded", ends))
            signed.extend(_windowed(h.agreement, node_id, ends))
            for partner in h.agreement.parties:
                if partner != node_id:
                    their = _windowed(h.agreement, partner, ends, about=node_id)
                    theirs.setdefault(partner, []).extend(their)
    covered = {p.partner for p in signed}
    merged: list[Policy] = list(signed)
    unsigned: list[str] = []
    for own in local:
        if own.partner in covered:
            if own.permits:
                raise PolicyLoadError(
                    own.source,
                    [
                        (
                            0,
                            f"{own.partner} is under a signed agreement: a local file may only "
                            "add forbid rules (no permit) to it",
                        )
                    ],
                )
            merged = [_stricter(p, own) if p.partner == own.partner else p for p in merged]
        elif own.permits and require_signed:
            raise PolicyLoadError(
                own.source,
                [
                    (
                        0,
                        f"unsigned terms with {own.partner}: this node requires signed "
                        "agreements (ENTENTE_SIGNED_AGREEMENTS_REQUIRED); a local file may only "
                        "forbid",
                    )
                ],
            )
        else:
            merged.append(own)
            if own.permits:
                unsigned.append(own.partner)
    return Assembled(
        PolicySet.from_policies(merged),
        tuple(statuses),
        tuple(sorted(unsigned)),
        {p: PolicySet.from_policies(ps) for p, ps in sorted(theirs.items())},
    )


PREFLIGHT_ACTIONS = frozenset({"share", "onward_share"})


def receiver(decision: Decision) -> str | None:
    """The node that receives what ``decision`` lets leave (None: nothing leaves)."""
    request = decision.request
    if request.action == "onward_share":
        return request.onward_to
    return request.partner if request.action == "share" else None


def partner_accepts(decision: Decision, theirs: PolicySet, node_id: str) -> Decision:
    """``decision`` (an allowed share), or a deny if the receiving partner's signed terms with
    this node (``theirs``) would refuse to receive it: reason ``partner-refuses``, naming the
    partner's rule and clause."""
    request = decision.request
    if not decision.allowed or request.action not in PREFLIGHT_ACTIONS:
        return decision
    partner = receiver(decision)
    receive = replace(
        request, action="receive", partner=node_id, onward_to=None, originator_approved=False
    )
    answer = evaluate(theirs, receive, now=decision.now)
    if answer.allowed:
        return decision
    rules = answer.rules
    if rules:  # a forbid of theirs
        why = f"their rule {rules[0].id} ({rules[0].clause}) forbids it"
    elif answer.unmet:  # the closest permit of theirs, and what it lacks
        first = answer.unmet[0]
        rules = (first.rule,)
        why = f"their rule {first.rule.id} ({first.rule.clause}) needs " + "; ".join(
            first.conditions
        )
    else:
        why = answer.detail or answer.reason
    return Decision(
        False,
        PARTNER_REFUSES,
        request,
        decision.now,
        rules=rules,
        policy=answer.policy,
        detail=f"{partner}'s signed terms would refuse to receive it: {why}",
    )


def _status(h: Held, state: str, ends: datetime | None = None) -> AgreementStatus:
    a = h.agreement
    signed = tuple(p for p in a.parties if p in h.signed_by)
    return AgreementStatus(
        a.id, a.version, a.sha256, a.parties, signed, a.in_force_from, state, ends
    )


def _windowed(
    agreement: Agreement, node_id: str, ends: datetime | None, *, about: str | None = None
) -> list[Policy]:
    """``node_id``'s terms (with every party, or only ``about``) cut to the agreement's window.
    Each rule stays in force only within its own terms entry's window too (``Permit.window``)."""
    out = []
    for partner in agreement.parties:
        if about is not None and partner != about:
            continue
        policy = agreement.policy(node_id, partner)
        if policy is None:
            continue
        start = max(policy.valid_from, agreement.in_force_from)
        stop = policy.valid_until if ends is None else min(policy.valid_until, ends)
        if stop <= start:
            continue  # superseded before it began
        out.append(replace(policy, valid_from=start, valid_until=stop))
    return out


def _stricter(signed: Policy, own: Policy) -> Policy:
    """``signed`` with the node's own forbid rules added (its digest names both files)."""
    digest = hashlib.sha256(f"{signed.sha256}+{own.sha256}".encode()).hexdigest()
    return replace(
        signed,
        forbids=(*signed.forbids, *own.forbids),
        source=f"{signed.source} + {own.source}",
        sha256=digest,
    )
