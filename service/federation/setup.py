"""Setting up a group of nodes that pin each other: the demo and the integration tests use it.

It calls the same functions as ``entente init``, ``entente partner add`` and ``entente token
create``; it does not bypass any check (each descriptor is verified against its fingerprint).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from policies import example_files
from service.db import open_database
from service.home import Home, create_home
from service.partners import add_partner
from service.settings import Settings
from service.tokens import Role, create_token

__all__ = ["PreparedNode", "prepare_federation"]


@dataclass(frozen=True)
class PreparedNode:
    home: Home
    tokens: dict[str, str]  # role -> bearer token


def prepare_federation(
    urls: dict[str, str],
    *,
    root: Path,
    names: dict[str, str] | None = None,
    passphrase: str | None = None,
    scrypt_work_factor: int = 18,
    example_policies: bool = True,
    database_urls: dict[str, str] | None = None,
    classic_only: Collection[str] = (),
) -> dict[str, PreparedNode]:
    """Create a home per node id in ``urls`` under ``root``, pinned to each other, with tokens.

    Every home is post-quantum (hybrid age identity, ML-DSA key) except those in
    ``classic_only``.

    With ``passphrase=None`` the key files are stored unencrypted (demo only). A node missing
    from ``database_urls`` gets a SQLite database in its home.
    """
    now = datetime.now(UTC)
    homes: dict[str, Home] = {}
    for node_id, url in urls.items():
        settings = Settings(
            home=root / node_id,
            passphrase=passphrase,
            insecure_no_passphrase=passphrase is None,
            scrypt_work_factor=scrypt_work_factor,
        )
        homes[node_id] = create_home(
            settings,
            path=root / node_id,
            node_id=node_id,
            name=(names or {}).get(node_id, node_id),
            url=url,
            now=now,
            post_quantum=node_id not in classic_only,
        )
        if example_policies:
            for filename, data in example_files(node_id).items():
                (homes[node_id].policies_dir / filename).write_bytes(data)
    prepared: dict[str, PreparedNode] = {}
    for node_id, home in homes.items():
        url = (database_urls or {}).get(node_id, f"sqlite:///{home.path / 'entente.db'}")
        db = open_database(url, migrate=True)
        tokens: dict[str, str] = {}
        try:
            with db.session() as session:
                for other, other_home in homes.items():
                    if other == node_id:
                        continue
                    add_partner(
                        session,
                        descriptor_bytes=other_home.descriptor_path.read_bytes(),
                        fingerprint=other_home.fingerprint,
                        own_node_id=node_id,
                        now=now,
                        actor="admin:setup",
                    )
                for role in Role:
                    _row, secret = create_token(
                        session, role=role, name=f"{role.value}@{node_id}", now=now,
                        actor="admin:setup",
                    )  # fmt: skip
                    tokens[role.value] = secret
        finally:
            db.dispose()
        prepared[node_id] = PreparedNode(home, tokens)
    return prepared
