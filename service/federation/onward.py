"""Onward sharing: passing an artifact received from a partner on to a third node.

An onward share is a new sealed artifact: the holder decrypts what it received with its own
identity and seals the same plaintext to the third node (and itself), signing a new manifest
whose ``chain`` carries every upstream manifest, root first. The third node verifies the whole
chain (:func:`verify_chain`) before it stores anything:

1. each upstream manifest is signed by the key of the node it names as origin, pinned at the
   verifier (the root's origin must be a pinned partner of the third node); a key that origin
   has retired verifies only a link created before its retirement;
2. each link holds the same plaintext (SHA-256 and size) as the one before it;
3. no link loosens the one before it: the TLP label is never less strict, an expiry never later,
   an embargo never earlier;
4. each link's signer was a recipient of the link before it, and that earlier link's recorded
   policy decision for the signer carried an ``onward`` obligation naming every new recipient;
   the onward permissions narrow along the chain (their intersection), and when any of them
   needs the originator's approval, the root manifest's ``onward_approved`` list names them;
5. each link's own ``chain`` is exactly the links before it.

The holder runs the same rules before sharing (:func:`onward_allowance`) and, in addition, its
own MOU policy for the node it received the artifact from (action ``onward_share``, with the
third node as ``onward_to``) and its own ``share`` policy for the third node. A refusal anywhere is
a 403 problem document naming the rule, audited as ``onward.denied``.

Policy references in manifests (written by :func:`service.artifacts.share.share_artifact`):
``{"decisions": [{"partner", "sha256"}], "onward_approved": [node ids], "onward": {"upstream",
"origin", "disclosure"}}``. Each ``sha256`` commits to one recipient's *disclosure*
(``crypto.sealed.disclosure``: its decision ``{"partner", "effect", "policy", "rules",
"obligations"}`` and, on an onward share, the holder's ``onward_share`` decision for it), which
only that recipient receives, with its delivery: co-recipients never read each other's terms.
``onward`` only on onward shares: ``disclosure`` is the holder's own disclosure from the link
before, which the next node checks against that link's commitment to verify the holder's onward
terms (step 4). Manifests written before commitments list the decisions themselves, and are
read as they are.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from crypto.dsse import Envelope
from crypto.errors import CryptoError, MalformedError, VerificationError
from crypto.sealed import Manifest, committed_decisions, verify_disclosure, verify_manifest
from policies import Decision
from service.artifacts.enforce import Facts, Refusal, audit_rule, deny, refuse
from service.artifacts.listing import get_artifact
from service.artifacts.read import plaintext_chunks
from service.artifacts.rows import held_and_locked
from service.artifacts.sealing import POST_QUANTUM, sealing_for, sealing_of
from service.artifacts.share import share_artifact
from service.artifacts.terms import ShareTerms
from service.audit.refusals import mark_audited
from service.errors import ConflictError, ForbiddenError, InvalidInputError, PolicyDeniedError
from service.models import Artifact, Partner
from service.node import Node
from service.partners import PartnerKeys, partner_keys, partner_keysets
from service.tokens import Principal

__all__ = [
    "TLP_RANK",
    "Allowance",
    "holder_disclosure",
    "onward_allowance",
    "share_onward",
    "verify_chain",
]

TLP_RANK = {"TLP:CLEAR": 0, "TLP:GREEN": 1, "TLP:AMBER": 2, "TLP:AMBER+STRICT": 3, "TLP:RED": 4}


@dataclass(frozen=True)
class Allowance:
    """Whom the holder of the last link may pass the artifact on to."""

    to: frozenset[str]
    approval_required: bool
    approved: frozenset[str]  # the root origin's onward_approved list

    def permits(self, target: str) -> bool:
        return target in self.to and (not self.approval_required or target in self.approved)

    def why_not(self, target: str) -> str:
        if target not in self.to:
            allowed = ", ".join(sorted(self.to)) or "nobody"
            return f"the upstream onward terms allow only {allowed}"
        return f"the originator has not approved passing it on to {target}"


def _policy(manifest: Manifest) -> dict[str, Any]:
    return manifest.policy if isinstance(manifest.policy, dict) else {}


def _entries(value: object) -> Iterator[dict[str, Any]]:
    if isinstance(value, list):
        yield from (e for e in value if isinstance(e, dict))


def _onward_obligations(entries: Iterator[dict[str, Any]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for entry in entries:
        if entry.get("effect") != "allow":
            continue
        out.extend(o for o in _entries(entry.get("obligations")) if o.get("kind") == "onward")
    return out


def _link_terms(
    manifest: Manifest, holder: str, disclosed: dict[str, Any] | None
) -> tuple[frozenset[str], bool] | None:
    """The onward terms ``manifest`` gives ``holder``: None when it gives none (no onward).

    ``disclosed`` is the holder's verified disclosure of its decision in ``manifest`` (a
    manifest that commits to decisions shows none); a manifest written before commitments
    shows every decision itself."""
    if disclosed is not None:
        mine = _onward_obligations(_entries([disclosed.get("decision")]))
        upstream = _onward_obligations(_entries([disclosed.get("onward")]))
        if not mine:
            return None
        return _narrowed(mine + upstream)
    policy = _policy(manifest)
    mine = _onward_obligations(
        e for e in _entries(policy.get("decisions")) if e.get("partner") == holder
    )
    if not mine:
        return None
    onward = policy.get("onward")
    upstream = (
        _onward_obligations(_entries(onward.get("decisions"))) if isinstance(onward, dict) else []
    )
    return _narrowed(mine + upstream)


def _narrowed(obligations: list[dict[str, Any]]) -> tuple[frozenset[str], bool]:
    allowed: frozenset[str] | None = None
    approval = False
    for obligation in obligations:
        to = obligation.get("to")
        names = (
            frozenset(t for t in to if isinstance(t, str)) if isinstance(to, list) else frozenset()
        )
        allowed = names if allowed is None else allowed & names
        approval = approval or obligation.get("originator_approval") is not False
    return (allowed or frozenset()), approval


def _approved(root: Manifest) -> frozenset[str]:
    value = _policy(root).get("onward_approved")
    return (
        frozenset(v for v in value if isinstance(v, str))
        if isinstance(value, list)
        else frozenset()
    )


def onward_allowance(
    links: Sequence[Manifest],
    holder: str,
    disclosures: Sequence[dict[str, Any] | None] | None = None,
) -> Allowance:
    """What the chain ``links`` (root first, the holder's own copy last) lets ``holder`` do.

    ``disclosures[j]`` is the verified disclosure of link ``j``'s decision for the node that
    held it next (None for a link that shows its decisions itself)."""
    shown = list(disclosures) if disclosures is not None else [None] * len(links)
    if len(shown) != len(links):
        raise ValueError("one disclosure (or None) per link")
    allowed: frozenset[str] | None = None
    approval = False
    holders = [link.origin for link in links[1:]] + [holder]
    for link, who, disclosed in zip(links, holders, shown, strict=True):
        terms = _link_terms(link, who, disclosed)
        if terms is None:
            return Allowance(frozenset(), False, frozenset())
        allowed = terms[0] if allowed is None else allowed & terms[0]
        approval = approval or terms[1]
    return Allowance(allowed or frozenset(), approval, _approved(links[0]))


def _not_looser(prev: Manifest, cur: Manifest) -> str | None:
    if TLP_RANK[cur.tlp] < TLP_RANK[prev.tlp]:
        return f"the onward share loosens {prev.tlp} to {cur.tlp}"
    # The labels a receiver's policy decides on (a forbid on a topic, a permit for purposes)
    # are the origin's: a link may add to them, never drop one.
    for field in ("topics", "purposes"):
        dropped = sorted(set(getattr(prev, field)) - set(getattr(cur, field)))
        if dropped:
            return f"the onward share drops the upstream {field} {', '.join(dropped)}"
    if sealing_of(prev) == POST_QUANTUM and sealing_of(cur) != POST_QUANTUM:
        return "the onward share lowers the upstream's post-quantum sealing to classic"
    if prev.expires_at is not None and (cur.expires_at is None or cur.expires_at > prev.expires_at):
        return "the onward share outlives the upstream expiry"
    if prev.embargo_until is not None and (
        cur.embargo_until is None or cur.embargo_until < prev.embargo_until
    ):
        return "the onward share ends the upstream embargo early"
    return None


def _verify_link(node: Node, raw: object, cache: dict[str, PartnerKeys]) -> Manifest:
    try:
        envelope = Envelope.from_json(raw)
        claimed = Manifest.from_payload(envelope.payload).origin
    except CryptoError as exc:
        raise VerificationError(f"an upstream manifest is malformed: {exc}") from None
    if claimed not in cache:
        if claimed == node.node_id:
            own = node.keys.keysets
            cache[claimed] = PartnerKeys(
                keys={ks.fingerprint: ks.ed25519 for ks in own},
                retired={},
                keysets={ks.fingerprint: ks for ks in own},
            )
        else:
            with node.db.session() as session:
                cache[claimed] = partner_keys(session, claimed)
    if not cache[claimed].keys:
        raise VerificationError(f"the chain's origin {claimed} is not a pinned partner")
    # A key its origin retired verifies only links it signed before the retirement.
    return verify_manifest(
        envelope, keysets=cache[claimed].all_sets, origin=claimed, retired=cache[claimed].retired
    )


def holder_disclosure(upstream: Manifest, link: Manifest) -> dict[str, Any] | None:
    """The disclosure of ``upstream``'s decision for ``link``'s origin (who passed it on),
    which ``link`` carries in ``policy.onward.disclosure``, checked against ``upstream``'s
    commitment; None when ``upstream`` shows its decisions itself (written before
    commitments). Raises :class:`VerificationError`."""
    if link.origin not in committed_decisions(upstream):
        return None
    onward = _policy(link).get("onward")
    shown = onward.get("disclosure") if isinstance(onward, dict) else None
    try:
        return verify_disclosure(upstream, link.origin, shown)
    except MalformedError as exc:
        raise VerificationError(
            f"the onward share does not show its upstream terms: {exc}"
        ) from None


def verify_chain(node: Node, manifest: Manifest) -> list[Manifest]:
    """Verify ``manifest``'s chain (steps 1-5 of the module docstring); return all links.

    ``manifest`` itself must already be verified (signed by its origin, the sender). Raises
    :class:`crypto.errors.VerificationError` with the reason.
    """
    cache: dict[str, PartnerKeys] = {}
    links = [_verify_link(node, raw, cache) for raw in manifest.chain] + [manifest]
    raw_chain = list(manifest.chain)
    allowance: Allowance | None = None
    # disclosures[j]: link j's decision for the node that passed it on next, shown by that
    # node in its own (signed) link and checked against link j's commitment.
    disclosures = [holder_disclosure(links[j], links[j + 1]) for j in range(len(links) - 1)]
    for i in range(1, len(links)):
        prev, cur = links[i - 1], links[i]
        if cur.sha256 != prev.sha256 or cur.size != prev.size:
            raise VerificationError("an onward share does not hold the upstream plaintext")
        looser = _not_looser(prev, cur)
        if looser:
            raise VerificationError(looser)
        if cur.origin == prev.origin or cur.origin not in {r.node_id for r in prev.recipients}:
            raise VerificationError(f"{cur.origin} was not a recipient of the upstream manifest")
        if list(cur.chain) != raw_chain[:i]:
            raise VerificationError("an upstream manifest carries a different chain")
        allowance = onward_allowance(links[:i], cur.origin, disclosures[:i])
        for recipient in cur.recipients:
            if recipient.node_id != cur.origin and not allowance.permits(recipient.node_id):
                raise VerificationError(
                    f"{cur.origin} may not pass {links[0].artifact_id} on to "
                    f"{recipient.node_id}: {allowance.why_not(recipient.node_id)}"
                )
    return links


# --- the holder's side ------------------------------------------------------------------------


class _ChunkReader:
    """A file-like reader over an iterator of plaintext chunks."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._buf = b""

    def read(self, n: int = -1, /) -> bytes:
        while n < 0 or len(self._buf) < n:
            chunk = next(self._chunks, None)
            if chunk is None:
                break
            self._buf += chunk
        if n < 0:
            out, self._buf = self._buf, b""
        else:
            out, self._buf = self._buf[:n], self._buf[n:]
        return out


def _decision_entry(partner: str, decision: Decision, **extra: Any) -> dict[str, Any]:
    return {
        "partner": partner,
        **extra,
        "effect": decision.effect,
        "policy": decision.policy_ref,
        "rules": [r.to_json() for r in decision.rules],
        "obligations": [o.to_json() for o in decision.obligations],
    }


def _onward_refusal(row: Artifact, principal: Principal, reason: str, **detail: Any) -> Refusal:
    return Refusal(
        kind="onward.denied",
        actor=principal.actor,
        artifact_id=row.id,
        digest=row.sha256,
        detail={"reason": reason, "origin": row.origin, **detail},
    )


def _deny(
    node: Node, row: Artifact, principal: Principal, target: str, reason: str, **audit: Any
) -> PolicyDeniedError:
    refuse(
        node,
        _onward_refusal(row, principal, reason, **audit.get("detail", {})),
        [target],
        rule=audit.get("rule") or reason[:200],
        clause=audit.get("clause"),
        count=node.metrics.shares.labels("denied").inc,
    )
    return mark_audited(
        PolicyDeniedError(
            f"passing {row.id} on to {target} is denied: {reason}",
            partner=target,
            rule=audit.get("rule"),
            clause=audit.get("clause"),
            reason="onward",
        )
    )


def share_onward(
    node: Node,
    artifact_id: str,
    *,
    targets: Sequence[str],
    principal: Principal,
    also: Callable[[sa.Connection, Artifact], None] | None = None,
) -> Artifact:
    """Pass a received artifact on to ``targets``; returns the new (sent) artifact (``also``:
    as for :func:`service.artifacts.share.share_artifact`)."""
    if not targets or len(set(targets)) != len(targets):
        raise InvalidInputError("name one or more distinct partners to share with")
    with node.db.session() as session:
        row = get_artifact(session, artifact_id)
        partners = {p: session.get(Partner, p) for p in targets}
    if row.direction != "received":
        raise ConflictError(
            f"{row.id} was shared by this node; share it directly instead", reason="not-received"
        )
    if row.revoked_at is not None or row.blob is None:
        raise ConflictError(f"{row.id} was revoked by its origin", reason="revoked")
    now = node.now()
    if row.expires_at is not None and now >= row.expires_at:
        raise ConflictError(f"{row.id} has expired", reason="expired")
    unknown = [t for t, p in partners.items() if p is None]
    if unknown:
        raise InvalidInputError(
            f"not a pinned partner: {', '.join(unknown)}", reason="unknown-partner"
        )
    for target in targets:
        if target in (row.origin, node.node_id, row.upstream_origin):
            raise ForbiddenError(
                f"{target} already holds {row.id}; onward sharing goes to a third node",
                reason="not-third-node",
            )
    envelope = Envelope.from_bytes(row.manifest.encode())
    try:
        with node.db.session() as session:
            keysets = partner_keysets(session, row.origin)
        manifest = verify_manifest(envelope, keysets=keysets, origin=row.origin)
        links = verify_chain(node, manifest) if manifest.chain else [manifest]
    except CryptoError as exc:
        raise ConflictError(f"the stored manifest of {row.id} no longer verifies: {exc}") from None
    shown = json.loads(row.policy_ref).get("disclosure") if row.policy_ref else None
    try:
        mine = verify_disclosure(manifest, node.node_id, shown)
    except CryptoError:
        mine = None  # a manifest that shows its decisions itself, or none for this node
    before = [holder_disclosure(links[j], links[j + 1]) for j in range(len(links) - 1)]
    allowance = onward_allowance(links, node.node_id, [*before, mine])

    # Never lower the protection the origin chose: what it sealed post-quantum goes on sealed
    # post-quantum, so every target (and this node) must be able to read a hybrid file.
    pinned = [p for p in partners.values() if p is not None]
    sealing = sealing_for([node.home, *pinned])
    if sealing_of(manifest) == POST_QUANTUM and sealing != POST_QUANTUM:
        classic = sorted(p.node_id for p in pinned if not p.pq_recipient)
        raise _deny(
            node, row, principal, classic[0] if classic else targets[0],
            "its origin sealed it post-quantum and "
            + (", ".join(classic) if classic else "this node")
            + " cannot read a post-quantum file; the protection of a passed-on artifact is "
            "never lowered",
            rule="upstream-sealing",
        )  # fmt: skip
    facts = Facts.of(manifest, sealing=sealing)

    def ask(partner: str, action: str, **extra: Any) -> Decision:
        return node.policies.decide(facts.request(partner, action, **extra), now=now)

    shares: list[tuple[Partner, Decision]] = []
    onward_entries = []
    for target in targets:
        partner = partners[target]
        if partner is None:  # pragma: no cover - refused above
            continue
        if not allowance.permits(target):
            raise _deny(
                node, row, principal, target, allowance.why_not(target),
                rule="upstream-onward-terms",
                detail={"allowed": sorted(allowance.to), "approved": sorted(allowance.approved)},
            )  # fmt: skip
        onward = ask(
            row.origin,
            "onward_share",
            onward_to=target,
            originator_approved=target in allowance.approved,
        )
        share = ask(target, "share")
        for decision in (onward, share):
            if not decision.allowed:
                raise deny(
                    node,
                    _onward_refusal(row, principal, decision.summary),
                    [(target, decision)],
                    message=f"passing {row.id} on to {target} is denied: {decision.summary}",
                    now=node.now(),
                    count=node.metrics.shares.labels("denied").inc,
                    rule=audit_rule(decision),
                    reason="onward",
                )
        shares.append((partner, share))
        onward_entries.append(
            _decision_entry(row.origin, onward, action="onward_share", onward_to=target)
        )
    terms = ShareTerms(
        title=row.title,
        tlp=manifest.tlp,
        partners=tuple(targets),
        topics=tuple(manifest.topics),
        purposes=tuple(manifest.purposes),
        embargo_until=manifest.embargo_until,
        expires_at=manifest.expires_at,
        filename=manifest.filename,
        evaluation=manifest.evaluation,
    )
    root = links[0]
    source = _ChunkReader(plaintext_chunks(node, node.blobs, row))

    def still_held(conn: sa.Connection, copy: Artifact) -> None:
        """In the copy's own transaction: a revocation, or a retention deletion, may have come
        while the upstream was resealed (``rows.held_and_locked``)."""
        if not held_and_locked(conn, row.id, row.origin):
            raise ConflictError(
                f"{row.id} was revoked by its origin, or deleted here, while it was being "
                "passed on: nothing was passed on",
                reason="revoked",
            )
        if also is not None:
            also(conn, copy)

    return share_artifact(
        node,
        node.blobs,
        terms,
        source,
        principal=principal,
        decisions=shares,
        chain=(*manifest.chain, json.loads(envelope.to_bytes())),
        kind="onward.allowed",
        onward={
            "upstream": row.id,
            "origin": root.origin,
            "decisions": onward_entries,
            "disclosure": mine,  # what the upstream decided for this node: its onward terms
        },
        upstream=(row.id, row.origin, root.origin),
        also=still_held,
    )
