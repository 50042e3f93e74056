"""Keep-alive HTTP/1.1 connections, one per thread and host, for the worker's object
requests: the plain ``http.client`` path, without a pool manager's per-request work
(URL parsing, header containers, a shared queue), which costs about as much CPU as the
request itself at the worker's rates.

Each I/O thread reuses its own connection to each host. A connection the server closed
while idle is noticed before reuse (it reads as ready) and replaced; a request that
fails on a reused connection before any answer is sent once more on a new one, as a
pool would.
"""

from __future__ import annotations

import http.client
import select
import socket
import ssl
import threading
from dataclasses import dataclass

CONNECT_TIMEOUT_S = 10
READ_TIMEOUT_S = 60
# What a reused connection that the server had closed raises before any answer.
_DROPPED = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError,
            ConnectionAbortedError)


@dataclass(frozen=True)
class Answer:
    status: int
    reason: str
    headers: dict[str, str]  # lower-case names
    body: bytes


class ThreadConnections:
    def __init__(self, ca_bundle: str | None = None) -> None:
        self._ca_bundle = ca_bundle
        self._tls: ssl.SSLContext | None = None
        self._local = threading.local()
        self._lock = threading.Lock()

    def request(self, scheme: str, host: str, method: str, path: str,
                headers: dict[str, str], body: bytes) -> Answer:
        connections: dict[tuple[str, str], http.client.HTTPConnection] | None = getattr(
            self._local, "connections", None)
        if connections is None:
            connections = self._local.connections = {}
        key = (scheme, host)
        for attempt in range(2):
            connection = connections.pop(key, None)
            reused = connection is not None and _still_open(connection)
            if not reused:
                if connection is not None:
                    connection.close()
                connection = self._connect(scheme, host)
            try:
                connection.request(method, path, body=body or None, headers=headers)
                response = connection.getresponse()
                data = response.read()
            except _DROPPED:
                connection.close()
                if reused and attempt == 0:
                    continue
                raise
            except BaseException:
                connection.close()
                raise
            if response.will_close:
                connection.close()
            else:
                connections[key] = connection
            return Answer(status=response.status, reason=response.reason or "",
                          headers={name.lower(): value for name, value in
                                   response.getheaders()},
                          body=data)
        raise AssertionError("unreachable")

    def _connect(self, scheme: str, host: str) -> http.client.HTTPConnection:
        connection: http.client.HTTPConnection
        if scheme == "https":
            connection = http.client.HTTPSConnection(host, timeout=CONNECT_TIMEOUT_S,
                                                     context=self._tls_context())
        else:
            connection = http.client.HTTPConnection(host, timeout=CONNECT_TIMEOUT_S)
        connection.connect()
        assert connection.sock is not None
        connection.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        connection.sock.settimeout(READ_TIMEOUT_S)
        return connection

    def _tls_context(self) -> ssl.SSLContext:
        with self._lock:
            if self._tls is None:
                self._tls = ssl.create_default_context(cafile=self._ca_bundle)
            return self._tls


def _still_open(connection: http.client.HTTPConnection) -> bool:
    """An idle keep-alive connection has nothing to read; readable means the server
    closed it (or sent something unasked): not reusable."""
    sock = connection.sock
    if sock is None:
        return False
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return False
    return not readable
