"""``entente init``, ``db``, ``serve`` and ``demo``: creating and running a node (``identity``
is in ``service.cli.identity``)."""

from __future__ import annotations

import errno
import logging
import os
import shutil
import signal
import socket
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from pydantic import SecretStr
from sqlalchemy.exc import ArgumentError

from crypto.keys import format_fingerprint
from service.audit.witness_external import external_witnesses
from service.audit.witness_public import witnessed_logs
from service.cli._common import (
    DbUrlOpt,
    HomeOpt,
    console,
    err_console,
    open_db,
    settings_for,
)
from service.cli.identity import pq_line
from service.db import open_database
from service.errors import UsageError
from service.home import ServeClaim, claim_for_serving, create_home, open_home
from service.logs import configure_logging
from service.settings import Settings

db_app = typer.Typer(help="Database schema management.", no_args_is_help=True)


def init(
    home: Annotated[Path, typer.Option("--home", help="Folder to create for the node")],
    node_id: Annotated[str, typer.Option("--node-id", help="Short id, e.g. uk-aisi")],
    name: Annotated[str, typer.Option("--name", help="Institute name shown to partners")],
    url: Annotated[str, typer.Option("--url", help="Public base URL partners reach this node at")],
    database_url: DbUrlOpt = None,
    insecure_no_passphrase: Annotated[
        bool,
        typer.Option(
            "--insecure-no-passphrase",
            help="Store private keys UNENCRYPTED (demos and tests only)",
        ),
    ] = False,
    classic_only: Annotated[
        bool,
        typer.Option(
            "--classic-only",
            help="No post-quantum (hybrid ML-KEM) identity, for partners that cannot read "
            "hybrid age files yet; `entente keys rotate --post-quantum` adds one later",
        ),
    ] = False,
) -> None:
    """Create a node home: signing key, age identities (post-quantum by default), signed
    descriptor, database."""
    settings = settings_for(
        home, database_url, insecure_no_passphrase=insecure_no_passphrase or None
    )
    if settings.insecure_no_passphrase:
        err_console.print(
            "[bold yellow]warning:[/] --insecure-no-passphrase: the private keys are stored "
            "unencrypted. Use this for demos only."
        )
    # Check the database before touching the disk, so a bad URL leaves nothing behind.
    if settings.database_url:
        open_database(settings.database_url).dispose()
    created = create_home(
        settings,
        path=home,
        node_id=node_id,
        name=name,
        url=url,
        now=datetime.now(UTC),
        post_quantum=not classic_only,
    )
    try:
        db = open_database(settings_for(home, database_url).resolved_database_url(), migrate=True)
        db.dispose()
    except Exception:
        shutil.rmtree(home, ignore_errors=True)
        raise
    console.print(f"Created node [bold]{created.node_id}[/] in {created.path}")
    console.print(f"  fingerprint   {format_fingerprint(created.fingerprint)}")
    console.print(f"  age recipient {created.age_recipient}")
    console.print(f"  post-quantum  {pq_line(created.pq_recipient)}")
    console.print("Give partners `entente identity export` and this fingerprint, out of band.")


@db_app.command("upgrade")
def db_upgrade(home: HomeOpt = None, database_url: DbUrlOpt = None) -> None:
    """Apply pending schema migrations."""
    settings = settings_for(home, database_url)
    db = open_database(settings.resolved_database_url(), migrate=False)
    before = db.current_revision()
    db.upgrade()
    console.print(f"database at revision {db.head_revision()} (was {before or 'empty'})")
    db.dispose()


@db_app.command("status")
def db_status(home: HomeOpt = None, database_url: DbUrlOpt = None) -> None:
    """Show the schema revision."""
    _home, db = open_db(settings_for(home, database_url), migrate=False)
    console.print(f"current {db.current_revision() or 'empty'}, head {db.head_revision()}")
    db.dispose()


def serve(
    home: HomeOpt = None,
    host: Annotated[
        str | None,
        typer.Option(
            help="Address to listen on \\[env: ENTENTE_HOST; default 127.0.0.1, loopback only]"
        ),
    ] = None,
    port: Annotated[
        int | None, typer.Option(help="Port \\[env: ENTENTE_PORT; default 8443]")
    ] = None,
    database_url: DbUrlOpt = None,
    workers: Annotated[
        int | None,
        typer.Option(
            help="Server processes, e.g. one per core; background work runs in one of them "
            "\\[env: ENTENTE_WORKERS; default 1]"
        ),
    ] = None,
) -> None:
    """Run the node: API, federation, sync workers and console (SIGTERM stops it cleanly).

    It speaks plain HTTP: TLS ends at a reverse proxy or load balancer in front of it
    (deploy/README.md). A second `serve` on a home that one serves is refused on SQLite; on
    PostgreSQL it joins as a replica (and logs so)."""
    settings = settings_for(home, database_url, host=host, port=port, workers=workers)
    check_listen_address(settings.host, settings.port)
    witnessed_logs(settings.witnessed_logs_file)  # a list that cannot be used stops it here
    external_witnesses(settings.external_witnesses_file)  # so does a broken list of witnesses
    configure_logging(settings.log_level, settings.log_format)
    claim = _claim(settings)
    try:
        if settings.workers > 1:
            _serve_processes(settings)
        else:
            _serve_one(settings)
    finally:
        claim.release()


