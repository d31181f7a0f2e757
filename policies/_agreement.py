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
so do decisions, explanations and the manifests that record them. Each rule also keeps that
document's window (``Permit.window``): a merged policy is in force over the span of its
entries' windows, and each rule only within its own entry's, so one entry's window never
extends or cuts short another's rules.

An amendment is the next ``version`` of the same ``id``, naming the digest of the version it
``supersedes`` and the time it is ``in_force_from``; ``policies._assemble`` builds a node's
policy set from the agreements it holds (only those every party signed count).

Pure: no keys and no I/O; signature checks are the caller's (``service.agreements``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from crypto import strict_json
from crypto.vocab import is_node_id, is_term
from policies._loader import load_policy, parse_time
from policies._model import Policy, format_time
from policies._yaml import YamlProblem, parse
from policies.errors import PolicyLoadError

__all__ = ["AGREEMENT_FORMAT", "EVERY", "Agreement", "Terms"]

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
        merge loosens a TLP list, and each rule keeps its own entry's window), and any forbid of
        either wins (deny overrides). The merged policy spans every entry's window."""
        bilateral = self._policies.get((party, partner))
        if not common:
            return
        base = bilateral or common[0]
        rest = common if bilateral else common[1:]
        if not rest:
            self._policies[(party, partner)] = base
            return
        every = (base, *rest)
        digest = hashlib.sha256("+".join(p.sha256 for p in every).encode()).hexdigest()
        self._policies[(party, partner)] = replace(
            base,
            valid_from=min(p.valid_from for p in every),
            valid_until=max(p.valid_until for p in every),
            permits=tuple(r for p in every for r in p.permits),
            forbids=tuple(r for p in every for r in p.forbids),
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


def _documented(policy: Policy, document: str) -> Policy:
    """``policy`` with every rule naming the signed document it comes from and keeping that
    document's window, whatever policy it is later merged into."""
    window = (policy.valid_from, policy.valid_until)
    return replace(
        policy,
        permits=tuple(replace(r, document=document, window=window) for r in policy.permits),
        forbids=tuple(replace(r, document=document, window=window) for r in policy.forbids),
    )
