"""`entente share` loses the node's answer after sending the whole file, retries with the same
Idempotency-Key, and the node answers the first result: exactly one artifact, on SQLite and
PostgreSQL, with a real `entente serve` behind a TCP proxy that drops the first answer."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from service import localnet
from tests.integration.proxies import Proxy, _head_and_rest, _length, _read_exactly
from tests.nodes import ENTENTE, PASSPHRASE, SCRYPT_WORK_FACTOR, base_env, run_cli

pytestmark = pytest.mark.integration


class LosingProxy(Proxy):
    """A TCP proxy in front of a node. Its first ``drop`` connections lose the node's answer:
    the request is forwarded whole, the node's whole answer is read (so the node has committed
    what it answers), and the client's connection is closed without a byte of it. Later
    connections are forwarded both ways as they are."""

    def __init__(self, upstream: int, *, drop: int = 1) -> None:
        self.drop = drop
        self.lost: list[tuple[bytes, bytes]] = []  # the answers the client never saw
        super().__init__(("127.0.0.1", upstream))

    def _serve(self, client: socket.socket) -> None:
        upstream = socket.create_connection(self.upstream)
        with client, upstream:
            if self.drop > 0:
                self.drop -= 1
                self._lose_answer(client, upstream)
                return
            self._relay(client, upstream, None)

    def _lose_answer(self, client: socket.socket, upstream: socket.socket) -> None:
        head, rest = _head_and_rest(client)
        upstream.sendall(head + b"\r\n\r\n" + rest)
        _read_exactly(client, rest, _length(head), upstream)  # the whole file reached the node
        answer_head, answer_rest = _head_and_rest(upstream)
        body = _read_exactly(upstream, answer_rest, _length(answer_head), None)
        self.lost.append((answer_head, body))
        client.shutdown(socket.SHUT_RDWR)  # gone, before a byte of the answer


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def uk(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[localnet.NodeProcess, str]]:
    """The UK node alone (the US is pinned, and need not run to be shared with), and its
    database URL."""
    url = (
        request.getfixturevalue("pg_url")
        if request.param == "postgres"
        else f"sqlite:///{tmp_path / 'uk-aisi' / 'entente.db'}"
    )
    federation = localnet.prepare_nodes(
        tmp_path, ("uk-aisi", "us-aisi"), passphrase=PASSPHRASE,
        scrypt_work_factor=SCRYPT_WORK_FACTOR, env=base_env(ENTENTE_DATABASE_URL=url),
        database_urls={"uk-aisi": url}, command=(ENTENTE,),
    )  # fmt: skip
    node = federation.nodes["uk-aisi"]
    node.start()
    try:
        yield node, url
    finally:
        node.stop()


def _share(node: localnet.NodeProcess, proxy: LosingProxy, path: Path) -> tuple[int, str, str]:
    result = run_cli(
        "share", str(path), "--to", "us-aisi", "--tlp", "TLP:GREEN", "--topic", "evaluation",
        "--purpose", "evaluation", "--json",
        env=base_env(ENTENTE_URL=f"http://127.0.0.1:{proxy.port}",
                     ENTENTE_TOKEN=node.tokens["publisher"]),
    )  # fmt: skip
    return result.returncode, result.stdout, result.stderr


def test_a_retry_after_the_answer_was_lost_shares_once(
    uk: tuple[localnet.NodeProcess, str], tmp_path: Path
) -> None:
    node, database_url = uk
    finding = tmp_path / "finding.bin"
    finding.write_bytes(b"an evaluation finding\n" * 200_000)  # 4.4 MB, streamed twice
    proxy = LosingProxy(node.port, drop=1)
    try:
        code, out, err = _share(node, proxy, finding)
        assert code == 0, err
        assert "retrying" in err and "same idempotency key" in err  # the user sees it retried
        assert "already accepted" in err
        [(lost_head, lost_body)] = proxy.lost
        assert lost_head.startswith(b"HTTP/1.1 201")  # the node had shared it, unseen
        first = json.loads(lost_body)
        assert json.loads(out)["id"] == first["id"]  # the retry answered the first artifact

        # A new invocation is a new request with a key of its own: a second artifact.
        code, out, err = _share(node, proxy, finding)
        assert code == 0, err
        assert "retrying" not in err
        second = json.loads(out)["id"]
        assert second != first["id"]
    finally:
        proxy.close()

    listed = httpx.get(
        f"{node.url}/v1/artifacts", params={"direction": "sent"}, headers=node.auth("auditor")
    ).json()["items"]
    assert sorted(a["id"] for a in listed) == sorted([first["id"], second])
    engine = sa.create_engine(database_url)
    try:
        with engine.connect() as conn:
            shares = conn.execute(
                sa.text("SELECT count(*) FROM audit_entries WHERE kind = 'share.allowed'")
            ).scalar_one()
            keys = conn.execute(sa.text("SELECT state FROM idempotency_keys")).scalars().all()
    finally:
        engine.dispose()
    assert shares == 2
    assert keys == ["done", "done"]
