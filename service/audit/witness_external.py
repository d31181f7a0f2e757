"""Witnesses that are no partner's: any C2SP tlog-witness this node asks to cosign its log.

Partners witness each other over the federation's signed requests (``service.audit.submission``).
An operator may also want witnesses outside the network: a public witness, a regulator's, one of
another transparency ecosystem. They speak the plain C2SP tlog-witness protocol: ``POST
<prefix>/add-checkpoint`` with ``old <size>``, a consistency proof, a blank line and the signed
checkpoint; no HTTP authentication (the checkpoint's signature is what they check); a ``200``
with ``cosignature/v1`` lines, or a ``409`` with the size they hold (``text/x.tlog.size``).

They are listed in ``ENTENTE_EXTERNAL_WITNESSES_FILE``, one per line: the witness's submission
prefix (an ``http`` or ``https`` URL; the request goes to ``<prefix>/add-checkpoint``), then its
cosigner key as a C2SP verifier key (``<name>+<key id>+<base64(0x04 || Ed25519 key)>``).
Blank lines and ``#`` comments are ignored. Each is asked as a partner's witness is, after every
checkpoint, from the size it last cosigned; its cosignature is kept only if it verifies under
that key, and counts toward the quorum beside the partners'. Its answer is not otherwise
trusted: a size it claims to hold only changes where the next proof starts from (a partner's
claim, signed by its pinned key, can also stop the sequencer: ``service.audit.rollback``).

In the tables of submissions and cosignatures an external witness is ``external:<key id>``
(eight hex digits), which no node id can be.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from crypto.errors import CryptoError, MalformedError
from crypto.note import SIG_COSIGNATURE_V1, NoteVerifier
from service.audit.errors import WitnessConfigError
from service.audit.listed import ListedFile, lines
from service.errors import PartnerUnavailableError

__all__ = [
    "EXTERNAL_PREFIX",
    "ExternalWitness",
    "PlainWitnessTransport",
    "WitnessReply",
    "external_witnesses",
    "is_external",
]

EXTERNAL_PREFIX = "external:"
_SETTING = "ENTENTE_EXTERNAL_WITNESSES_FILE"


@dataclass(frozen=True)
class WitnessReply:
    """A witness's answer to an add-checkpoint request (a partner's or an external one's)."""

    status: int
    content_type: str
    body: bytes


@dataclass(frozen=True)
class ExternalWitness:
    url: str  # the submission prefix
    verifier: NoteVerifier  # its cosigner key

    @property
    def key(self) -> str:
        """Its name in the submission and cosignature tables."""
        return f"{EXTERNAL_PREFIX}{self.verifier.key_id:08x}"


def is_external(witness: str) -> bool:
    return witness.startswith(EXTERNAL_PREFIX)


def _parse(path: Path) -> tuple[ExternalWitness, ...]:
    found: dict[str, ExternalWitness] = {}
    for number, line in lines(_SETTING, path):
        where = f"{_SETTING} {path}, line {number}"
        fields = line.split()
        if len(fields) != 2:
            raise WitnessConfigError(f"{where}: want the witness's URL, then its verifier key")
        url, vkey = fields
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.query:
            raise WitnessConfigError(f"{where}: {url[:100]!r} is not an http(s) URL")
        try:
            verifier = NoteVerifier.parse(vkey)
        except (MalformedError, CryptoError) as exc:
            raise WitnessConfigError(f"{where}: not a C2SP verifier key: {exc}") from None
        if verifier.sig_type != SIG_COSIGNATURE_V1:
            raise WitnessConfigError(
                f"{where}: a witness cosigns with a cosignature/v1 key (type 0x04)"
            )
        witness = ExternalWitness(url.rstrip("/"), verifier)
        if witness.key in found:
            raise WitnessConfigError(f"{where}: the key of {verifier.name!r} is listed twice")
        found[witness.key] = witness
    return tuple(found.values())


_listed = ListedFile(_SETTING, _parse)


def external_witnesses(path: Path | None) -> tuple[ExternalWitness, ...]:
    """The witnesses listed in ``path`` (``ENTENTE_EXTERNAL_WITNESSES_FILE``); re-read when the
    file changes. Raises :class:`WitnessConfigError` for a file that cannot be used."""
    return () if path is None else _listed.read(path)


class PlainWitnessTransport:
    """Sends an add-checkpoint body to an external witness: a plain POST, as the C2SP spec has
    it (the checkpoint's signature authenticates the request); its answer read up to
    ``limit`` bytes. Transport failures become :class:`PartnerUnavailableError`. One connection
    per request (a witness is asked once per checkpoint interval), unless ``http`` is given."""

    def __init__(self, *, limit: int, http: httpx.AsyncClient | None = None) -> None:
        self._limit = limit
        self._http = http

    async def add_checkpoint(
        self, *, partner_id: str, partner_url: str, body: bytes
    ) -> WitnessReply:
        if self._http is not None:
            return await self._post(self._http, partner_url, body)
        async with httpx.AsyncClient(timeout=httpx.Timeout(10.0, read=30.0)) as http:
            return await self._post(http, partner_url, body)

    async def _post(self, http: httpx.AsyncClient, partner_url: str, body: bytes) -> WitnessReply:
        url = partner_url + "/add-checkpoint"
        try:
            async with http.stream(
                "POST", url, content=body, headers={"Content-Type": "text/plain; charset=utf-8"}
            ) as response:
                data = bytearray()
                async for chunk in response.aiter_bytes():
                    data += chunk
                    if len(data) > self._limit:
                        raise PartnerUnavailableError(
                            f"the witness at {url} answered more than {self._limit} bytes"
                        )
                media_type = response.headers.get("content-type", "").split(";")[0].strip()
                return WitnessReply(response.status_code, media_type, bytes(data))
        except httpx.HTTPError as exc:
            raise PartnerUnavailableError(f"the witness at {url} is unreachable: {exc}") from None
