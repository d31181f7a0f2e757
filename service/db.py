"""Database engines and migrations for SQLite (default, WAL) and PostgreSQL (psycopg 3).

``open_database`` builds the engine, checks that the database answers, and (when asked) applies
Alembic migrations; every failure becomes a :class:`service.errors.DatabaseError` whose message
names the database without its password. A SQLite file (and its WAL and shared-memory files) is
private to the node's user, mode 0600, like the key files beside it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError
from sqlmodel import Session

from service.errors import DatabaseError, InvalidInputError, UsageError

__all__ = [
    "DATABASE_UNAVAILABLE",
    "Database",
    "driver_reason",
    "open_database",
    "safe_url",
    "say_unavailable",
]

_MIGRATION_LOCK = 0x656E74656E7465  # "entente": the advisory lock key for migrations


def safe_url(url: str) -> str:
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<unparseable database URL>"


# What SQLAlchemy raises when the database does not answer in time: busy past the busy timeout
# ("database is locked"), gone or refusing connections (OperationalError), or no connection free
# in the pool (TimeoutError). A request meeting one is a 503 to retry (service.api.problems);
# background work says why in one line and tries again at its next round.
DATABASE_UNAVAILABLE: tuple[type[SQLAlchemyError], ...] = (
    sa.exc.OperationalError,
    sa.exc.TimeoutError,
)


def driver_reason(exc: BaseException) -> str:
    """The first line of what the database driver said (SQLAlchemy's own text without one)."""
    orig = getattr(exc, "orig", None)
    reason = (str(orig) if orig is not None else str(exc)).strip()
    return reason.splitlines()[0] if reason else type(exc).__name__


def say_unavailable(
    logger: logging.Logger, exc: BaseException, what: str, *args: object, then: str = ""
) -> None:
    """One warning line, no stack trace, for work that met one of :data:`DATABASE_UNAVAILABLE`:
    ``what % args``, what the driver said, then ``then`` (what happens next) if given."""
    message = f"{what}: the database did not answer (%s)" + ("; %s" if then else "")
    logger.warning(message, *args, driver_reason(exc)[:200], *((then,) if then else ()))


def _private_sqlite_files(database: str | None) -> None:
    """Create a new SQLite file 0600, and make an existing one (and its WAL and shared-memory
    files, which SQLite creates with the database file's mode) private to its owner."""
    if not database or database == ":memory:" or database.startswith("file:"):
        return
    path = Path(database)
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        pass
    except OSError:
        return  # a missing folder or no permission: SQLite reports it when it connects
    for name in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        try:
            if name.stat().st_mode & 0o077:
                os.chmod(name, 0o600)
        except OSError:
            continue  # absent, or not ours to change


# How long a statement waits for SQLite's one write lock before it fails ("database is locked";
# an API request then answers 503 with Retry-After).
BUSY_TIMEOUT_MS = 10_000


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across process crashes
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    cur.close()


_BIGINT = 1 << 63


def _refuse_unstorable(
    _conn: Any, _cursor: Any, _statement: str, parameters: Any, _context: Any, executemany: bool
) -> None:
    """Refuse, on every backend alike, values that PostgreSQL cannot hold: text with a NUL
    character and integers beyond BIGINT. Only untrusted input carries them (a query filter, a
    title, a partner's notice); without this they fail deep in the driver as a 500 on one backend
    and pass on the other."""
    for row in parameters if executemany else (parameters,):
        for value in (row.values() if isinstance(row, dict) else row) or ():
            if isinstance(value, str) and "\x00" in value:
                raise InvalidInputError("text with a NUL character is not accepted")
            if isinstance(value, int) and not -_BIGINT <= value < _BIGINT:
                raise InvalidInputError("a number is out of range (at most 2**63 - 1)")


def _alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(resources.files("service") / "migrations"))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