def check_listen_address(host: str, port: int) -> None:
    """Refuse at once, in one line, an address ``serve`` could not listen on (a port in use,
    an address not of this machine, a port below 1024 without the privilege), before the
    node unlocks keys and migrates its database. The server still reports a race it loses."""
    if port == 0:
        return
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise UsageError(f"cannot listen on {host}: {exc.strerror}") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server does
        try:
            probe.bind(address)
        except OSError as exc:
            why = {
                errno.EADDRINUSE: "is in use by another process",
                errno.EADDRNOTAVAIL: "is not an address of this machine",
                errno.EACCES: "needs privileges this process lacks",
            }.get(exc.errno or 0, exc.strerror or "cannot be used")
            raise UsageError(
                f"cannot listen on {host}:{port}: it {why}; choose another with --host/--port "
                "(ENTENTE_HOST/ENTENTE_PORT)"
            ) from None


def _claim(settings: Settings) -> ServeClaim:
    """Refuse a second process on a SQLite home; tell a PostgreSQL replica that it is one."""
    from sqlalchemy.engine import make_url

    path = open_home(settings.require_home()).path
    try:
        backend = make_url(settings.resolved_database_url()).get_backend_name()
    except ArgumentError:
        backend = "unknown"  # open_database says what is wrong with it
    claim = claim_for_serving(path, replicas_allowed=backend == "postgresql")
    if claim.other_pid is not None:
        logging.getLogger("entente.serve").warning(
            "process %s already serves this home: this process joins it as a replica "
            "(one PostgreSQL database, one blob store)",
            claim.other_pid or "(unknown)",
        )
    return claim


def _serve_one(settings: Settings) -> None:
    import uvicorn

    from service.api.server import ServerProtocol
    from service.app import create_app
    from service.node import load_node

    node = load_node(settings, migrate=True)
    app = create_app(node)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=10,
        h11_max_incomplete_event_size=settings.max_request_header_bytes,
        http=ServerProtocol,  # h11 always (the head limit), refusals as problem documents
    )
    server = uvicorn.Server(config)  # uvicorn turns SIGTERM/SIGINT into a graceful shutdown
    # uvicorn re-raises the captured signal after shutting down; a stop by SIGTERM is the normal
    # way to end a service, so it exits 0 once the graceful shutdown has completed.
    signal.signal(signal.SIGTERM, lambda *_: None)
    try:
        server.run()
    finally:
        node.db.dispose()


def _serve_processes(settings: Settings) -> None:
    """``serve`` with ``settings.workers`` processes (uvicorn's supervisor, which restarts one
    that dies). Each loads the node itself (``service.app:app_from_environment``) from the
    settings this process hands down in its environment; the database is migrated here first,
    and the keys are unlocked here once too, so that a wrong passphrase fails at once."""
    import uvicorn

    from service.api.server import ServerProtocol
    from service.home import read_passphrase
    from service.node import load_node

    home = open_home(settings.require_home())
    os.environ["ENTENTE_HOME"] = str(settings.require_home().resolve())
    if settings.database_url:
        os.environ["ENTENTE_DATABASE_URL"] = settings.database_url
    credentials = os.environ.get("CREDENTIALS_DIRECTORY")
    from_elsewhere = (
        settings.passphrase is not None
        or settings.passphrase_file is not None
        or bool(credentials and (Path(credentials) / "passphrase").is_file())
    )
    if home.protected and not from_elsewhere:  # typed at a prompt: the processes cannot ask
        passphrase = read_passphrase(settings, confirm=False)
        os.environ["ENTENTE_PASSPHRASE"] = passphrase
        settings = settings.model_copy(update={"passphrase": SecretStr(passphrase)})
    load_node(settings, migrate=True).db.dispose()
    uvicorn.run(
        "service.app:app_from_environment",
        factory=True,
        workers=settings.workers,
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=10,
        h11_max_incomplete_event_size=settings.max_request_header_bytes,
        http=ServerProtocol,
    )


def demo(
    keep: Annotated[
        bool, typer.Option("--keep", help="Leave the nodes running for the console")
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="End with a JSON line for scripts")
    ] = False,
) -> None:
    """Three institute nodes on loopback: share, denial with its MOU clause, read, revocation,
    and verified, cosigned audit logs."""
    from service.demo import run_demo

    raise typer.Exit(run_demo(keep=keep, as_json=as_json))
