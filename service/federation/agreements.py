"""Partners exchange and compare the signed agreements they hold, over the federation API.

``GET /federation/v1/agreements`` answers a partner with the agreements this node holds that
name it (id, version, digest of the signed terms, state, who signed); :func:`compare` asks a
partner for its list and puts the two side by side, so an operator knows before sharing whether
both nodes enforce the same signed version (``entente agreement compare``). Comparison is by the
SHA-256 of the signed payload: equal digests are the same terms, word for word.
"""

from __future__ import annotations

from typing import Any

from service.errors import PartnerUnavailableError
from service.federation.client import PartnerClient
from service.node import Node
from service.partners import get_partner

__all__ = ["compare", "held_for"]

_MAX_ITEMS = 256


def held_for(node: Node, partner: str) -> dict[str, Any]:
    """What this node holds with ``partner``: each agreement naming both, and its state."""
    items = [a.to_json() for a in node.policies.agreements if partner in a.parties]
    return {"node": node.node_id, "agreements": items[:_MAX_ITEMS]}


def compare(node: Node, partner: str, client: PartnerClient | None = None) -> dict[str, Any]:
    """This node's agreements with ``partner`` beside the partner's own answer."""
    with node.db.session() as session:
        row = get_partner(session, partner)
    own = client or PartnerClient(node)
    try:
        reply = own.call_json(row, "GET", "/federation/v1/agreements")
    finally:
        if client is None:
            own.close()
    theirs = reply.data.get("agreements") if isinstance(reply.data, dict) else None
    if not isinstance(theirs, list):
        raise PartnerUnavailableError(f"{partner} answered no list of agreements")
    mine = {(a["id"], a["version"]): a for a in held_for(node, partner)["agreements"]}
    there = {(a.get("id"), a.get("version")): a for a in theirs[:_MAX_ITEMS] if isinstance(a, dict)}
    rows = []
    for key in sorted(set(mine) | set(there), key=lambda k: (str(k[0]), int(k[1] or 0))):
        a, b = mine.get(key), there.get(key)
        same = (
            a is not None
            and b is not None
            and a["sha256"] == b.get("sha256")
            and a["state"] == b.get("state")
        )
        rows.append(
            {
                "id": key[0],
                "version": key[1],
                "here": a["state"] if a else "not held",
                "there": str(b.get("state")) if b else "not held",
                "sha256_here": a["sha256"] if a else None,
                "sha256_there": b.get("sha256") if b else None,
                "same": same,
            }
        )
    return {"partner": partner, "agreements": rows, "same": all(r["same"] for r in rows)}
