"""An HTTP server on 127.0.0.1 that reads each request, then trickles its answer a byte
at a time, forever: a webhook that would hold a client with only a per-read timeout."""

from __future__ import annotations

import socket
import threading


class TricklingServer:
    def __init__(self, seconds_per_byte: float = 0.5) -> None:
        self.seconds_per_byte = seconds_per_byte
        self.requests = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._closed = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._listener.getsockname()[1]}/hook"

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                connection, _ = self._listener.accept()
            except OSError:
                return
            self.requests += 1
            threading.Thread(target=self._trickle, args=(connection,), daemon=True).start()

    def _trickle(self, connection: socket.socket) -> None:
        with connection:
            connection.recv(65536)
            answer = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
            index = 0
            while not self._closed.wait(self.seconds_per_byte):
                try:
                    connection.send(answer[index % 2:index % 2 + 1])  # "H", "T", "H"...
                except OSError:
                    return
                index += 1

    def close(self) -> None:
        self._closed.set()
        self._listener.close()
