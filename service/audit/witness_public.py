"""This node as a C2SP tlog-witness for logs that are no partner's: the standard request.

A partner submits its checkpoints over the federation's signed requests
(``service.audit.witness``). Any other transparency log may ask this node to witness it through
the plain C2SP tlog-witness ``add-checkpoint`` request, with no HTTP authentication: as the spec
says, the request is authenticated by the checkpoint's own signature, made by a log key this
witness is configured to follow. The operator lists those logs in ``ENTENTE_WITNESSED_LOGS_FILE``:
one C2SP verifier key (``<origin>+<key id>+<base64(0x01 || Ed25519 key)>``) per line, the key's
name being the log's origin; blank lines and ``#`` comments are ignored.

The rules are the partner path's (``service.audit.witness_rules``, ``cosign_submission``): an
unknown origin is 404, a checkpoint its key did not sign 403, an old size above the new one 400, a
stale old size 409 with the size this witness holds (``text/x.tlog.size``), an inconsistent proof
422 and a different root at a cosigned size 409, both kept as evidence. Refusals before the
signature checked out are anonymous, audited per source and window by the app's problem handler
(``service.audit.refusals``); those after it are the log's (``log:<origin>``), one entry each.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from sqlmodel import Session

from crypto.errors import CryptoError, MalformedError
from crypto.note import SIG_ED25519, Cosigner, NoteVerifier
from service.audit.errors import WitnessConfigError
from service.audit.listed import ListedFile, lines
from service.audit.witness import cosign_submission
from service.audit.witness_rules import Refusal, check_signed, parse_submission
from service.errors import NotFoundError

__all__ = ["WITNESS_LOG_OWNER", "add_public_checkpoint", "witnessed_logs"]

WITNESS_LOG_OWNER = ""  # witness_logs.partner of a log that is no partner's

_SETTING = "ENTENTE_WITNESSED_LOGS_FILE"


def _parse(path: Path) -> dict[str, NoteVerifier]:
    logs: dict[str, NoteVerifier] = {}
    for number, line in lines(_SETTING, path):
        where = f"{_SETTING} {path}, line {number}"
        try:
            verifier = NoteVerifier.parse(line)
        except (MalformedError, CryptoError) as exc:
            raise WitnessConfigError(
                f"{path}, line {number}: not a C2SP verifier key: {exc}"
            ) from None
        if verifier.sig_type != SIG_ED25519:
            raise WitnessConfigError(
                f"{path}, line {number}: a log key signs with Ed25519 (type 0x01)"
            )
        if verifier.name in logs:
            raise WitnessConfigError(f"{where}: a second key for {verifier.name!r}")
        logs[verifier.name] = verifier
    return logs


_listed = ListedFile(_SETTING, _parse)


def witnessed_logs(path: Path | None) -> dict[str, NoteVerifier]:
    """The logs named in ``path`` (``ENTENTE_WITNESSED_LOGS_FILE``), by origin; re-read when
    the file changes. Raises :class:`WitnessConfigError` for a file that cannot be used."""
    return {} if path is None else _listed.read(path)


def add_public_checkpoint(
    session: Session,
    *,
    request_body: bytes,
    logs: dict[str, NoteVerifier],
    cosigner: Cosigner,
    now: datetime,
) -> str:
    """Handle a C2SP tlog-witness ``add-checkpoint`` request for one of ``logs``; return the
    cosignature line."""
    parsed = parse_submission(request_body)
    if isinstance(parsed, Refusal):
        raise parsed.error
    origin = parsed.origin
    verifier = logs.get(origin)
    # "If the checkpoint origin is unknown, the witness MUST respond with 404".
    if verifier is None:
        raise NotFoundError(f"this witness does not follow a log with origin {origin[:200]!r}")
    refusal = check_signed(parsed, verifier, whose="the log's key")
    if refusal is not None:
        raise refusal.error
    return cosign_submission(
        session,
        parsed,
        owner=WITNESS_LOG_OWNER,
        partner=None,
        actor=f"log:{origin[:190]}",
        cosigner=cosigner,
        now=now,
    )
