"""The PostgreSQL client tools a backup and a restore run (``pg_dump``, ``pg_restore``).

The database URL becomes libpq arguments: a ``--dbname`` connection string of quoted keywords,
with the password in the child's environment (``PGPASSWORD``), never on its command line.
"""

from __future__ import annotations

import os
import shutil

from sqlalchemy.engine import make_url

from service.backup.archive import BackupError

__all__ = ["libpq_args", "require_tool"]


def require_tool(name: str) -> str:
    """The path of a PostgreSQL client tool, or a :class:`BackupError` saying what to install."""
    path = shutil.which(name)
    if path is None:
        raise BackupError(
            f"{name} is not on PATH: install the PostgreSQL client tools of the server's major "
            "version or newer (Debian/Ubuntu: apt-get install postgresql-client)"
        )
    return path


def _quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def libpq_args(url: str) -> tuple[list[str], dict[str, str]]:
    """(arguments, environment) that make a PostgreSQL client tool connect to ``url``."""
    parsed = make_url(url)
    words = {
        "host": parsed.host,
        "port": str(parsed.port) if parsed.port else None,
        "user": parsed.username,
        "dbname": parsed.database,
    }
    for key, value in parsed.query.items():
        if key in ("sslmode", "sslrootcert", "sslcert", "sslkey", "options", "application_name"):
            words[key] = value if isinstance(value, str) else value[-1]
    conninfo = " ".join(f"{k}={_quote(v)}" for k, v in words.items() if v)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENTENTE_")}
    if parsed.password is not None:
        env["PGPASSWORD"] = str(parsed.password)
    return [f"--dbname={conninfo}"], env
