"""Accepting an artifact from a partner, whether pushed to the inbox or pulled from its feed.

Order of checks, each before anything is stored:
1. the manifest (first line of the delivery) parses and is signed by the sender's pinned key, and
   the sender is its origin (or, for an onward share, the chain verifies: see ``onward.py``);
2. this node is one of the manifest's recipients, under the recipient string it published;
3. this node's own inbound policy for the sender permits ``receive``;
4. an artifact already stored under this id is the same one: then the reply is the receipt
   already issued (idempotent), nothing else happens;
5. the ciphertext streams into a temporary blob while it is decrypted to nowhere: its header
   digest, every STREAM chunk, and the final plaintext digest and size are checked; the request's
   ``Content-Digest`` is checked last (``before_commit``);
6. only then the blob is committed under its content address and ONE transaction stores the
   artifact, its audit event and the signed receipt.
A failure at any step leaves no blob and no row, and is audited as ``receive.rejected``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy.exc import IntegrityError

from crypto.dsse import Envelope
from crypto.errors import CryptoError
from crypto.receipt import Receipt, sign_receipt
from crypto.sealed import Manifest, open_sealed, verify_manifest
from policies import Request
from service.audit import record
from service.errors import ConflictError, EntenteError, InvalidInputError, PolicyDeniedError
from service.models import Artifact
from service.node import Node
from service.partners import partner_verify_keys

__all__ = ["Received", "check_manifest", "receive_artifact"]


class _Null:
    def write(self, data: Any, /) -> int:
        return len(data)


class _Tee:
    """Reads from ``source``, copying every byte to ``sink`` (the temporary blob)."""

    def __init__(self, source: Any, sink: Any) -> None:
        self._source = source
        self._sink = sink
        self.count = 0

    def read(self, n: int = -1, /) -> bytes:
        data: bytes = self._source.read(n)
        if data:
            self._sink.write(data)
            self.count += len(data)
        return data


@dataclass(frozen=True)
class Received:
    artifact: Artifact
    receipt: str  # DSSE envelope JSON
    created: bool  # False when this was a repeat delivery


def _reject(node: Node, *, sender: str, artifact_id: str | None, reason: str, via: str) -> None:
    with node.db.session() as session:
        record(
            session,
            kind="receive.rejected",
            actor=f"partner:{sender}",
            partner=sender,
            artifact_id=artifact_id,
            decision="deny",
            rule=reason[:200],
            detail={"reason": reason[:500], "via": via},
            now=node.now(),
        )
    node.metrics.received.labels("rejected").inc()


def check_manifest(node: Node, *, sender: str, envelope_bytes: bytes) -> tuple[Envelope, Manifest]:
    """Steps 1 and 2: parse and verify the manifest; this node must be a recipient."""
    envelope = Envelope.from_bytes(envelope_bytes)
    with node.db.session() as session:
        trusted = partner_verify_keys(session, sender)
    manifest = verify_manifest(envelope, trusted=trusted, origin=sender)
    mine = [r for r in manifest.recipients if r.node_id == node.node_id]
    if not mine or mine[0].recipient not in (node.home.age_recipient,):
        raise InvalidInputError(
            "this node is not a recipient of the artifact", reason="not-a-recipient"
        )
    return envelope, manifest


def receive_artifact(
    node: Node,
    *,
    sender: str,
    envelope_bytes: bytes,
    ciphertext: Any,
    via: str,
    before_commit: Callable[[], None] | None = None,
) -> Received:
    """Verify and store one artifact from ``sender``; see the module docstring for the order."""
    artifact_id: str | None = None
    writer = None
    try:
        try:
            envelope, manifest = check_manifest(node, sender=sender, envelope_bytes=envelope_bytes)
        except CryptoError as exc:
            raise InvalidInputError(f"the manifest was refused: {exc}", reason="manifest") from None
        artifact_id = manifest.artifact_id
        now = node.now()
        decision = node.policies.decide(
            Request(
                partner=sender,
                action="receive",
                tlp=manifest.tlp,
                topics=frozenset(manifest.topics),
                purposes=frozenset(manifest.purposes),
                embargo_until=manifest.embargo_until,
                expires_at=manifest.expires_at,
            ),
            now=now,
        )
        if not decision.allowed:
            rule = decision.rules[0] if decision.rules else None
            with node.db.session() as session:
                record(
                    session,
                    kind="receive.rejected",
                    actor=f"partner:{sender}",
                    partner=sender,
                    artifact_id=artifact_id,
                    digest=manifest.sha256,
                    decision="deny",
                    rule=rule.id if rule else decision.reason,
                    clause=rule.clause if rule else None,
                    detail={"decision": decision.to_json(), "via": via},
                    now=now,
                )
            node.metrics.received.labels("denied").inc()
            raise PolicyDeniedError(
                f"{node.node_id} does not accept this artifact from {sender}: {decision.summary}",
                partner=sender,
                rule=rule.id if rule else None,
                clause=rule.clause if rule else None,
                audited=True,
            )
        with node.db.session() as session:
            existing = session.get(Artifact, artifact_id)
        if existing is not None:
            return _repeat(node, existing, sender=sender, manifest=manifest)
        writer = node.blobs.writer()
        tee = _Tee(ciphertext, writer)
        with node.db.session() as session:
            trusted = partner_verify_keys(session, sender)
        try:
            open_sealed(
                tee,
                _Null(),
                envelope=envelope,
                identities=node.keys.all_identities,
                trusted=trusted,
                origin=sender,
            )
        except CryptoError as exc:
            raise InvalidInputError(
                f"the payload failed verification: {exc}", reason="payload"
            ) from None
        if tee.read(1):
            raise InvalidInputError("bytes follow the end of the age payload", reason="payload")
        if before_commit is not None:
            before_commit()
        digest = writer.commit()
        writer = None
        receipt = sign_receipt(
            Receipt(
                kind="delivery",
                artifact_id=artifact_id,
                sha256=manifest.sha256,
                receiver=node.node_id,
                sender=sender,
                received_at=now,
            ),
            key=node.keys.signing,
        )
        receipt_json = receipt.to_bytes().decode()
        rule = decision.rules[0] if decision.rules else None
        row = Artifact(
            id=artifact_id,
            direction="received",
            origin=manifest.origin,
            sender=sender,
            title=manifest.title,
            tlp=manifest.tlp,
            topics=json.dumps(list(manifest.topics)),
            purposes=json.dumps(list(manifest.purposes)),
            recipients=json.dumps([r.node_id for r in manifest.recipients]),
            created_at=manifest.created,
            recorded_at=now,
            embargo_until=manifest.embargo_until,
            expires_at=manifest.expires_at,
            size=manifest.size,
            sha256=manifest.sha256,
            blob=digest,
            ciphertext_size=tee.count,
            header_sha256=manifest.age_header_sha256,
            manifest=envelope.to_bytes().decode(),
            policy_ref=json.dumps(manifest.policy),
            obligations=json.dumps([o.to_json() for o in decision.obligations]),
            receipt=receipt_json,
        )
        try:
            with node.db.session() as session:
                session.add(row)
                record(
                    session,
                    kind="receive.accepted",
                    actor=f"partner:{sender}",
                    partner=sender,
                    artifact_id=artifact_id,
                    digest=manifest.sha256,
                    decision="allow",
                    rule=",".join(r.id for r in decision.rules) or None,
                    clause=rule.clause if rule else None,
                    detail={"title": manifest.title, "tlp": manifest.tlp, "via": via,
                            "size": manifest.size},
                    now=now,
                )  # fmt: skip
        except IntegrityError:
            # A concurrent delivery of the same artifact won the race: same id, answer as a repeat.
            with node.db.session() as session:
                existing = session.get(Artifact, artifact_id)
            if existing is None or existing.blob != digest:
                node.blobs.delete(digest)
            if existing is None:
                raise
            return _repeat(node, existing, sender=sender, manifest=manifest)
        node.metrics.received.labels("accepted").inc()
        return Received(row, receipt_json, True)
    except EntenteError as exc:
        if writer is not None:
            writer.abort()
        if not exc.audited:
            _reject(node, sender=sender, artifact_id=artifact_id, reason=exc.message, via=via)
            exc.audited = True
        raise
    except BaseException:
        if writer is not None:
            writer.abort()
        raise


def _repeat(node: Node, existing: Artifact, *, sender: str, manifest: Manifest) -> Received:
    if existing.sha256 != manifest.sha256 or existing.origin != manifest.origin:
        raise ConflictError(
            f"artifact {existing.id} is already stored with other content", reason="conflict"
        )
    if existing.receipt is None:  # our own artifact echoed back
        raise ConflictError(f"artifact {existing.id} originated here", reason="conflict")
    return Received(existing, existing.receipt, False)
