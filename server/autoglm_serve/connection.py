"""Socket plumbing of the built-in server: a reader with deadlines, and a graceful close for many sockets at once.

Why not the standard library's: its rfile waits forever (no socket timeout), reads up to about 6.5 MB of
headers, and a plain close() with bytes still unread sends a reset that can destroy the answer before the
client reads it (a 413 or a busy 503 then looks like a dropped connection).
"""
from __future__ import annotations

import contextlib
import http.client
import io
import selectors
import socket
import threading
import time
from typing import Any


class HeadTooLarge(http.client.HTTPException):
    """The request line and headers exceed the head limit (parse_request answers 431 for HTTPException)."""


class RequestReader(io.RawIOBase):
    """The raw stream under a connection's rfile.

    Every recv waits at most `idle` seconds. Once a request's first byte has arrived, its head and body must
    all arrive within `request_timeout` seconds (a slow client sending a byte every few seconds still ends at
    the deadline), and its head may be at most `head_limit` bytes.
    """

    def __init__(self, sock: socket.socket, idle: float, request_timeout: float, head_limit: int) -> None:
        super().__init__()
        self.sock, self.idle, self.request_timeout, self.head_limit = sock, idle, request_timeout, head_limit
        self.reading = False
        self.deadline: float | None = None
        self.head_left: int | None = None

    def readable(self) -> bool:
        return True

    def begin_request(self) -> None:
        self.reading, self.deadline, self.head_left = True, None, self.head_limit

    def end_head(self) -> None:
        self.head_left = None  # the body is bounded by its Content-Length, not here

    def end_request(self) -> None:
        self.reading, self.deadline, self.head_left = False, None, None

    @property
    def started(self) -> bool:
        """Whether a byte of the current request has arrived (a timeout before that is an idle keep-alive)."""
        return self.deadline is not None

    def readinto(self, buffer: Any) -> int:
        wait = self.idle
        if self.deadline is not None:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise socket.timeout("the request was not received within %g s" % self.request_timeout)
            wait = min(wait, left)
        self.sock.settimeout(wait)
        try:
            count = self.sock.recv_into(buffer)
        finally:
            self.sock.settimeout(self.idle)  # writes wait the idle timeout, not what was left of a deadline
        if count and self.reading and self.deadline is None:
            self.deadline = time.monotonic() + self.request_timeout
        if self.head_left is not None:
            self.head_left -= count
            if self.head_left < 0:
                raise HeadTooLarge("the request line and headers are over %d bytes" % self.head_limit)
        return count


class Linger:
    """Closes sockets gracefully from one thread: shut our side, drop what the peer still sends until it closes,
    `seconds` pass or `max_bytes` arrive, then close. Beyond `max_sockets` at once, sockets are closed at once."""

    def __init__(self, seconds: float = 2.0, max_bytes: int = 1 << 20, max_sockets: int = 512) -> None:
        self.seconds, self.max_bytes, self.max_sockets = seconds, max_bytes, max_sockets
        self._lock = threading.Lock()
        self._incoming: list[socket.socket] = []
        self._count = 0
        self._selector = selectors.DefaultSelector()
        threading.Thread(target=self._run, name="linger", daemon=True).start()

    def close(self, sock: socket.socket) -> None:
        with contextlib.suppress(OSError):  # already reset by the peer
            sock.shutdown(socket.SHUT_WR)
        with self._lock:
            if self._count >= self.max_sockets:
                sock.close()
                return
            self._count += 1
            self._incoming.append(sock)

    def _forget(self, sock: socket.socket) -> None:
        self._selector.unregister(sock)
        sock.close()
        with self._lock:
            self._count -= 1

    def _run(self) -> None:
        budget: dict[socket.socket, list[float]] = {}
        while True:
            with self._lock:
                incoming, self._incoming = self._incoming, []
            for sock in incoming:
                sock.setblocking(False)
                self._selector.register(sock, selectors.EVENT_READ)
                budget[sock] = [time.monotonic() + self.seconds, self.max_bytes]
            for key, _unused in self._selector.select(timeout=0.1) if budget else ():
                sock = key.fileobj
                try:
                    data = sock.recv(65536)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    data = b""
                budget[sock][1] -= len(data)
                if not data or budget[sock][1] <= 0:
                    del budget[sock]
                    self._forget(sock)
            now = time.monotonic()
            for sock in [s for s, (deadline, _unused) in budget.items() if deadline <= now]:
                del budget[sock]
                self._forget(sock)
            if not budget:
                time.sleep(0.05)
