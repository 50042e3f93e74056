"""Each thread keeps one connection per host, and a connection the server dropped while
idle is replaced without the request failing."""

from __future__ import annotations

import socket
import threading

import pytest

from worker.fleet.http_connections import ThreadConnections


class KeepAliveServer:
    """Answers every request on a connection with 200 and the connection's number;
    ``close_after`` answers, it closes the connection without saying so."""

    def __init__(self, close_after: int | None = None) -> None:
        self.close_after = close_after
        self.connections = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self._listener.getsockname()[1]}"

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self._listener.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(connection, self.connections),
                             daemon=True).start()

    def _serve(self, connection: socket.socket, number: int) -> None:
        answered = 0
        with connection:
            buffer = b""
            while self.close_after is None or answered < self.close_after:
                while b"\r\n\r\n" not in buffer:
                    chunk = connection.recv(65536)
                    if not chunk:
                        return
                    buffer += chunk
                head, _, buffer = buffer.partition(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                while len(buffer) < length:
                    buffer += connection.recv(65536)
                buffer = buffer[length:]
                body = str(number).encode()
                connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s"
                                   % (len(body), body))
                answered += 1

    def close(self) -> None:
        self._listener.close()


def get(connections: ThreadConnections, server: KeepAliveServer, body: bytes = b"") -> bytes:
    answer = connections.request("http", server.host, "PUT" if body else "GET", "/k",
                                 {"host": server.host}, body)
    assert answer.status == 200
    return answer.body


@pytest.fixture
def server():
    server = KeepAliveServer()
    yield server
    server.close()


def test_a_thread_reuses_its_connection(server: KeepAliveServer) -> None:
    connections = ThreadConnections()
    assert [get(connections, server, body) for body in (b"", b"x" * 5000, b"")] == [b"1"] * 3
    assert server.connections == 1


def test_threads_do_not_share_a_connection(server: KeepAliveServer) -> None:
    connections = ThreadConnections()
    answers: list[bytes] = []
    threads = [threading.Thread(target=lambda: answers.append(get(connections, server)))
               for _ in range(3)]
    for thread in threads:
        thread.start()
        thread.join()
    assert sorted(answers) == [b"1", b"2", b"3"] and server.connections == 3


def test_a_connection_dropped_while_idle_is_replaced() -> None:
    server = KeepAliveServer(close_after=1)
    try:
        connections = ThreadConnections()
        assert [get(connections, server) for _ in range(3)] == [b"1", b"2", b"3"]
    finally:
        server.close()
