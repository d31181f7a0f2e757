"""``entente agreement``: terms every party's approving officer signed, and their amendments.

The life of an agreement, from the policy officer's side (README, "The life of an agreement"):

1. ``officer-key``: each party's officer makes a signing key (Ed25519 + ML-DSA-65), kept apart
   from the node, encrypted with the officer's own passphrase (ENTENTE_OFFICER_PASSPHRASE).
2. ``certify``: each node vouches for its officer with its own keys (partners check it against
   the node keys they pinned: no officer key is trusted on first use). Audited.
3. ``draft``: one party writes the agreement from the policy files in which each party states its
   terms with each other (``--terms us-aisi:uk-aisi=FILE``); an amendment ``--amends`` the
   signed previous version and is in force ``--from`` a stated time.
4. ``sign``: each party's officer signs the same file (one DSSE envelope, one signature entry
   per officer key); ``show`` says who has signed and who is awaited.
5. ``adopt``: each node checks the signatures against its pinned keys and puts the file in its
   policies; the next ``entente policy reload`` makes it the version every replica decides on
   (audited). Terms are enforced only once every party has signed; an amendment replaces the
   previous terms at its ``in_force_from``.
6. ``list`` and ``compare``: what the running node holds, and whether a partner holds the same
   signed versions (over the federation API).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import typer

from crypto.agreement import (
    OfficerCertificate,
    SignedAgreement,
    certify_officer,
    check_signatures,
    draft_agreement,
)
from crypto.descriptor import verify_descriptor
from crypto.dsse import Envelope
from crypto.errors import CryptoError
from crypto.keys import SigningKey, VerifyKey
from crypto.keyset import KeySet, SignerSet
from crypto.mldsa import MLDSASigningKey, MLDSAVerifyKey
from policies import PolicySet, diff, format_time, parse_time
from policies._agreement import EVERY, Agreement, Terms
from policies.errors import PolicyError
from service.agreements import AGREEMENT_SUFFIX, AgreementKeys, read_signed
from service.audit.log import record
from service.cli._common import HomeOpt, JsonOpt, console, open_db, read_input, settings_for
from service.cli._http import http_client as _client
from service.cli._http import raise_for as _raise_for
from service.cli._http import send as _send
from service.cli._terminal import SafeTable, outside
from service.cli.client import TokenOpt, UrlOpt
from service.errors import KeyStoreError, UsageError
from service.keystore import read_key, seal_key, signing_secret, split_signing_secret

app = typer.Typer(
    help="Agreements signed by every party's officer: draft, sign, adopt, compare.",
    no_args_is_help=True,
)

KEY_FORMAT = "entente.officer-key/v1"
FileArg = Annotated[Path, typer.Argument(help="A signed agreement file (*.agreement.json)")]
KeyOpt = Annotated[Path, typer.Option("--key", help="The officer's key file (officer-key)")]


def _load(path: Path) -> tuple[SignedAgreement, Agreement]:
    try:
        return read_signed(str(path), read_input(path))
    except PolicyError as exc:
        raise UsageError(f"{path} is not a valid agreement: {exc}") from None


def _officer_passphrase(confirm: bool) -> str | None:
    value = os.environ.get("ENTENTE_OFFICER_PASSPHRASE")
    if value:
        return value
    if not sys.stdin.isatty():
        raise UsageError(
            "set ENTENTE_OFFICER_PASSPHRASE (or run on a terminal) to use an officer key"
        )
    return str(typer.prompt("Officer passphrase", hide_input=True, confirmation_prompt=confirm))


def _public_json(keys: KeySet) -> dict[str, Any]:
    mldsa = keys.mldsa
    return {
        "format": KEY_FORMAT + "+public",
        "fingerprint": keys.fingerprint,
        "ed25519": base64.b64encode(keys.ed25519.raw).decode(),
        "mldsa": None if mldsa is None else base64.b64encode(mldsa.raw).decode(),
    }


def _read_public(path: Path) -> KeySet:
    try:
        data = json.loads(read_input(path))
        mldsa = data.get("mldsa")
        return KeySet(
            VerifyKey(base64.b64decode(data["ed25519"], validate=True)),
            None if mldsa is None else MLDSAVerifyKey(base64.b64decode(mldsa, validate=True)),
        )
    except (ValueError, KeyError, TypeError, AttributeError, CryptoError):
        raise UsageError(
            f"{path} is not an officer's public key (officer-key writes one)"
        ) from None


def _read_officer(path: Path) -> SignerSet:
    raw = read_input(path)
    protected = not raw.startswith(b"# UNENCRYPTED")
    secret = read_key(path, _officer_passphrase(False) if protected else None)
    try:
        ed25519, mldsa = split_signing_secret(secret, "officer key")
    except KeyStoreError:
        mldsa = None
    if mldsa is None:  # an officer signs with both keys: 64 bytes, never 32
        raise UsageError(f"{path} is not an officer key")
    return SignerSet(ed25519, mldsa)


@app.command("officer-key")
def officer_key(
    out: Annotated[Path, typer.Option("--out", "-o", help="Where to write the private key")],
    no_passphrase: Annotated[
        bool, typer.Option("--no-passphrase", help="Store it unencrypted (demos and tests only)")
    ] = False,
) -> None:
    """Make an approving officer's signing key (Ed25519 + ML-DSA-65) and its public half."""
    if out.exists():
        raise UsageError(f"{out} exists; refusing to overwrite a key")
    ed25519, mldsa = SigningKey.generate(), MLDSASigningKey.generate()
    signer = SignerSet(ed25519, mldsa)
    passphrase = None if no_passphrase else _officer_passphrase(True)
    sealed = seal_key(signing_secret(ed25519, mldsa), passphrase, 18)
    out.write_bytes(sealed)
    out.chmod(0o600)
    public = out.with_name(out.name + ".pub.json")
    public.write_text(json.dumps(_public_json(signer.public), indent=2) + "\n")
    console.print(f"officer key {outside(str(out))}, public half {outside(str(public))}")
    console.print(f"fingerprint {signer.fingerprint}")