class Database:
    """An engine plus helpers; one per process."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @property
    def is_sqlite(self) -> bool:
        return self.engine.dialect.name == "sqlite"

    @property
    def is_postgres(self) -> bool:
        return self.engine.dialect.name == "postgresql"

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session whose transaction commits on success and rolls back on any exception."""
        with Session(self.engine, expire_on_commit=False) as session:
            try:
                yield session
                session.commit()
            except BaseException:
                session.rollback()
                raise

    def after_inserts_commit(self, table: str, callback: Callable[[], None]) -> None:
        """Call ``callback`` whenever a transaction that inserted rows into ``table`` has
        committed, by whichever path it wrote them (ORM objects or Core inserts, a session or
        a bare connection), in the thread that committed.

        The call comes once the connection is back in the pool, which is after its commit has
        returned, so whoever ``callback`` wakes sees the rows. A transaction that rolled back
        calls nothing; one whose rows were rolled back to a savepoint may call it anyway
        (callbacks must allow a spurious call). A connection holding several transactions
        calls once, when it is closed.
        """
        owed, due = f"entente.owed.{table}", f"entente.due.{table}"

        def inserted(
            conn: sa.Connection, _c: Any, _s: str, _p: Any, context: Any, _m: bool
        ) -> None:
            compiled = getattr(context, "compiled", None)
            if compiled is None or not compiled.isinsert:
                return
            if compiled.statement.table.name == table:
                conn.info[owed] = True

        def committed(conn: sa.Connection) -> None:
            if conn.info.pop(owed, False):
                conn.info[due] = True

        def rolled_back(conn: sa.Connection) -> None:
            conn.info.pop(owed, None)

        def returned(_dbapi: Any, record: Any) -> None:
            if record is not None and record.info.pop(due, False):
                callback()

        sa.event.listen(self.engine, "after_cursor_execute", inserted)
        sa.event.listen(self.engine, "commit", committed)
        sa.event.listen(self.engine, "rollback", rolled_back)
        sa.event.listen(self.engine, "checkin", returned)

    def upgrade(self) -> None:
        """Apply every pending Alembic migration (idempotent)."""
        cfg = _alembic_config(str(self.engine.url))
        try:
            with self.engine.begin() as conn:
                if self.is_postgres:
                    # Replicas, init and migration jobs may start together: one migrates, the
                    # others wait for it and then find nothing to do.
                    conn.execute(
                        sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _MIGRATION_LOCK}
                    )
                cfg.attributes["connection"] = conn
                command.upgrade(cfg, "head")
        except SQLAlchemyError as exc:
            raise DatabaseError(
                f"migrating {safe_url(str(self.engine.url))} failed: {exc}"
            ) from None

    def current_revision(self) -> str | None:
        with self.engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()

    def head_revision(self) -> str | None:
        cfg = _alembic_config(str(self.engine.url))
        return ScriptDirectory.from_config(cfg).get_current_head()

    def dispose(self) -> None:
        self.engine.dispose()


def insert_if_missing(
    session: Session, table: sa.Table, values: dict[str, Any], key: list[str]
) -> None:
    """Insert ``values`` into ``table`` unless a row with the same ``key`` exists, committed
    or being committed by another transaction (``ON CONFLICT DO NOTHING``): a get-or-create
    that two processes (replicas) can run at once without a duplicate-key error."""
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert(table) if dialect == "postgresql" else sqlite.insert(table)
    session.execute(insert.values(**values).on_conflict_do_nothing(index_elements=key))


def open_database(url: str, *, migrate: bool = False, pool_size: int = 10) -> Database:
    """Create the engine for ``url``, check it answers, and optionally migrate it."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise UsageError("ENTENTE_DATABASE_URL is not a valid database URL") from None
    kwargs: dict[str, Any] = {}
    if parsed.get_backend_name() == "sqlite":
        kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
        _private_sqlite_files(parsed.database)
    elif parsed.get_backend_name() == "postgresql":
        if parsed.get_driver_name() not in ("psycopg", ""):
            raise UsageError("use postgresql+psycopg://... for PostgreSQL (psycopg 3)")
        parsed = parsed.set(drivername="postgresql+psycopg")
        kwargs.update(
            pool_pre_ping=True,
            pool_size=pool_size,
            max_overflow=pool_size,
            connect_args={"connect_timeout": 5},
        )
    else:
        raise UsageError("ENTENTE_DATABASE_URL must be sqlite:///PATH or postgresql+psycopg://...")
    try:
        engine = sa.create_engine(parsed, **kwargs)
    except (SQLAlchemyError, ImportError) as exc:
        raise DatabaseError(f"cannot use database {safe_url(url)}: {exc}") from None
    if engine.dialect.name == "sqlite":
        sa.event.listen(engine, "connect", _sqlite_pragmas)
    sa.event.listen(engine, "before_cursor_execute", _refuse_unstorable)
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except SQLAlchemyError as exc:
        engine.dispose()
        reason = driver_reason(exc)
        raise DatabaseError(f"cannot connect to the database {safe_url(url)}: {reason}") from None
    db = Database(engine)
    if migrate:
        db.upgrade()
    return db
