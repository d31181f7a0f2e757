"""TCP proxies in front of a real node, for the integration tests that break connections: the
raw HTTP/1.1 helpers they share, :class:`Proxy` (accept, and a thread per connection) and
:class:`CuttingProxy`, which cuts a request's body mid-way (a resumable upload's ``PATCH``, a
partner's push to ``/federation/v1/inbox``). ``LosingProxy`` (``test_idempotent_retry``) is
another :class:`Proxy`."""

from __future__ import annotations

import socket
import threading


def _head_and_rest(sock: socket.socket, buf: bytes = b"") -> tuple[bytes, bytes]:
    while b"\r\n\r\n" not in buf:
        data = sock.recv(65536)
        if not data:
            raise ConnectionError("the connection closed before a complete head")
        buf += data
    head, rest = buf.split(b"\r\n\r\n", 1)
    return head, rest


def _length(head: bytes) -> int:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value.strip())
    return 0


def _read_exactly(
    sock: socket.socket, have: bytes, length: int, forward: socket.socket | None
) -> bytes:
    out = bytearray(have)
    while len(out) < length:
        data = sock.recv(65536)
        if not data:
            raise ConnectionError("the connection closed before the whole body")
        if forward is not None:
            forward.sendall(data)
        out += data
    return bytes(out)


def _pipe(source: socket.socket, sink: socket.socket, counted: list[int] | None = None) -> None:
    """Copy ``source`` to ``sink`` until it ends; adds the bytes copied to ``counted[-1]``."""
    try:
        while data := source.recv(65536):
            sink.sendall(data)
            if counted is not None:
                counted[-1] += len(data)
        sink.shutdown(socket.SHUT_WR)
    except OSError:
        pass


def _field(head: bytes, name: bytes) -> int:
    """An Integer field's value (a Boolean's: 0 or 1); -1 when absent."""
    for line in head.split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == name:
            return int(value.strip().removeprefix(b"?"))
    return -1


def _closing(head: bytes) -> bytes:
    """``head`` asking the server to close the connection after its answer (so that the next
    request comes on a new connection, where the proxy sees its head)."""
    lines = [
        line
        for line in head.split(b"\r\n")
        if line.partition(b":")[0].strip().lower() != b"connection"
    ]
    return b"\r\n".join([*lines, b"Connection: close"])


class Proxy:
    """Listens on ``host``:``port`` (0: a free port, in ``port``) and serves each connection
    in its own thread with :meth:`_serve`, given the client's socket; ``upstream`` is the
    node's address."""

    def __init__(
        self, upstream: tuple[str, int], *, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self.upstream = upstream
        self._server = socket.create_server((host, port))
        self.port = self._server.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self._server.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        raise NotImplementedError

    @staticmethod
    def _relay(client: socket.socket, upstream: socket.socket, counted: list[int] | None) -> None:
        """Copy both ways until both ends are done (the client's bytes added to ``counted``)."""
        pipes = [
            threading.Thread(target=_pipe, args=(client, upstream, counted), daemon=True),
            threading.Thread(target=_pipe, args=(upstream, client), daemon=True),
        ]
        for pipe in pipes:
            pipe.start()
        for pipe in pipes:
            pipe.join()


class CuttingProxy(Proxy):
    """A TCP proxy in front of a node (listening on ``host``), one request per connection (it
    asks the node to close each after its answer). Requests whose head starts with ``match``
    are watched: the first ``cuts`` are forwarded with ``after`` bytes of their body, then both
    connections close; the next ``lose`` (with ``Upload-Complete: ?1``) are forwarded whole,
    and their answer read and dropped; the rest are forwarded as they are, each waiting for
    ``hold`` (when given) to be set first. ``offsets`` lists each watched request's
    ``offset_field`` (-1 when absent), ``forwarded`` the body bytes each carried to the node."""

    def __init__(
        self,
        upstream: int,
        *,
        cuts: int,
        after: int,
        lose: int = 0,
        match: bytes = b"PATCH ",
        offset_field: bytes = b"upload-offset",
        host: str = "127.0.0.1",
        port: int = 0,
        upstream_host: str = "127.0.0.1",
        hold: threading.Event | None = None,
    ) -> None:
        self.cuts = cuts
        self.after = after
        self.lose = lose
        self.match = match
        self.offset_field = offset_field
        self.hold = hold
        self.lost: list[bytes] = []  # heads of the answers the client never saw
        self.offsets: list[int] = []
        self.forwarded: list[int] = []
        super().__init__((upstream_host, upstream), host=host, port=port)  # serving from here

    def _serve(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self.upstream)
        except OSError:  # the node behind has stopped (a test's teardown): as a real proxy would
            client.close()
            return
        with client, upstream:
            try:
                head, rest = _head_and_rest(client)
            except ConnectionError:
                return
            head = _closing(head)
            counted: list[int] | None = None
            if head.startswith(self.match):
                self.offsets.append(_field(head, self.offset_field))
                if self.cuts > 0:
                    self.cuts -= 1
                    sent = head + b"\r\n\r\n" + rest
                    body = len(rest)
                    while body < self.after and (data := client.recv(65536)):
                        sent += data
                        body += len(data)
                    self.forwarded.append(body)
                    upstream.sendall(sent)
                    upstream.shutdown(socket.SHUT_RDWR)
                    client.shutdown(socket.SHUT_RDWR)
                    return
                if self.lose > 0 and _field(head, b"upload-complete") == 1:
                    self.lose -= 1
                    upstream.sendall(head + b"\r\n\r\n" + rest)
                    _read_exactly(client, rest, _length(head), upstream)
                    answer, more = _head_and_rest(upstream)
                    _read_exactly(upstream, more, _length(answer), None)
                    self.lost.append(answer)
                    client.shutdown(socket.SHUT_RDWR)  # the whole answer, never delivered
                    return
                if self.hold is not None:
                    self.hold.wait(60)
                self.forwarded.append(len(rest))
                counted = self.forwarded
            upstream.sendall(head + b"\r\n\r\n" + rest)
            self._relay(client, upstream, counted)
