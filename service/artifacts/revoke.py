"""Revoking an artifact this node originated: the row is marked, each recipient's revocation
is audited and a notice is queued for it, in one transaction.

This module does not send the notices (``service.federation.outbox``).
"""

from __future__ import annotations

import json

from service.artifacts.listing import get_artifact
from service.artifacts.rows import json_list
from service.audit.log import record
from service.errors import (
    ForbiddenError,
)
from service.models import Artifact, Outbox
from service.node import Node
from service.tokens import Principal, Role

__all__ = ["revoke_artifact"]


# --- revoke -----------------------------------------------------------------------------------


def revoke_artifact(node: Node, artifact_id: str, *, principal: Principal, reason: str) -> Artifact:
    """Revoke an artifact this node originated: recipients are told to hide and delete it."""
    now = node.now()
    with node.db.session() as session:
        row = get_artifact(session, artifact_id)
        if row.origin != node.node_id:
            raise ForbiddenError("only the origin can revoke an artifact", reason="not-origin")
        if principal.role not in (Role.PUBLISHER, Role.ADMIN):
            raise ForbiddenError("revoking needs the publisher or admin role")
        if row.revoked_at is not None:
            return row
        row.revoked_at = now
        row.revocation_reason = reason[:500] or None
        session.add(row)
        for partner in [r for r in json_list(row.recipients) if r != node.node_id]:
            record(
                session,
                kind="revocation.issued",
                actor=principal.actor,
                partner=partner,
                artifact_id=row.id,
                digest=row.sha256,
                detail={"reason": reason[:500]},
                now=now,
            )
            session.add(
                Outbox(
                    partner=partner,
                    kind="notice",
                    artifact_id=row.id,
                    artifact_origin=row.origin,
                    payload=json.dumps({"type": "revocation", "reason": reason[:500]}),
                    created_at=now,
                    next_attempt_at=now,
                )
            )
    return row
