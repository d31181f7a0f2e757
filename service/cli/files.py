"""``entente seal``, ``verify`` and ``open``: the sealed-artifact format on local files.

``seal`` encrypts FILE to the given recipients (pinned partner ids or ``age1…`` strings) and this
node, in one pass that also hashes it, and writes ``OUT`` (a plain age v1 file any age tool opens)
and ``OUT.dsse.json`` (the manifest, signed by this node). ``verify`` checks the manifest signature
and that ``OUT`` is the ciphertext it binds, without decrypting. ``open`` decrypts to ``-o PLAIN``
and leaves no file unless every check passed.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from crypto.dsse import Envelope
from crypto.errors import CryptoError
from crypto.keyset import KeySet, SignerSet
from crypto.sealed import (
    Manifest,
    ManifestRecipient,
    load_envelope,
    verify,
)
from crypto.sealing import SEALING_HYBRID, kind_of
from crypto.vocab import TLP_LABELS, is_term
from service.artifacts.parties import Party, new_artifact_id, recipients_for
from service.cli._common import HomeOpt, console, err_console, settings_for
from service.cli._terminal import outside
from service.errors import UsageError
from service.files import open_sealed_file, seal_file, write_atomically
from service.home import Home, KeyNeed, open_home
from service.keystore import retired_key_files
from service.pinned import pinned_keysets, pinned_parties

__all__ = ["open_", "progress_bar", "seal", "verify_"]


@contextmanager
def progress_bar(
    total: int | None, description: str, *, shown: bool = True
) -> Iterator[Callable[[int], None]]:
    """A rich progress bar on a terminal; nothing when stderr is not one (or not ``shown``)."""
    if not shown or not sys.stderr.isatty():
        yield lambda n: None
        return
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=err_console,
        transient=True,
    ) as progress:
        task = progress.add_task(outside(description), total=total)  # names may be outside
        yield lambda n: progress.advance(task, n)


def _trusted_for(
    home_path: Path, database_url: str | None, origin: str, envelope: Envelope
) -> list[KeySet]:
    """The key sets that may have signed a manifest of ``origin``: a pinned partner's from the
    database; this node's current set from its own descriptor (no private key), and its retired
    sets only when no signature names the current key (those are unlocked: only their public
    halves are kept nowhere else)."""
    home = open_home(home_path)
    settings = settings_for(home_path, database_url)
    if origin != home.node_id:
        return pinned_keysets(settings.resolved_database_url(), origin)
    current = home.public_keyset()
    if any(keyid == current.fingerprint for keyid, _ in envelope.signatures):
        return [current]
    if not any(kind == "signing" for _, kind, _ in retired_key_files(home.keys_dir)):
        return [current]
    return [current, *home.unlock(settings, KeyNeed.RETIRED_SIGNING).retired_keysets]


def _opening_need(home: Home, envelope: Envelope) -> KeyNeed:
    """The identities that can open a file whose manifest is ``envelope``: the current ones it
    names as recipients, or every identity (retired ones too) when it names neither. The
    manifest is only a hint here; its signature and binding are checked before any plaintext."""
    try:
        named = {r.recipient for r in Manifest.from_payload(envelope.payload).recipients}
    except (ValueError, CryptoError):
        return KeyNeed.IDENTITIES  # the manifest check reports what is wrong with it
    need = KeyNeed(0)
    if home.age_recipient in named:
        need |= KeyNeed.IDENTITY
    if home.pq_recipient is not None and home.pq_recipient in named:
        need |= KeyNeed.HYBRID
    return need or KeyNeed.IDENTITIES


def _manifest_origin(envelope_path: Path) -> str:
    """The origin the manifest claims (verified against that origin's keys afterwards)."""
    try:
        envelope = load_envelope(envelope_path.read_bytes())
        return str(Manifest.from_payload(envelope.payload).origin)
    except (OSError, ValueError, CryptoError) as exc:
        raise UsageError(f"cannot read the manifest {envelope_path}: {exc}") from None


def _choose(parties: list[Party], given: list[ManifestRecipient]) -> list[ManifestRecipient]:
    """The recipients of ``entente seal``: this node and the pinned partners named (``parties``,
    each with its X25519 and perhaps a hybrid recipient) and the age recipients given as such.

    Post-quantum and classic recipients in one file would leave it only as strong as the classic
    ones, so age refuses the mix: the kind of the recipients given decides (this node's own and
    the partners' follow it, or the seal is refused saying who cannot); with none given, the
    file is sealed post-quantum when every party can read it so."""
    kinds = {kind_of(r.recipient) for r in given}
    if len(kinds) > 1:
        raise UsageError(
            "post-quantum (age1pq1…) and classic (age1…) recipients cannot be mixed in one file "
            "(it would be only as strong as the classic ones): give one kind"
        )
    if kinds == {SEALING_HYBRID}:
        lacking = [p.node_id for p in parties if not p.pq_recipient]
        if lacking:
            raise UsageError(
                f"post-quantum (age1pq1…) recipients cannot be mixed with classic ones, and "
                f"{', '.join(lacking)} has no post-quantum recipient (a classic-only node): seal "
                "to classic age1… recipients, or add post-quantum keys with `entente keys rotate "
                "--post-quantum`"
            )
        return [ManifestRecipient(p.node_id, p.pq_recipient or "") for p in parties] + given
    if kinds:
        return [ManifestRecipient(p.node_id, p.age_recipient) for p in parties] + given
    return recipients_for(parties)


@contextmanager
def _writing(path: Path) -> Iterator[None]:
    """Turn a failure to write ``path`` into one line (the partial file is already gone)."""
    try:
        yield
    except FileExistsError:
        raise UsageError(f"{path} exists; pass --force to overwrite it") from None
    except OSError as exc:
        where = exc.filename if isinstance(exc.filename, str) else path
        raise UsageError(f"cannot write {where}: {exc.strerror or exc}") from None


def seal(
    file: Annotated[Path, typer.Argument(help="The file to seal")],
    to: Annotated[
        list[str], typer.Option("--to", help="A pinned partner id or an age1… recipient")
    ],
    out: Annotated[Path, typer.Option("-o", "--out", help="The age file to write")],
    home: HomeOpt = None,
    title: Annotated[str | None, typer.Option(help="Title in the manifest")] = None,
    tlp: Annotated[str, typer.Option(help="TLP 2.0 label")] = "TLP:AMBER",
    topic: Annotated[list[str] | None, typer.Option("--topic", help="Topic (repeatable)")] = None,
    purpose: Annotated[list[str] | None, typer.Option("--purpose", help="Purpose")] = None,
    force: Annotated[
        bool, typer.Option(help="Overwrite an existing OUT and OUT.dsse.json")
    ] = False,
) -> None:
    """Encrypt FILE to recipients and this node; sign a manifest binding it (OUT.dsse.json)."""
    if tlp not in TLP_LABELS:
        raise UsageError(f"--tlp must be one of {', '.join(TLP_LABELS)}")
    for option, terms in (("--topic", topic or ()), ("--purpose", purpose or ())):
        for term in terms:
            if not is_term(term):
                raise UsageError(
                    f"{option} {term!r}: lowercase letters, digits and '-' in segments "
                    "separated by '/', e.g. evaluation/red-teaming"
                )
    manifest_path = Path(f"{out}.dsse.json")
    for path in (out, manifest_path):
        if path.exists() and not force:
            raise UsageError(f"{path} exists; pass --force to overwrite it")
    settings = settings_for(home)
    node_home = open_home(settings.require_home())
    parties: list[Party] = [node_home]
    given: list[ManifestRecipient] = []
    named = [target for target in to if not target.startswith("age1")]
    pinned = pinned_parties(settings.resolved_database_url(), named) if named else {}
    for index, target in enumerate(to, start=1):
        if target.startswith("age1"):
            try:
                given.append(ManifestRecipient(f"recipient-{index}", target))
            except CryptoError as exc:
                raise UsageError(f"--to {target[:20]}…: {exc}") from None
            continue
        partner = pinned.get(target)
        if partner is None:
            raise UsageError(f"--to {target}: not a pinned partner or an age1… recipient")
        parties.append(partner)
    recipients = _choose(parties, given)
    try:
        size = file.stat().st_size
    except OSError as exc:
        raise UsageError(f"cannot read {file}: {exc.strerror}") from None
    # Sealing needs only public keys until the manifest is signed: the signing keys' scrypt runs
    # meanwhile on another thread, and a wrong passphrase stops the sealing as soon as it shows.
    unlocking = node_home.unlock_meanwhile(settings, KeyNeed.SIGNING)

    def signer() -> SignerSet:
        return unlocking.result().signer

    now = datetime.now(UTC)
    with _writing(out), progress_bar(size, f"sealing {file.name}") as bar:

        def advance(n: int) -> None:
            bar(n)
            if unlocking.done() and unlocking.exception() is not None:
                unlocking.result()  # raises what the unlock raised

        sealed = seal_file(
            file,
            out,
            overwrite=force,
            artifact_id=new_artifact_id(now),
            title=title or file.name,
            origin=node_home.node_id,
            tlp=tlp,
            recipients=recipients,
            signer=signer,
            policy={"source": "entente seal (local; no partner policy evaluated)"},
            now=now,
            topics=topic or (),
            purposes=purpose or (),
            on_progress=advance,
        )
    with _writing(manifest_path):
        write_atomically(manifest_path, sealed.envelope.to_bytes())
    console.print(f"sealed {file} -> {out} ({sealed.size} bytes, sha256 {sealed.sha256})")
    console.print(f"manifest {manifest_path}, signed by {node_home.node_id}")
    console.print(f"recipients: {', '.join(r.node_id for r in recipients)}")
    kind = "post-quantum" if sealed.manifest.sealing == SEALING_HYBRID else "classic"
    console.print(f"sealed {kind} ({sealed.manifest.sealing})")


def verify_(
    sealed_file: Annotated[Path, typer.Argument(metavar="OUT", help="The sealed age file")],
    home: HomeOpt = None,
    manifest: Annotated[Path | None, typer.Option(help="Default: OUT.dsse.json")] = None,
) -> None:
    """Check the manifest's signature and that OUT is the ciphertext it binds (no decryption)."""
    manifest_path = manifest or Path(f"{sealed_file}.dsse.json")
    origin = _manifest_origin(manifest_path)
    settings = settings_for(home)
    envelope = load_envelope(manifest_path.read_bytes())
    trusted = _trusted_for(settings.require_home(), settings.database_url, origin, envelope)
    if not trusted:
        raise UsageError(f"the manifest's origin {origin!r} is not this node or a pinned partner")
    try:
        with open(sealed_file, "rb") as fh:
            result = verify(envelope, keysets=trusted, ciphertext=fh, origin=origin)
    except OSError as exc:
        raise UsageError(f"cannot read {sealed_file}: {exc.strerror}") from None
    console.print(
        f"OK: {outside(sealed_file)} is {outside(repr(result.artifact_id))} "
        f"({outside(result.title)}), {outside(result.tlp)}"
    )
    console.print(
        f"  signed by {outside(origin)}; plaintext {result.size} bytes, sha256 {result.sha256}"
    )


def open_(
    sealed_file: Annotated[Path, typer.Argument(metavar="OUT", help="The sealed age file")],
    out: Annotated[Path, typer.Option("-o", "--out", help="Where to write the plaintext")],
    home: HomeOpt = None,
    manifest: Annotated[Path | None, typer.Option(help="Default: OUT.dsse.json")] = None,
    force: Annotated[bool, typer.Option(help="Overwrite an existing output file")] = False,
) -> None:
    """Verify and decrypt OUT; the plaintext file appears only if every check passed."""
    manifest_path = manifest or Path(f"{sealed_file}.dsse.json")
    origin = _manifest_origin(manifest_path)
    settings = settings_for(home)
    node_home = open_home(settings.require_home())
    envelope = load_envelope(manifest_path.read_bytes())
    trusted = _trusted_for(node_home.path, settings.database_url, origin, envelope)
    keys = node_home.unlock(settings, _opening_need(node_home, envelope))
    try:
        result = open_sealed_file(
            sealed_file,
            out,
            envelope=envelope,
            identities=keys.unlocked_identities,
            keysets=trusted,
            origin=origin,
            overwrite=force,
        )
    except FileExistsError:
        raise UsageError(f"{out} exists; pass --force to overwrite it") from None
    except OSError as exc:
        raise UsageError(f"cannot open {sealed_file}: {exc.strerror}") from None
    console.print(f"opened {sealed_file} -> {out} ({result.size} bytes, sha256 verified)")
