"""``entente roster``: a network's members in one signed document (create, sign, show, import).

A node joins a network of N in one step: its operator compares ONE value out of band (the
roster's SHA-256) instead of N-1 fingerprints, and ``entente roster import --digest`` pins every
member, each descriptor still checked against the fingerprint the roster names. Existing members
take a new version (a member added or removed) when enough members they already pin signed it.
Every import is audited (``roster.imported``, and ``partner.added``/``partner.removed``).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer

from crypto.dsse import Envelope
from crypto.errors import CryptoError
from crypto.keys import normalize_fingerprint
from crypto.roster import Member, Roster, sign_roster
from service.cli._common import (
    DbUrlOpt,
    HomeOpt,
    JsonOpt,
    console,
    open_db,
    read_input,
    settings_for,
)
from service.cli._terminal import SafeTable, outside
from service.errors import UsageError
from service.partners import list_partners
from service.roster import import_roster, read_roster

app = typer.Typer(help="Network rosters: join a network of N in one step.", no_args_is_help=True)

FileArg = Annotated[Path, typer.Argument(help="The roster file (a DSSE envelope)")]
OPERATOR = "admin:cli"


def descriptor_node_id(envelope: object) -> object:
    """The node id a descriptor envelope claims (checked afterwards with its signatures)."""
    payload = json.loads(Envelope.from_json(envelope).payload)
    return payload.get("node_id") if isinstance(payload, dict) else None


def _write(path: Path, envelope: Envelope) -> None:
    path.write_text(json.dumps(envelope.to_json(), indent=2, sort_keys=True) + "\n")


@app.command()
def create(
    network: Annotated[str, typer.Option("--network", help="The network's name")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Where to write the roster")],
    previous: Annotated[
        Path | None, typer.Option("--previous", help="The version this one replaces")
    ] = None,
    without: Annotated[
        list[str] | None, typer.Option("--without", help="A pinned partner to leave out")
    ] = None,
    member: Annotated[
        list[str] | None,
        typer.Option(
            "--member",
            help="DESCRIPTOR=FINGERPRINT: a member this node does not pin (yet), its descriptor "
            "checked against the fingerprint given out of band; repeat for several",
        ),
    ] = None,
    home: HomeOpt = None,
    database_url: DbUrlOpt = None,
) -> None:
    """Write a roster of this node, the partners it pins and any --member, signed by this node."""
    settings = settings_for(home, database_url)
    node_home, db = open_db(settings)
    keys = node_home.unlock(settings)
    own = json.loads(node_home.descriptor_envelope().to_bytes())
    with db.session() as session:
        members = [Member(node_home.node_id, node_home.fingerprint, own)] + [
            Member(p.node_id, p.fingerprint, json.loads(p.descriptor))
            for p in list_partners(session)
            if p.node_id not in set(without or ())
        ]
    db.dispose()
    for spec in member or ():
        file, sep, fingerprint = spec.rpartition("=")
        if not sep:
            raise UsageError(f"--member {spec!r}: write DESCRIPTOR_FILE=FINGERPRINT")
        try:
            descriptor = json.loads(read_input(Path(file)))
            node_id = str(descriptor_node_id(descriptor))
            checked = Member(node_id, normalize_fingerprint(fingerprint), descriptor)
            checked.verified(datetime.now(UTC))
        except (ValueError, CryptoError) as exc:
            raise UsageError(f"--member {file}: {exc}") from None
        if any(m.node_id == checked.node_id for m in members):
            raise UsageError(f"--member {file}: {checked.node_id} is already a member")
        members.append(checked)
    before = read_roster(read_input(previous))[1] if previous is not None else None
    roster = Roster(
        network,
        before.version + 1 if before else 1,
        datetime.now(UTC),
        tuple(members),
        before.sha256 if before else None,
    )
    _write(out, sign_roster(roster, keys.signer))
    console.print(
        f"roster of {network} v{roster.version}: {len(members)} members, signed by "
        f"{node_home.node_id}; sha256 {roster.sha256}"
    )


@app.command()
def sign(file: FileArg, home: HomeOpt = None) -> None:
    """Add this node's signature to a roster it is a member of (the file is rewritten)."""
    settings = settings_for(home)
    node_home, _db = open_db(settings)
    envelope, roster = read_roster(read_input(file))
    member = roster.member(node_home.node_id)
    if member is None or member.fingerprint != node_home.fingerprint:
        raise UsageError(f"{node_home.node_id} is not a member of this roster under its own key")
    _write(file, sign_roster(roster, node_home.unlock(settings).signer, onto=envelope))
    console.print(f"signed the roster of {roster.network} v{roster.version} as {member.node_id}")


@app.command()
def show(file: FileArg, as_json: JsonOpt = False) -> None:
    """The roster's members and fingerprints, and its SHA-256 to compare out of band."""
    envelope, roster = read_roster(read_input(file))
    if as_json:
        typer.echo(json.dumps({"network": roster.network, "version": roster.version,
                               "sha256": roster.sha256, "signatures": len(envelope.signatures),
                               "members": [{"node_id": m.node_id, "fingerprint": m.fingerprint}
                                           for m in roster.members]}))  # fmt: skip
        return
    console.print(f"roster of {outside(roster.network)} v{roster.version}")
    console.print(f"  sha256 {roster.sha256}  (compare this out of band before importing)")
    table = SafeTable("member", "fingerprint")
    for m in roster.members:
        table.add_row(m.node_id, m.fingerprint)
    console.print(table)


@app.command("import")
def import_(
    file: FileArg,
    digest: Annotated[
        str | None, typer.Option("--digest", help="The roster's SHA-256, compared out of band")
    ] = None,
    threshold: Annotated[
        int, typer.Option("--threshold", min=0, help="Pinned members that must have signed")
    ] = 0,
    remove_missing: Annotated[
        bool, typer.Option("--remove-missing", help="Unpin partners the roster no longer lists")
    ] = False,
    home: HomeOpt = None,
    database_url: DbUrlOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Pin every member of a roster (audited), each descriptor checked against its fingerprint."""
    settings = settings_for(home, database_url)
    if settings.two_person_partner_changes:
        raise UsageError(
            "this node requires two-person control for partner changes: a roster import would "
            "change partners alone; pin each through /v1/admin/partners instead"
        )
    node_home, db = open_db(settings)
    keys = node_home.unlock(settings)
    with db.session() as session:
        result = import_roster(
            session, read_input(file), node_id=node_home.node_id, own_keysets=keys.keysets,
            now=datetime.now(UTC), actor=OPERATOR, digest=digest, threshold=threshold,
            remove_missing=remove_missing,
        )  # fmt: skip
    db.dispose()
    if as_json:
        typer.echo(json.dumps(result.to_json()))
        return
    console.print(
        f"roster of {outside(result.network)} v{result.version} trusted by {result.trusted_by}"
    )
    for label, names in (("pinned", result.added), ("already pinned", result.unchanged),
                         ("KEY DIFFERS, left alone", result.differs),
                         ("unpinned", result.removed),
                         ("not in the roster (kept)", result.missing)):  # fmt: skip
        if names:
            console.print(f"  {label}: {', '.join(names)}")
