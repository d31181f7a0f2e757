"""Key rotation across the federation: tell every partner about this node's new descriptor.

After :func:`service.home.rotate_keys`, :func:`queue_rotation` records ``key.rotated`` and queues,
in the same transaction, an outbox row of kind ``descriptor`` per pinned partner carrying the new
descriptor (signed by the old and the new key). The delivery worker pushes each to the partner's
``POST /federation/v1/descriptor`` signed with the *old* key, the one the partner still pins,
retrying with backoff like any delivery; nothing else goes to a partner while its descriptor push
is pending. :func:`push_rotation` does one round at once (for the CLI) and reports per partner.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime

from sqlmodel import Session, col, select

from crypto.descriptor import NodeDescriptor
from crypto.dsse import Envelope
from crypto.keys import VerifyKey
from service.audit.log import record
from service.audit.rotations import rotation_record
from service.federation.client import PartnerClient
from service.federation.outbox import OutboxWorker
from service.models import Outbox, Partner
from service.node import Node

__all__ = ["PushResult", "push_rotation", "queue_rotation"]


@dataclass(frozen=True)
class PushResult:
    partner: str
    state: str  # delivered | pending | failed
    error: str | None


def queue_rotation(
    session: Session,
    *,
    envelope: Envelope,
    actor: str,
    now: datetime,
    partners: list[str] | None = None,
    previous_key: VerifyKey | None = None,
    previous_descriptor: Envelope | None = None,
) -> list[str]:
    """Audit the rotation and queue the descriptor for ``partners`` (default: every partner).

    With ``previous_key`` (the retired key), the audit entry carries the rotation record that
    lets auditors follow the log's keys (``service.audit.rotations``); ``previous_descriptor``
    (the retired descriptor) names the retired period's checkpoint key."""
    descriptor = NodeDescriptor.from_json(json.loads(envelope.payload))
    targets = partners or [p.node_id for p in session.exec(select(Partner))]
    history = (
        rotation_record(envelope, previous_key, previous_descriptor)
        if previous_key is not None
        else {}
    )
    record(
        session,
        kind="key.rotated",
        actor=actor,
        detail={
            "fingerprint": descriptor.fingerprint,
            "previous": descriptor.previous,
            "partners": sorted(targets),
            **history,
        },
        now=now,
    )
    payload = json.dumps(
        {
            "descriptor": json.loads(envelope.to_bytes()),
            "fingerprint": descriptor.fingerprint,
            "previous": descriptor.previous,
        }
    )
    for partner in targets:
        session.add(
            Outbox(
                partner=partner,
                kind="descriptor",
                artifact_id=descriptor.fingerprint,
                payload=payload,
                created_at=now,
                next_attempt_at=now,
            )
        )
    return sorted(targets)


def push_rotation(node: Node, fingerprint: str) -> list[PushResult]:
    """Push pending descriptor rows for ``fingerprint`` now; report each partner's state."""
    client = PartnerClient(node)
    worker = OutboxWorker(node, client, kinds=frozenset({"descriptor"}))
    try:
        worker.run_once()
    finally:
        worker.close()
        client.close()
    with node.db.session() as session:
        rows = session.exec(
            select(Outbox)
            .where(Outbox.kind == "descriptor", Outbox.artifact_id == fingerprint)
            .order_by(col(Outbox.partner))
        ).all()
        return [PushResult(r.partner, r.state, r.last_error) for r in rows]
