"""Signing and verifying federation messages (RFC 9421, Ed25519, RFC 9530 Content-Digest).

Every federation request carries a signature covering ``@method``, ``@target-uri`` and
``content-digest``, with ``created``, ``expires``, ``nonce``, ``keyid`` (the sender's key
fingerprint) and ``alg``. The receiver resolves ``keyid`` only among its pinned partners' current
keys, enforces the clock-skew window, and refuses a nonce it has seen (kept in the database, so a
replay is refused by every replica). Responses are signed too, bound to the request.
"""

from __future__ import annotations

import base64
import secrets
import threading
import time
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, func, select

from crypto import httpsig
from crypto.errors import MalformedError, VerificationUnavailableError
from crypto.keys import SigningKey, VerifyKey
from service.db import Database
from service.limits import check_nonce_room
from service.models import PartnerKey, SeenNonce
from service.node import Node

__all__ = [
    "IncomingSignature",
    "digest_value",
    "purge_nonces",
    "sign_request_headers",
    "sign_response_headers",
    "verify_incoming",
    "verify_response_from",
]

SIGNATURE_LIFETIME = 300  # seconds a signature stays valid after ``created``
NONCE_RECOUNT_SECONDS = 1.0  # seconds: how stale this process's count of stored nonces may be


@dataclass
class _NonceRoom:
    """How full the replay cache is, without counting the table on every signed request.

    The table is counted when this process has not looked for ``NONCE_RECOUNT_SECONDS``, and on
    every request once the count this process knows (the last count plus its own inserts since)
    is within a tenth of ``nonce_cache_size``: near the bound every request is counted as before,
    so a full cache is refused exactly. Far below it, other replicas' inserts since the last
    count are not seen for up to ``NONCE_RECOUNT_SECONDS``, so with several replicas the cache
    may pass the bound by what they accept in that time (it stays bounded).
    """

    known: int | None = None  # rows at the last count
    added: int = 0  # nonces this process stored since
    counted_at: float = 0.0  # monotonic seconds
    lock: threading.Lock = field(default_factory=threading.Lock)

    def check(self, session: Session, node: Node) -> None:
        settings = node.settings
        cap = settings.nonce_cache_size
        with self.lock:
            estimate = None if self.known is None else self.known + self.added
            stale = time.monotonic() - self.counted_at > NONCE_RECOUNT_SECONDS
        if estimate is not None and not stale and estimate < cap - max(1, cap // 10):
            return
        held = int(session.exec(select(func.count()).select_from(SeenNonce)).one())
        with self.lock:
            self.known, self.added, self.counted_at = held, 0, time.monotonic()
        if held >= cap:
            check_nonce_room(session, settings)  # counts again and raises the 429 problem

    def stored(self) -> None:
        with self.lock:
            self.added += 1

    def forget(self) -> None:
        with self.lock:
            self.known = None


_rooms: weakref.WeakKeyDictionary[Database, _NonceRoom] = weakref.WeakKeyDictionary()
_rooms_lock = threading.Lock()


def _nonce_room(node: Node) -> _NonceRoom:
    with _rooms_lock:
        room = _rooms.get(node.db)
        if room is None:
            room = _rooms[node.db] = _NonceRoom()
        return room


@dataclass(frozen=True)
class IncomingSignature:
    partner: str
    keyid: str
    verified: httpsig.VerifiedSignature
    message: httpsig.Request


def _created(node: Node) -> int:
    return int(node.now().timestamp())


def sign_request_headers(
    node: Node,
    *,
    method: str,
    url: str,
    headers: Mapping[str, str],
    content_digest: str,
    key: SigningKey | None = None,
) -> dict[str, str]:
    """Headers to add to a request: ``Content-Digest``, ``Signature-Input``, ``Signature``.

    Signed with the node's current key, or ``key`` (a retired key the partner still pins: only
    to push a rotated descriptor).
    """
    message = httpsig.Request(method, url, {**headers, "Content-Digest": content_digest})
    created = _created(node)
    signer = key or node.keys.signing
    signed = httpsig.sign_request(
        message,
        key=signer,
        keyid=signer.fingerprint,
        created=created,
        expires=created + SIGNATURE_LIFETIME,
        nonce=secrets.token_urlsafe(16),
    )
    return {"Content-Digest": content_digest, **signed}


def sign_response_headers(
    node: Node,
    *,
    request: httpsig.Request,
    status: int,
    headers: Mapping[str, str],
    content_digest: str,
) -> dict[str, str]:
    message = httpsig.Response(status, {**headers, "Content-Digest": content_digest})
    created = _created(node)
    signed = httpsig.sign_response(
        message,
        request=request,
        key=node.keys.signing,
        keyid=node.keys.signing.fingerprint,
        created=created,
        expires=created + SIGNATURE_LIFETIME,
    )
    return {"Content-Digest": content_digest, **signed}


def digest_value(raw_sha256: bytes) -> str:
    """A ``Content-Digest`` field value for a known SHA-256."""
    return f"sha-256=:{base64.b64encode(raw_sha256).decode('ascii')}:"


def verify_incoming(
    node: Node, *, method: str, target_uri: str, headers: list[tuple[str, str]]
) -> IncomingSignature:
    """Verify a partner's signed request. Raises ``crypto.errors.CryptoError`` subclasses."""
    found: dict[str, tuple[str, VerifyKey]] = {}

    def resolve(keyid: str) -> VerifyKey | None:
        if len(keyid) != 64:
            return None
        with node.db.session() as session:
            row = session.exec(
                select(PartnerKey).where(
                    PartnerKey.fingerprint == keyid, col(PartnerKey.retired_at).is_(None)
                )
            ).first()
        if row is None:
            return None
        key = VerifyKey(base64.b64decode(row.public_key))
        found[keyid] = (row.node_id, key)
        return key

    def nonce_seen(keyid: str, nonce: str) -> bool:
        if len(nonce) > 128:
            raise MalformedError("the nonce is too long")
        room = _nonce_room(node)
        try:
            with node.db.session() as session:
                room.check(session, node)  # bounded: refuse rather than forget
                session.execute(
                    sa.insert(SeenNonce).values(keyid=keyid, nonce=nonce, seen_at=node.now())
                )
        except IntegrityError:
            return True
        room.stored()
        return False

    message = httpsig.Request(method, target_uri, headers)
    settings = node.settings
    verified = httpsig.verify_request(
        message,
        resolve_key=resolve,
        now=_created(node),
        nonce_seen=nonce_seen,
        max_skew=settings.clock_skew_seconds,
        max_age=settings.signature_max_age_seconds,
    )
    if verified.keyid not in found:  # pragma: no cover - verify_request resolved it
        raise VerificationUnavailableError("unknown key")
    return IncomingSignature(found[verified.keyid][0], verified.keyid, verified, message)


def verify_response_from(
    node: Node,
    *,
    partner_keys: Mapping[str, VerifyKey],
    request: httpsig.Request,
    status: int,
    headers: list[tuple[str, str]],
) -> httpsig.VerifiedSignature:
    return httpsig.verify_response(
        httpsig.Response(status, headers),
        request=request,
        resolve_key=partner_keys.get,
        now=_created(node),
        max_skew=node.settings.clock_skew_seconds,
        max_age=node.settings.signature_max_age_seconds,
    )


def purge_nonces(node: Node) -> int:
    """Forget nonces older than any signature that could still be accepted."""
    horizon = node.now() - timedelta(
        seconds=node.settings.signature_max_age_seconds + 2 * node.settings.clock_skew_seconds
    )
    with node.db.session() as session:
        result = session.execute(sa.delete(SeenNonce).where(col(SeenNonce.seen_at) < horizon))
    _nonce_room(node).forget()
    return int(getattr(result, "rowcount", 0) or 0)
