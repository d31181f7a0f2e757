"""Where a webhook may be delivered: "a local URL, never a partner".

:func:`check_url` takes a URL and the facts it is judged by (the hosts the operator allowed, the
pinned partners' base URLs) and answers the URL to store, or raises
:class:`service.errors.InvalidInputError` whose ``reason`` names the rule broken:

1. ``malformed``: not a URL this module can read (too long, spaces or control characters, a port
   out of range, no host, a fragment);
2. ``scheme``: not ``http`` or ``https``;
3. ``credentials``: a user name or password in the URL (it would be stored and listed in clear;
   the signature is the receiver's proof of origin);
4. ``host``: the host is neither loopback (``127.0.0.0/8``, ``::1``, ``localhost``) nor listed in
   ``ENTENTE_WEBHOOK_ALLOWED_HOSTS``;
5. ``partner``: its host and port are a pinned partner's (every loopback address counts as the
   same host, so ``localhost:8443`` is refused when a partner listens on ``127.0.0.1:8443``).

Nothing is resolved: a name is judged as written. A host name an internal resolver maps to a
partner's address is not caught here; that is why names other than ``localhost`` must be listed
by the operator. The dispatcher checks again before each round of deliveries, so a partner
pinned later at a subscription's address stops it.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Collection, Iterable
from urllib.parse import SplitResult, urlsplit

from service.errors import InvalidInputError

__all__ = ["DEFAULT_PORTS", "MAX_URL_LENGTH", "check_url", "endpoint", "is_loopback"]

MAX_URL_LENGTH = 2048  # characters
DEFAULT_PORTS = {"http": 80, "https": 443}
_LOOPBACK = "loopback"  # the host key every loopback address and ``localhost`` share


def _refuse(reason: str, message: str) -> InvalidInputError:
    return InvalidInputError(f"webhook URL refused: {message}", reason=reason)


def _host_key(host: str) -> str:
    """A host as compared: lower case, no trailing dot, an IP address in its canonical form,
    and every loopback address as one key."""
    host = host.lower().rstrip(".")
    if host == "localhost":
        return _LOOPBACK
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return _LOOPBACK if address.is_loopback else address.compressed


def is_loopback(host: str) -> bool:
    """``localhost`` or a loopback address literal (127.0.0.0/8, ::1); nothing is resolved."""
    return _host_key(host) == _LOOPBACK


def _split(url: str) -> SplitResult:
    if len(url) > MAX_URL_LENGTH:
        raise _refuse("malformed", f"longer than {MAX_URL_LENGTH} characters")
    if any(ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F for ch in url):
        raise _refuse("malformed", "it contains spaces or control characters")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port out of range
    except ValueError as exc:
        raise _refuse("malformed", f"not a URL ({exc})") from None
    return parts


def endpoint(url: str) -> tuple[str, int] | None:
    """The (host key, port) a base URL talks to, or None when it has no http(s) host."""
    try:
        parts = _split(url)
    except InvalidInputError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS or not parts.hostname:
        return None
    return _host_key(parts.hostname), parts.port or DEFAULT_PORTS[scheme]


def check_url(
    url: str, *, allowed_hosts: Collection[str], partners: Iterable[tuple[str, str]]
) -> str:
    """``url`` if a webhook may be delivered to it (the rules in the module docstring, in order);
    ``partners`` are the pinned partners' ``(node id, base URL)``."""
    url = url.strip()
    parts = _split(url)  # (1)
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS:  # (2)
        raise _refuse("scheme", f"the scheme must be http or https, not {scheme[:20]!r}")
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:  # (3)
        raise _refuse(
            "credentials",
            "it carries a user name or password, which would be stored and listed in clear; "
            "the receiver checks the signature instead",
        )
    if not parts.hostname:
        raise _refuse("malformed", "it names no host")
    if parts.fragment:
        raise _refuse("malformed", "a fragment is never sent to a server: leave it out")
    host = _host_key(parts.hostname)
    allowed = {_host_key(h) for h in allowed_hosts}
    if host != _LOOPBACK and host not in allowed:  # (4)
        raise _refuse(
            "host",
            f"the host {parts.hostname[:100]!r} is neither loopback (127.0.0.0/8, ::1, "
            "localhost) nor listed in ENTENTE_WEBHOOK_ALLOWED_HOSTS: a webhook goes to a local "
            "receiver, never to a partner",
        )
    port = parts.port or DEFAULT_PORTS[scheme]
    for node_id, base in partners:  # (5)
        if endpoint(base) == (host, port):
            raise _refuse(
                "partner",
                f"{parts.hostname[:100]}:{port} is the address of the pinned partner "
                f"{node_id!r}: a webhook never goes to a partner",
            )
    return url
