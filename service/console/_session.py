"""Console sessions and CSRF tokens: HMAC-signed cookies naming a server-side session.

A successful login with a bearer token of role ``auditor`` or ``admin`` sets one cookie,
``entente_console``, whose value is ``v1.<payload>.<mac>``:

* payload (base64url): ``<node id>|<token id>|<issued>|<expires>|<session id>`` (POSIX
  seconds; the session id is 128 random bits, base64url);
* mac (base64url): HMAC-SHA-256 over the payload with the *session key*.

The cookie never holds the bearer secret. Each request re-reads the token row by its id, so a
revoked token ends every console session at once, and the session's row (``_session_store``),
so signing out ends that session everywhere; a session also ends after
:data:`SESSION_MAX_AGE`. The cookie is ``HttpOnly``, ``SameSite=Strict``, ``Path=/ui`` and
``Secure`` whenever the node's public URL is https (or the request came over HTTPS).

CSRF: ``SameSite=Strict`` already keeps the cookie off cross-site requests; on top of that every
POST form carries a token, HMAC-SHA-256 with the *CSRF key* over the session cookie (or, for the
login form, over a random pre-login cookie), checked in constant time. A POST whose ``Origin`` or
``Sec-Fetch-Site`` says it came from another site is refused before anything else.

Both keys are derived (HKDF-SHA-256, RFC 5869) from the node's Ed25519 signing key seed with
distinct ``info`` strings, so replicas of one node agree on them, nothing new is stored, and
rotating the node key ends every session. This module does not authenticate tokens (see
``service.tokens``) and does not render anything.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from dataclasses import dataclass

__all__ = [
    "LOGIN_COOKIE",
    "LOGIN_MAX_AGE",
    "SESSION_COOKIE",
    "SESSION_MAX_AGE",
    "ConsoleKeys",
    "SessionClaims",
    "hkdf_sha256",
    "new_login_nonce",
    "new_session_nonce",
]

SESSION_COOKIE = "entente_console"
LOGIN_COOKIE = "entente_console_login"  # the pre-login nonce the login form's token is bound to
SESSION_MAX_AGE = 8 * 3600  # seconds a console session lasts (absolute, not idle)
LOGIN_MAX_AGE = 30 * 60  # seconds a login form stays valid
_MAX_COOKIE = 512  # characters: anything longer is not ours
_SALT = b"entente.dev/console"


def hkdf_sha256(ikm: bytes, *, salt: bytes, info: bytes, length: int = 32) -> bytes:
    """RFC 5869 HKDF with SHA-256: extract (2.2), then expand (2.3)."""
    if not 0 < length <= 255 * 32:
        raise ValueError("HKDF-SHA-256 output is 1 to 8160 bytes")
    prk = hmac.new(salt, ikm, hashlib.sha256).digest()
    out, block, counter = b"", b"", 1
    while len(out) < length:
        block = hmac.new(prk, block + info + bytes([counter]), hashlib.sha256).digest()
        out += block
        counter += 1
    return out[:length]


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes | None:
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        return None
    return raw if _b64(raw) == text else None


@dataclass(frozen=True)
class SessionClaims:
    """What a valid session cookie says: whose token, and when the session ends."""

    node_id: str
    token_id: str
    issued: int
    expires: int
    session_id: str = ""


class ConsoleKeys:
    """The session and CSRF keys of one node (never printed)."""

    __slots__ = ("_csrf", "_node_id", "_session")

    def __init__(self, *, seed: bytes, node_id: str) -> None:
        self._session = hkdf_sha256(seed, salt=_SALT, info=b"session-mac/v1")
        self._csrf = hkdf_sha256(seed, salt=_SALT, info=b"csrf/v1")
        self._node_id = node_id

    def __repr__(self) -> str:
        return f"ConsoleKeys(node_id={self._node_id!r})"

    # -- sessions -------------------------------------------------------------------------

    def issue(self, *, token_id: str, now: int, nonce: bytes | None = None) -> str:
        """A session cookie value for ``token_id``, valid for :data:`SESSION_MAX_AGE`."""
        nonce = secrets.token_bytes(16) if nonce is None else nonce
        payload = f"{self._node_id}|{token_id}|{now}|{now + SESSION_MAX_AGE}|{_b64(nonce)}"
        body = payload.encode("utf-8")
        mac = hmac.new(self._session, body, hashlib.sha256).digest()
        return f"v1.{_b64(body)}.{_b64(mac)}"

    def open(self, value: str, *, now: int) -> SessionClaims:
        """Check a session cookie value; raise ``ValueError`` naming the reason otherwise."""
        if len(value) > _MAX_COOKIE:
            raise ValueError("malformed")
        version, _, rest = value.partition(".")
        body_b64, _, mac_b64 = rest.partition(".")
        body, mac = _unb64(body_b64), _unb64(mac_b64)
        if version != "v1" or body is None or mac is None:
            raise ValueError("malformed")
        expected = hmac.new(self._session, body, hashlib.sha256).digest()
        if not hmac.compare_digest(mac, expected):
            raise ValueError("bad-signature")
        parts = body.decode("utf-8", "replace").split("|")
        if len(parts) != 5 or not parts[2].isdigit() or not parts[3].isdigit():
            raise ValueError("malformed")
        claims = SessionClaims(parts[0], parts[1], int(parts[2]), int(parts[3]), parts[4])
        if claims.node_id != self._node_id:
            raise ValueError("other-node")
        if not claims.issued - 300 <= now < claims.expires:
            raise ValueError("expired")
        return claims

    # -- CSRF ------------------------------------------------------------------------------

    def _token(self, purpose: bytes, bound_to: str) -> str:
        mac = hmac.new(self._csrf, purpose + b"\0" + bound_to.encode("utf-8"), hashlib.sha256)
        return _b64(mac.digest())

    def csrf_for_session(self, cookie: str) -> str:
        return self._token(b"session", cookie)

    def csrf_for_login(self, nonce: str) -> str:
        return self._token(b"login", nonce)

    def check_csrf(self, presented: str | None, expected: str) -> bool:
        if not presented or len(presented) > 100:
            return False
        return hmac.compare_digest(presented.encode("ascii", "replace"), expected.encode("ascii"))


def new_login_nonce() -> str:
    return _b64(secrets.token_bytes(32))


def new_session_nonce() -> tuple[bytes, str]:
    """A fresh session: the nonce for :meth:`ConsoleKeys.issue` and the session id it becomes."""
    nonce = secrets.token_bytes(16)
    return nonce, _b64(nonce)
