"""The actions two-person control holds besides shares: a policy reload and a partner change.

Each is requested through the API by one admin (``service.api.admin``, ``service.api.partners``)
and stored pending by :func:`service.artifacts.approvals.request_action`; a second admin approves
it (``service.api.approvals``), and it is carried out as it was asked for:

* a reload commits only the set the folder held when it was requested (signed agreements
  included): if the folder changed since, approval is refused (``policy-changed``);
* a partner change carries the descriptor and fingerprint that were checked when it was
  requested; approval pins (or unpins) exactly that, audited with both people.
"""

from __future__ import annotations

import base64
import json
from datetime import datetime
from typing import Any

from policies.errors import PolicyError
from service.artifacts.approvals import request_action
from service.errors import ConflictError, InvalidInputError
from service.models import Approval
from service.node import Node
from service.partners import add_partner, check_descriptor, get_partner, remove_partner
from service.policy_store import Snapshot
from service.tokens import Principal

__all__ = [
    "carry_out_partner_change",
    "check_reload_unchanged",
    "request_partner_add",
    "request_partner_remove",
    "request_reload",
]


def request_reload(node: Node, *, principal: Principal) -> Approval:
    """Store a policy reload as pending, naming the policy set the folder holds now (its
    SHA-256 and policies): approval reloads only that same set (:func:`check_reload_unchanged`).
    An invalid folder is refused now, as a reload would be."""
    folder = _folder_set(node)
    summary = {"sha256": folder.sha256, "policies": folder.policies.refs()}
    return request_action(node, action="policy.reload", principal=principal, summary=summary)


def check_reload_unchanged(node: Node, row: Approval) -> None:
    """Refuse to approve a reload when the policy folder no longer holds the set requested."""
    wanted = json.loads(row.summary).get("sha256")
    if _folder_set(node).sha256 != wanted:
        raise ConflictError(
            "the policy folder changed since this reload was requested: reject it and "
            "request the reload again",
            reason="policy-changed",
        )


def _folder_set(node: Node) -> Snapshot:  # what a reload would commit now
    try:
        return node.policies.preview(now=node.now())
    except PolicyError as exc:
        raise InvalidInputError(
            f"the policy folder does not load (the current set stays in force): {exc}",
            reason="policy-load",
        ) from None


def request_partner_add(
    node: Node, *, principal: Principal, descriptor: bytes, fingerprint: str, replace: bool
) -> Approval:
    """Check the descriptor now (bad input is refused at once) and hold the pinning."""
    found = check_descriptor(
        descriptor, fingerprint=fingerprint, own_node_id=node.node_id, now=node.now()
    )
    summary = {"partner": found.node_id, "fingerprint": found.fingerprint, "url": found.url,
               "replace": replace}  # fmt: skip
    payload = {"descriptor": base64.b64encode(descriptor).decode("ascii")}
    return request_action(
        node, action="partner.add", principal=principal, summary=summary, payload=payload
    )


def request_partner_remove(node: Node, *, principal: Principal, partner: str) -> Approval:
    with node.db.session() as session:
        row = get_partner(session, partner)
    summary = {"partner": row.node_id, "fingerprint": row.fingerprint}
    return request_action(node, action="partner.remove", principal=principal, summary=summary)


def carry_out_partner_change(node: Node, row: Approval, *, actor: str) -> dict[str, Any]:
    """Pin or unpin exactly what was requested (the descriptor checked again, now)."""
    summary = json.loads(row.summary)
    now: datetime = node.now()
    with node.db.session() as session:
        if row.action == "partner.remove":
            current = get_partner(session, summary["partner"])
            if current.fingerprint != summary["fingerprint"]:
                raise ConflictError(
                    "the partner was re-pinned since this removal was requested: reject it "
                    "and request it again",
                    reason="partner-changed",
                )
            remove_partner(session, node_id=summary["partner"], now=now, actor=actor)
            return {"partner": summary["partner"], "removed": True}
        descriptor = base64.b64decode(json.loads(row.payload)["descriptor"])
        pinned = add_partner(
            session,
            descriptor_bytes=descriptor,
            fingerprint=summary["fingerprint"],
            own_node_id=node.node_id,
            now=now,
            actor=actor,
            replace=bool(summary.get("replace")),
        )
        return {"partner": pinned.node_id, "fingerprint": pinned.fingerprint}
