"""Agreements: the terms every party signed, and how a node's policy set is assembled from them.

An :class:`Agreement` (format ``entente.agreement/v1``, canonical JSON, signed by each party's
approving officer in a DSSE envelope: ``crypto.agreement``) names its parties and carries, for
every ordered pair of parties, the policy file in which one party states its terms with the
other (``entente.policy/v1`` text, verbatim, so its SHA-256 is the file's). The same signed
document therefore tells each node its own terms *and* its partner's: before sharing, a node can
check that the partner's signed terms accept what it sends.

A multilateral agreement (a network's own terms) may state **common terms** once: a ``terms``
entry whose party and partner are ``*`` (and whose policy says ``partner: '*'``) applies to every
ordered pair of parties. Bilateral entries add to it for their pair: every rule of either stands
on its own, so the merge never loosens a rule's TLP labels, and a forbid of either wins. Each
rule names the document it comes from (``RuleRef.document``: agreement, version and part), and
so do decisions, explanations and the manifests that record them.

An amendment is the next ``version`` of the same ``id``, naming the digest of the version it
``supersedes`` and the time it is ``in_force_from``. :func:`assemble` builds a node's
:class:`~policies._set.PolicySet` from what it holds:

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
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from crypto import strict_json
from crypto.vocab import is_node_id, is_term
from policies._decision import PARTNER_REFUSES, Decision
from policies._evaluate import evaluate
from policies._loader import load_policy, parse_time
from policies._model import Policy, format_time
from policies._set import PolicySet
from policies._yaml import YamlProblem, parse
from policies.errors import PolicyLoadError

__all__ = [
    "AGREEMENT_FORMAT",
    "Agreement",
    "AgreementStatus",
    "Assembled",
    "Held",
    "Terms",
    "assemble",
    "partner_accepts",
    "receiver",
]

AGREEMENT_FORMAT = "entente.agreement/v1"
MAX_PARTIES = 64
EVERY = "*"  # party and partner of common terms (a multilateral agreement's shared terms)
_FIELDS = {"format", "id", "version", "title", "parties", "in_force_from", "supersedes", "terms"}


@dataclass(frozen=True)
class Terms:
    """One party's terms with one other party: a policy file's name and text."""

    party: str
    partner: str
    name: str
    text: str

    def to_json(self) -> dict[str, str]:
        return {
            "party": self.party,
            "partner": self.partner,
            "name": self.name,
            "policy": self.text,
        }


@dataclass(frozen=True)
class Agreement:
    """An agreement's content (what the officers sign), parsed and checked."""

    id: str
    version: int
    title: str
    parties: tuple[str, ...]
    in_force_from: datetime
    terms: tuple[Terms, ...]
    supersedes: str | None = None  # SHA-256 of the previous version's payload
    _policies: dict[tuple[str, str], Policy] = field(
        init=False, repr=False, compare=False, default_factory=dict
    )

    def __post_init__(self) -> None:
        problems = list(self._problems())
        if problems:
            raise PolicyLoadError(self.source, [(0, p) for p in problems])

    @property
    def source(self) -> str:
        return f"agreement {self.id} v{self.version}"

    def _problems(self) -> Iterable[str]:
        if not is_term(self.id) or "/" in self.id:
            yield "id must be lowercase letters, digits and '-'"
        if self.version < 1:
            yield "version must be 1 or more"
        if not self.title.strip() or len(self.title) > 300:
            yield "title must be a non-empty text of at most 300 characters"
        if not 2 <= len(self.parties) <= MAX_PARTIES or len(set(self.parties)) != len(self.parties):
            yield f"parties must be 2 to {MAX_PARTIES} different node ids"
        for p in self.parties:
            if not is_node_id(p):
                yield f"party {p!r} is not a node id"
        if (self.version == 1) != (self.supersedes is None):
            yield "version 1 supersedes nothing; every later version names the one it supersedes"
        pairs: set[tuple[str, str]] = set()
        common: list[Terms] = []
        for t in self.terms:
            if (t.party, t.partner) == (EVERY, EVERY):
                common.append(t)
            elif t.party not in self.parties or t.partner not in self.parties:
                yield f"terms {t.name!r} are between {t.party} and {t.partner}, not parties"
            elif t.party == t.partner:
                yield f"terms {t.name!r} are a party's terms with itself"
            elif (t.party, t.partner) in pairs:
                yield f"two sets of terms of {t.party} with {t.partner}"
            else:
                pairs.add((t.party, t.partner))
                yield from self._load(t)
        shared: dict[tuple[str, str], list[Policy]] = {}
        for t in common:
            yield from self._load_common(t, shared)
        for a in self.parties:
            for b in self.parties:
                if a == b:
                    continue
                if (a, b) not in pairs and (a, b) not in shared:
                    yield f"no terms of {a} with {b}: every party states its terms with each other"
                    continue
                try:
                    self._merge(a, b, shared.get((a, b), []))
                except PolicyLoadError as exc:
                    yield f"{a}'s terms with {b}, bilateral and common together: {exc}"

    def _document(self, part: str) -> str:
        return f"{self.id} v{self.version}, {part}"

    def _load(self, t: Terms) -> Iterable[str]:
        try:
            policy = load_policy(t.text, source=f"{self.source}: {t.party}/{t.name}")
        except PolicyLoadError as exc:
            yield str(exc)
            return
        if policy.partner != t.partner:
            yield f"terms {t.name!r} of {t.party} are about {policy.partner}, not {t.partner}"
            return
        self._policies[(t.party, t.partner)] = _documented(
            policy, self._document(f"{t.party}'s terms with {t.partner} ({t.name})")
        )

    def _load_common(self, t: Terms, into: dict[tuple[str, str], list[Policy]]) -> Iterable[str]:
        """Common terms (party and partner ``*``): one policy, applied to every ordered pair.
        Its ``partner`` is written ``"*"``; each pair's copy names the real partner."""
        source = f"{self.source}: common/{t.name}"
        try:
            data = parse(t.text).data
        except YamlProblem as exc:
            yield f"{source}: line {exc.line}: {exc.problem}"
            return
        if not isinstance(data, dict) or data.get("partner") != EVERY:
            yield f"common terms {t.name!r} must say partner: '*' (they apply to every party)"
            return
        digest = hashlib.sha256(t.text.encode()).hexdigest()
        document = self._document(f"common terms ({t.name})")
        for a in self.parties:
            for b in self.parties:
                if a == b:
                    continue
                text = json.dumps({**data, "partner": b})
                try:
                    policy = load_policy(text, source=source)
                except PolicyLoadError as exc:
                    yield str(exc)
                    return
                policy = _documented(replace(policy, sha256=digest), document)
                into.setdefault((a, b), []).append(policy)

    def _merge(self, party: str, partner: str, common: list[Policy]) -> None:
        """The bilateral terms with the common ones added: every rule stands on its own (so no
        merge loosens a TLP list), and any forbid of either wins (deny overrides)."""
        bilateral = self._policies.get((party, partner))
        if not common:
            return
        base = bilateral or common[0]
        rest = common if bilateral else common[1:]
        if not rest:
            self._policies[(party, partner)] = base
            return
        digest = hashlib.sha256("+".join(p.sha256 for p in (base, *rest)).encode()).hexdigest()
        self._policies[(party, partner)] = replace(
            base,
            permits=(*base.permits, *(r for p in rest for r in p.permits)),
            forbids=(*base.forbids, *(r for p in rest for r in p.forbids)),
            sha256=digest,
        )

    def policy(self, party: str, partner: str) -> Policy | None:
        """``party``'s terms with ``partner`` as signed, or None."""
        return self._policies.get((party, partner))

    # --- the signed form ------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        return {
            "format": AGREEMENT_FORMAT,
            "id": self.id,
            "version": self.version,
            "title": self.title,
            "parties": list(self.parties),
            "in_force_from": format_time(self.in_force_from),
            "supersedes": self.supersedes,
            "terms": [t.to_json() for t in self.terms],
        }

    def payload(self) -> bytes:
        """The canonical bytes the officers sign."""
        return json.dumps(self.to_json(), sort_keys=True, separators=(",", ":")).encode()

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.payload()).hexdigest()

    @classmethod
    def from_payload(cls, raw: bytes) -> Agreement:
        """Parse signed bytes; they must be the canonical form (one encoding per agreement)."""
        try:
            data = strict_json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise PolicyLoadError("<agreement>", [(0, "the agreement is not JSON")]) from None
        agreement = cls.from_json(data)
        if agreement.payload() != raw:
            raise PolicyLoadError(agreement.source, [(0, "the signed bytes are not canonical")])
        return agreement

    @classmethod
    def from_json(cls, data: object) -> Agreement:
        def bad(problem: str) -> PolicyLoadError:
            return PolicyLoadError("<agreement>", [(0, problem)])

        if not isinstance(data, dict) or data.get("format") != AGREEMENT_FORMAT:
            raise bad(f"not an agreement (format is not {AGREEMENT_FORMAT!r})")
        unknown = set(data) - _FIELDS
        if unknown:
            raise bad(f"unknown field(s): {', '.join(sorted(unknown))}")
        ident, version, title = data.get("id"), data.get("version"), data.get("title")
        parties, terms = data.get("parties"), data.get("terms")
        supersedes = data.get("supersedes")
        if not isinstance(ident, str) or not isinstance(title, str):
            raise bad("id and title must be strings")
        if not isinstance(version, int) or isinstance(version, bool):
            raise bad("version must be an integer")
        if not isinstance(parties, list) or not all(isinstance(p, str) for p in parties):
            raise bad("parties must be a list of node ids")
        if supersedes is not None and not (isinstance(supersedes, str) and len(supersedes) == 64):
            raise bad("supersedes must be the SHA-256 (hex) of the previous version")
        if not isinstance(terms, list) or len(terms) > MAX_PARTIES * (MAX_PARTIES - 1):
            raise bad("terms must be a list")
        items = []
        for t in terms:
            if not isinstance(t, dict) or set(t) != {"party", "partner", "name", "policy"}:
                raise bad("each terms entry has party, partner, name and policy")
            if not all(isinstance(v, str) for v in t.values()):
                raise bad("a terms entry's fields are strings")
            items.append(Terms(t["party"], t["partner"], t["name"], t["policy"]))
        when = data.get("in_force_from")
        try:
            in_force_from = parse_time(when) if isinstance(when, str) else None
        except ValueError:
            in_force_from = None
        if in_force_from is None:
            raise bad("in_force_from must be an RFC 3339 time")
        return cls(ident, version, title, tuple(parties), in_force_from, tuple(items), supersedes)


# --- assembling a node's set --------------------------------------------------------------------


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
    """``node_id``'s terms (with every party, or only ``about``) cut to the agreement's window."""
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


def _documented(policy: Policy, document: str) -> Policy:
    """``policy`` with every rule naming the signed document it comes from."""
    return replace(
        policy,
        permits=tuple(replace(r, document=document) for r in policy.permits),
        forbids=tuple(replace(r, document=document) for r in policy.forbids),
    )