@app.command()
def certify(
    officer: Annotated[Path, typer.Option("--officer", help="The officer's *.pub.json")],
    name: Annotated[str, typer.Option("--name", help="The officer's name")],
    role: Annotated[str, typer.Option("--role", help="The officer's role")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Where to write the certificate")],
    days: Annotated[int, typer.Option("--days", min=1, max=3650)] = 730,
    home: HomeOpt = None,
) -> None:
    """Vouch for an officer with this node's keys (audited): partners trust the officer's
    signatures on agreements because this node, which they pinned, signed this."""
    settings = settings_for(home)
    node_home, db = open_db(settings)
    keys = node_home.unlock(settings)
    now = datetime.now(UTC)
    cert = OfficerCertificate(
        node_home.node_id, name, role, _read_public(officer), now, now + timedelta(days=days)
    )
    envelope = certify_officer(cert, node=keys.signer)
    out.write_bytes(envelope.to_bytes())
    with db.session() as session:
        record(
            session,
            kind="agreement.officer_certified",
            actor="cli:agreement",
            detail={"officer": name, "role": role, "fingerprint": cert.fingerprint,
                    "expires": format_time(cert.expires)},
            now=now,
        )  # fmt: skip
    console.print(f"certified {outside(name)} ({outside(role)}) for {node_home.node_id}")


def _terms(specs: list[str]) -> list[Terms]:
    out = []
    for spec in specs:
        pair, sep, file = spec.partition("=")
        party, colon, partner = pair.partition(":")
        if not sep or not colon:
            raise UsageError(f"--terms {spec!r}: write PARTY:PARTNER=FILE")
        path = Path(file)
        out.append(Terms(party, partner, path.name, read_input(path).decode("utf-8")))
    return out


@app.command()
def draft(
    out: Annotated[Path, typer.Option("--out", "-o", help="The agreement file to write")],
    terms: Annotated[
        list[str],
        typer.Option("--terms", help="PARTY:PARTNER=FILE, PARTY's terms with PARTNER (repeat)"),
    ],
    agreement_id: Annotated[str | None, typer.Option("--id", help="The agreement's id")] = None,
    title: Annotated[str | None, typer.Option("--title")] = None,
    in_force_from: Annotated[
        str | None, typer.Option("--from", help="RFC 3339 time it is in force from (default now)")
    ] = None,
    amends: Annotated[
        Path | None, typer.Option("--amends", help="The signed version this one amends")
    ] = None,
    party: Annotated[
        list[str] | None,
        typer.Option(
            "--party",
            help="A party (repeat); needed for common terms (--terms '*:*=FILE'), which name "
            "none \\[default: the parties the terms name; an amendment's, its predecessor's]",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Write an unsigned agreement (or an amendment) for the parties' officers to sign."""
    previous = _load(amends)[1] if amends is not None else None
    ident = agreement_id or (previous.id if previous else None)
    if ident is None or (title or (previous.title if previous else None)) is None:
        raise UsageError("a first version needs --id and --title")
    items = _terms(terms)
    named = ({t.party for t in items} | {t.partner for t in items}) - {EVERY}
    if not party and not named and previous is not None:
        named = set(previous.parties)  # an amendment of common terms keeps its parties
    parties = sorted(named | set(party or ()))
    when = parse_time(in_force_from) if in_force_from else datetime.now(UTC).replace(microsecond=0)
    try:
        agreement = Agreement(
            ident,
            previous.version + 1 if previous else 1,
            title or (previous.title if previous else ""),
            tuple(parties),
            when,
            tuple(items),
            previous.sha256 if previous else None,
        )
    except PolicyError as exc:
        raise UsageError(str(exc)) from None
    out.write_bytes(draft_agreement(agreement.payload()).to_bytes())
    console.print(
        f"drafted {agreement.id} v{agreement.version} between {', '.join(parties)}: "
        f"sha256 {agreement.sha256[:16]}…; each party's officer runs `entente agreement sign`"
    )


@app.command()
def sign(
    file: FileArg,
    key: KeyOpt,
    certificate: Annotated[
        Path, typer.Option("--certificate", help="The officer's certificate (certify)")
    ],
) -> None:
    """Sign an agreement as one party's officer (adds a signature; the file is rewritten)."""
    signed, agreement = _load(file)
    officer = _read_officer(key)
    try:
        cert_env = Envelope.from_bytes(read_input(certificate))
        cert = OfficerCertificate.from_json(json.loads(cert_env.payload))
    except (CryptoError, ValueError):
        raise UsageError(f"{certificate} is not an officer certificate") from None
    if cert.keys != officer.public:
        raise UsageError("the certificate is for another officer key")
    if cert.node_id not in agreement.parties:
        raise UsageError(f"{cert.node_id} is not a party to {agreement.id}")
    file.write_bytes(signed.with_signature(officer, cert_env).to_bytes())
    console.print(
        f"signed {agreement.id} v{agreement.version} for {cert.node_id} as {outside(cert.name)}"
    )


def _checker(home: Path | None) -> AgreementKeys | None:
    if home is None and not os.environ.get("ENTENTE_HOME"):
        return None
    settings = settings_for(home)
    node_home, db = open_db(settings)
    descriptor = verify_descriptor(node_home.descriptor_envelope(), now=datetime.now(UTC))
    return AgreementKeys(node_home.node_id, [descriptor.keyset], db)


@app.command()
def show(file: FileArg, home: HomeOpt = None, as_json: JsonOpt = False) -> None:
    """Who signed an agreement and who is awaited; with --home (or ENTENTE_HOME) every
    certificate and signature is checked against that node's pinned keys."""
    signed, agreement = _load(file)
    checker = _checker(home)
    if checker is None:
        signers: dict[str, str] = {}
        checked = False
    else:
        try:
            found = check_signatures(
                signed,
                parties=agreement.parties,
                node_keysets=checker.keysets,
                now=datetime.now(UTC),
            )
        except CryptoError as exc:
            raise UsageError(f"the signatures do not verify: {exc}") from None
        signers = {p: f"{c.name} ({c.role})" for p, c in found.items()}
        checked = True
    info = {
        "id": agreement.id,
        "version": agreement.version,
        "title": agreement.title,
        "sha256": agreement.sha256,
        "supersedes": agreement.supersedes,
        "in_force_from": format_time(agreement.in_force_from),
        "parties": list(agreement.parties),
        "checked": checked,
        "signed_by": signers,
        "awaiting": [p for p in agreement.parties if p not in signers] if checked else None,
        "signatures": len(signed.envelope.signatures),
    }
    if as_json:
        typer.echo(json.dumps(info))
        return
    console.print(f"{agreement.id} v{agreement.version}: {outside(agreement.title)}")
    console.print(f"  sha256 {agreement.sha256}; in force from {info['in_force_from']}")
    if agreement.supersedes:
        console.print(f"  amends the version with sha256 {agreement.supersedes}")
    for party in agreement.parties:
        if not checked:
            state = "not checked (give --home)"
        else:
            state = f"signed by {outside(signers[party])}" if party in signers else "AWAITED"
        console.print(f"  {party}: {state}")


@app.command("diff")
def diff_(
    old: Annotated[Path, typer.Argument(help="The signed version before")],
    new: Annotated[Path, typer.Argument(help="The amendment")],
) -> None:
    """What an amendment changes, for each party, per partner and action."""
    a, b = _load(old)[1], _load(new)[1]
    table = SafeTable("party", "partner", "action", "rule", "change", "effect")
    count = 0
    for party in sorted(set(a.parties) | set(b.parties)):
        before = PolicySet.from_policies(
            p for q in a.parties if (p := a.policy(party, q)) is not None
        )
        after = PolicySet.from_policies(
            p for q in b.parties if (p := b.policy(party, q)) is not None
        )
        for c in diff(before, after):
            table.add_row(party, c.partner, c.action, c.subject, c.change, c.effect)
            count += 1
    if not count:
        console.print("No changes.")
        return
    console.print(table)
    console.print(f"{count} change(s) from v{a.version} to v{b.version}")


@app.command()
def adopt(file: FileArg, home: HomeOpt = None) -> None:
    """Check an agreement's signatures against this node's pinned keys and put it in the
    node's policies; `entente policy reload` then makes it the version in force (audited)."""
    agreement = _load(file)[1]
    checker = _checker(home)
    if checker is None:
        raise UsageError("give --home (or ENTENTE_HOME): the node that adopts it")
    try:
        checker.held(file.name, read_input(file), now=datetime.now(UTC), strict=True)
    except PolicyError as exc:
        raise UsageError(str(exc)) from None
    if checker.node_id not in agreement.parties:
        raise UsageError(f"{checker.node_id} is not a party to {agreement.id}")
    folder = settings_for(home).require_home() / "policies"
    # One file per version: an amendment joins the version it amends, which stays in force
    # until the amendment's in_force_from.
    target = folder / f"{agreement.id}.v{agreement.version}{AGREEMENT_SUFFIX}"
    shutil.copyfile(file, target)
    console.print(
        f"{agreement.id} v{agreement.version} placed in {outside(str(target))}; "
        "run `entente policy reload` to put it in force"
    )


@app.command("list")
def list_(url: UrlOpt, token: TokenOpt, as_json: JsonOpt = False) -> None:
    """The agreements the running node holds: adopted, superseded or awaiting signatures."""
    with _client(url, token) as client:
        response = _send(lambda: client.get("/v1/admin/agreements"))
    _raise_for(response)
    data = response.json()
    if as_json:
        typer.echo(json.dumps(data))
        return
    _print_statuses(data["agreements"])
    for partner in data.get("unsigned", []):
        console.print(f"{partner}: terms from an unsigned local file (not agreed by {partner})")


def _print_statuses(items: list[dict[str, Any]]) -> None:
    if not items:
        console.print("No signed agreements.")
        return
    table = SafeTable("agreement", "version", "state", "in force from", "signed by", "awaiting")
    for a in items:
        table.add_row(
            str(a["id"]),
            str(a["version"]),
            str(a["state"]),
            str(a["in_force_from"]),
            ", ".join(a["signed_by"]),
            ", ".join(a["awaiting"]),
        )
    console.print(table)


@app.command()
def compare(
    partner: Annotated[str, typer.Argument(help="The partner node id")],
    url: UrlOpt,
    token: TokenOpt,
    as_json: JsonOpt = False,
) -> None:
    """Ask the partner (over the federation API) which signed versions it holds, and compare."""
    with _client(url, token) as client:
        response = _send(lambda: client.get(f"/v1/admin/agreements/compare/{partner}"))
    _raise_for(response)
    data = response.json()
    if as_json:
        typer.echo(json.dumps(data))
        return
    for row in data["agreements"]:
        console.print(
            f"{row['id']} v{row['version']}: here {row['here']}, at {partner} {row['there']}"
            + ("" if row["same"] else "  <- DIFFERS")
        )
    console.print("same terms at both nodes" if data["same"] else "the nodes hold different terms")
