"""The database schema's Alembic migrations (``versions/``), applied by ``service.db``.

:data:`SCHEMA_REVISION` names the newest one, for readers that check a database's schema
without loading Alembic (``service.pinned``); a test checks it against Alembic's own head, so a
new migration updates it in the same commit.
"""

SCHEMA_REVISION = "0019"  # the head of versions/: a new migration moves it
