"""One HTTP POST to a checked target, within a total deadline, never following a redirect.

urllib would follow redirects (to hosts nobody checked), resolve the host again after it
was checked, and time out per read only, so a server trickling its answer a byte at a
time holds the caller for as long as it likes. Here the connection goes to the address
that was checked, HTTPS still verifies the certificate for the URL's host name, the
whole exchange (connect, send, the status line) must end by the deadline, and only the
status code is read. ``Posts.abort`` ends every exchange in flight at once (shutdown).
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
import time

from worker.fleet.callback_policy import DEFAULT_PORTS, Target

MAX_STATUS_LINE = 8192
USER_AGENT = "img2img-fleet-worker"


class PostFailed(Exception):
    """The POST did not get a 2xx answer; ``retryable`` says whether to try again."""

    def __init__(self, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable


class Posts:
    """Tracks open connections so that ``abort`` can cut them all."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self.aborted = False

    def abort(self) -> None:
        with self._lock:
            self.aborted = True
            for sock in self._open:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def post(self, target: Target, body: bytes, headers: dict[str, str], *,
             deadline: float) -> int:
        """POST ``body``; the 2xx status, else PostFailed (3xx never followed)."""
        if self.aborted:
            raise PostFailed("the worker is stopping", retryable=False)
        sock = _connect(target, deadline)
        with self._lock:
            self._open.add(sock)
            aborted = self.aborted
        try:
            if aborted:
                raise PostFailed("the worker is stopping", retryable=False)
            _send_all(sock, _request(target, body, headers), deadline)
            status = _read_status(sock, deadline)
        except PostFailed:
            raise
        except OSError as exc:
            why = "the worker is stopping" if self.aborted else f"{type(exc).__name__}: {exc}"
            raise PostFailed(why, retryable=not self.aborted) from None
        finally:
            with self._lock:
                self._open.discard(sock)
            sock.close()
        if 200 <= status < 300:
            return status
        if 300 <= status < 400:
            raise PostFailed(f"answered {status} (a redirect); redirects are not followed",
                             retryable=False)
        retryable = status >= 500 or status in (408, 429)
        raise PostFailed(f"answered {status}", retryable=retryable)


def _remaining(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise PostFailed("no answer within the delivery deadline", retryable=True)
    return left


def _connect(target: Target, deadline: float) -> socket.socket:
    try:
        sock = socket.create_connection((target.address, target.port),
                                        timeout=_remaining(deadline))
    except OSError as exc:
        raise PostFailed(f"cannot connect to {target.address}:{target.port}: {exc}",
                         retryable=True) from None
    if target.scheme == "https":
        context = ssl.create_default_context()
        try:
            sock.settimeout(_remaining(deadline))
            sock = context.wrap_socket(sock, server_hostname=target.host)
        except (OSError, PostFailed) as exc:
            sock.close()
            if isinstance(exc, PostFailed):
                raise
            raise PostFailed(f"TLS with {target.host} failed: {exc}",
                             retryable=not isinstance(exc, ssl.SSLCertVerificationError)
                             ) from None
    return sock


def _request(target: Target, body: bytes, headers: dict[str, str]) -> bytes:
    host = f"[{target.host}]" if ":" in target.host else target.host
    if target.port != DEFAULT_PORTS[target.scheme]:
        host = f"{host}:{target.port}"
    lines = [f"POST {target.path} HTTP/1.1", f"Host: {host}", f"User-Agent: {USER_AGENT}",
             f"Content-Length: {len(body)}", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def _send_all(sock: socket.socket, data: bytes, deadline: float) -> None:
    view = memoryview(data)
    while view:
        sock.settimeout(_remaining(deadline))
        sent = sock.send(view)
        view = view[sent:]


def _read_status(sock: socket.socket, deadline: float) -> int:
    """The status code of the answer's first line; each read may wait only for what is
    left of the deadline, so a trickle ends with it."""
    received = b""
    while b"\r\n" not in received:
        sock.settimeout(_remaining(deadline))
        chunk = sock.recv(1024)
        if not chunk:
            raise PostFailed("the connection closed before an answer", retryable=True)
        received += chunk
        if len(received) > MAX_STATUS_LINE:
            raise PostFailed("the answer's status line is too long", retryable=False)
    line = received.split(b"\r\n", 1)[0].decode("latin-1")
    fields = line.split(" ", 2)
    if len(fields) < 2 or not fields[0].startswith("HTTP/") or not fields[1].isdigit():
        raise PostFailed(f"not an HTTP answer: {line[:80]!r}", retryable=False)
    return int(fields[1])
