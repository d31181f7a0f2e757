"""Signing and verifying federation messages (RFC 9421, Ed25519, RFC 9530 Content-Digest).

Every federation request carries a signature covering ``@method``, ``@target-uri``,
``content-digest`` (and ``content-type`` when it has one), with ``created``, ``expires``,
``nonce``, ``keyid`` (the sender's key fingerprint) and ``alg``. The receiver resolves ``keyid``
only among its pinned partners' current keys, enforces the clock-skew window, runs the partner's
rate limit, and only then refuses a nonce it has seen (kept in the database per partner key, so a
replay is refused by every replica and one partner cannot fill another's cache: ``replay.py``).
Every response, refusals included, is signed too: bound to the request's own signature (RFC 9421
2.4), ``content-type`` covered, with a nonce; the partner client believes nothing else. A partial
answer (206, to a signed ``Range``) covers its ``content-range`` too, and its ``Content-Digest``
is of the bytes it carries.
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime

from sqlmodel import col, select

from crypto import httpsig
from crypto.errors import (
    CryptoError,
    MalformedError,
    VerificationError,
    VerificationUnavailableError,
)
from crypto.keys import SigningKey, VerifyKey
from service.federation.replay import MAX_NONCE_CHARS, forget_expired, remember_nonce
from service.models import PartnerKey
from service.node import Node

__all__ = [
    "IncomingSignature",
    "digest_value",
    "purge_nonces",
    "request_label",
    "sign_request_headers",
    "sign_response_headers",
    "verify_incoming",
    "verify_response_from",
]

SIGNATURE_LIFETIME = 300  # seconds a signature stays valid after ``created``


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
        label=httpsig.REQUEST_LABEL,
    )
    return {"Content-Digest": content_digest, **signed}


def request_label(request: httpsig.Request) -> str | None:
    """The label of the request's one signature, which a response covers; None without one."""
    try:
        labels = httpsig.signature_labels(request)
    except CryptoError:
        return None
    return labels[0] if len(labels) == 1 else None


def sign_response_headers(
    node: Node,
    *,
    request: httpsig.Request,
    status: int,
    headers: Mapping[str, str],
    content_digest: str,
) -> dict[str, str]:
    """Headers that sign a response to ``request`` (which carries one signature): the status,
    ``Content-Digest``, ``Content-Type`` and the request's method, URI and signature are
    covered (RFC 9421 2.4), with a fresh nonce. Raises ``MalformedError`` for a request
    without exactly one signature, which no partner client could match the answer to."""
    label = request_label(request)
    if label is None:
        raise MalformedError("a response is signed only for a request with one signature")
    message = httpsig.Response(status, {**headers, "Content-Digest": content_digest})
    created = _created(node)
    signed = httpsig.sign_response(
        message,
        request=request,
        key=node.keys.signing,
        keyid=node.keys.signing.fingerprint,
        created=created,
        expires=created + SIGNATURE_LIFETIME,
        nonce=secrets.token_urlsafe(16),
        components=_response_components(label, partial="Content-Range" in headers),
    )
    return {"Content-Digest": content_digest, **signed}


def _response_components(label: str, *, partial: bool) -> tuple[httpsig.Component, ...]:
    """The profile's response components, and ``content-range`` for a partial answer."""
    covered = httpsig.response_components(label)
    return (*covered, httpsig.Component("content-range")) if partial else covered


def digest_value(raw_sha256: bytes) -> str:
    """A ``Content-Digest`` field value for a known SHA-256."""
    return f"sha-256=:{base64.b64encode(raw_sha256).decode('ascii')}:"


def verify_incoming(
    node: Node,
    *,
    method: str,
    target_uri: str,
    headers: list[tuple[str, str]],
    admit: Callable[[str], None],
) -> IncomingSignature:
    """Verify a partner's signed request. Raises ``crypto.errors.CryptoError`` subclasses.

    In this order: the signature verifies against a pinned partner's current key; then
    ``admit(partner)`` runs (the partner's rate limit: it raises to refuse); only then is the
    nonce stored, in that partner's own replay cache (``replay.py``), so that neither a
    forged nor a refused request spends any room, and no partner spends another's.
    """
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
        # Called by httpsig only once the signature verified (RFC 9421 3.2.1).
        if len(nonce) > MAX_NONCE_CHARS:
            raise MalformedError("the nonce is too long")
        partner = found[keyid][0]
        admit(partner)  # the partner's rate limit, before its nonce takes any room
        return remember_nonce(
            node.db, node.settings, keyid=keyid, partner=partner, nonce=nonce, now=node.now()
        )

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
    retired: Mapping[str, datetime] | None = None,
) -> httpsig.VerifiedSignature:
    """Verify a partner's answer (a refusal too) to ``request``, as this node sent it, under
    the profile: bound to the request's signature, ``Content-Type`` covered, a nonce.

    ``retired`` maps retired keys among ``partner_keys`` to when they were retired: such a key
    verifies only an answer signed (``created``) before then. A partial answer (206) must
    cover its ``content-range``."""
    verified = httpsig.verify_response(
        httpsig.Response(status, headers),
        request=request,
        resolve_key=partner_keys.get,
        now=_created(node),
        max_skew=node.settings.clock_skew_seconds,
        max_age=node.settings.signature_max_age_seconds,
        required_components=_response_components(httpsig.REQUEST_LABEL, partial=status == 206),
        require_nonce=True,
    )
    until = (retired or {}).get(verified.keyid)
    if until is not None and verified.created >= int(until.timestamp()):
        raise VerificationError("the answer is signed by a key the partner has retired")
    return verified


def purge_nonces(node: Node) -> int:
    """Forget nonces older than any signature that could still be accepted."""
    return forget_expired(node.db, node.settings, now=node.now())
