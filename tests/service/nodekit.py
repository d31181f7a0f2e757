"""In-process nodes for API tests: a real home, database and app, driven through ASGITransport."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx
from fastapi import FastAPI

from policies import example_files
from service.agreements import AgreementKeys
from service.app import create_app
from service.blobs import FileBlobStore
from service.db import open_database
from service.home import create_home
from service.node import Node, open_blob_store
from service.partners import add_partner
from service.policy_store import PolicyStore
from service.settings import Settings
from service.tokens import Role, create_token

CREATED: list[Node] = []  # disposed after each test by tests/service/conftest.py


@dataclass
class Kit:
    node: Node
    app: FastAPI
    tokens: dict[Role, str]

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            transport=httpx.ASGITransport(app=self.app), base_url=f"http://{self.node.node_id}"
        )

    def auth(self, role: Role) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[role]}"}


def make_node(
    root: Path,
    node_id: str,
    *,
    db_url: str | None = None,
    policies: bool = True,
    post_quantum: bool = True,
    **settings: object,
) -> Kit:
    home_path = root / node_id
    base = Settings(
        home=home_path,
        database_url=db_url,
        insecure_no_passphrase=True,
        workers_enabled=False,
        **settings,  # type: ignore[arg-type]
    )
    home = create_home(
        base,
        path=home_path,
        node_id=node_id,
        name=node_id.upper(),
        url=f"http://{node_id}",
        now=datetime.now(UTC),
        post_quantum=post_quantum,
    )
    if policies:
        for name, data in example_files(node_id).items():
            (home.policies_dir / name).write_bytes(data)
    db = open_database(base.resolved_database_url(), migrate=True)
    keys = home.unlock(base)
    agreements = AgreementKeys(
        node_id, keys.keysets, db, require_signed=base.signed_agreements_required
    )
    store = PolicyStore(home.policies_dir, db=db, agreements=agreements)
    node = Node(
        settings=base,
        home=home,
        keys=keys,
        db=db,
        blobs=open_blob_store(base, db),
        policies=store,
    )
    CREATED.append(node)
    tokens = {}
    store.start(actor="test", now=node.now())
    with db.session() as session:
        for role in Role:
            _row, secret = create_token(
                session, role=role, name=f"{role.value}-user", now=node.now(), actor="test"
            )
            tokens[role] = secret
    return Kit(node=node, app=create_app(node, start_workers=False), tokens=tokens)


def pin(a: Kit, b: Kit) -> None:
    """Make ``a`` pin ``b`` (one direction)."""
    with a.node.db.session() as session:
        add_partner(
            session,
            descriptor_bytes=b.node.descriptor().to_bytes(),
            fingerprint=b.node.keys.signing.fingerprint,
            own_node_id=a.node.node_id,
            now=a.node.now(),
            actor="test",
        )


def upload_body(metadata: str | bytes, content: bytes, boundary: str = "entente-test") -> bytes:
    meta = metadata.encode() if isinstance(metadata, str) else metadata
    return (
        f'--{boundary}\r\nContent-Disposition: form-data; name="metadata"\r\n'
        f"Content-Type: application/json\r\n\r\n".encode()
        + meta
        + f'\r\n--{boundary}\r\nContent-Disposition: form-data; name="file"; '
        f'filename="finding.bin"\r\nContent-Type: application/octet-stream\r\n\r\n'.encode()
        + content
        + f"\r\n--{boundary}--\r\n".encode()
    )


UPLOAD_HEADERS = {"Content-Type": "multipart/form-data; boundary=entente-test"}


def folder_store(node: Node) -> FileBlobStore:
    """``node``'s blob store, which these tests build on a folder (for the file-level checks)."""
    assert isinstance(node.blobs, FileBlobStore)
    return node.blobs


class SyncBridge(httpx.BaseTransport):
    """A synchronous transport to a kit's in-process app (for an ``httpx.Client``: the CLI's,
    or a test that also drives the sync federation workers)."""

    def __init__(self, kit: Kit) -> None:
        self.kit = kit

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        async def send() -> httpx.Response:
            transport = httpx.ASGITransport(app=self.kit.app)
            answer = await transport.handle_async_request(request)
            body = b"".join([chunk async for chunk in answer.stream])  # type: ignore[union-attr]
            return httpx.Response(answer.status_code, headers=answer.headers, content=body)

        return asyncio.run(send())
