"""A small HTTP/1.1 server on asyncio and httptools (llhttp), for the actuator and Dapr's HTTP API.

llhttp parses strictly: a garbage request line, a bad header, a bad Content-Length or chunk size,
and a request with both Content-Length and Transfer-Encoding are protocol errors, answered 400
before the connection closes. On top of it this module bounds what one client can hold:

- the request head (line and headers) may take ``max_header_bytes`` (431 past it) and must arrive
  within ``header_timeout`` of its first byte (408); a body may be ``max_body_bytes`` (413, known
  from Content-Length before any of it is read) and may pause at most ``header_timeout`` per read;
- a connection without a request closes after ``idle_timeout``;
- at most ``max_connections`` are open: a new one past the cap takes the place of the connection
  that has waited longest without a request in progress, so slow or idle clients cannot lock
  health checks out; if every connection is busy the new one gets 503.

Requests of one connection are answered in order (pipelining works). The router gets the path as
it came (percent-encoded); routes decode segment by segment, so an encoded '/' never splits one.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import re
import ssl as ssl_
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, cast

import httptools

log = logging.getLogger("l8.runtime.http")

_JSON = "application/json"
_UNSAFE = re.compile(r"[\r\n\x00]")


@dataclass(slots=True)
class Request:
    method: str
    path: str  # as it came, percent-encoded
    query: str
    headers: dict[str, str]  # names lower-cased; repeated headers joined with ", "
    body: bytes


@dataclass(slots=True)
class Response:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


Router = Callable[[Request], Awaitable[Response]]


@dataclass(slots=True, frozen=True)
class Limits:
    max_body_bytes: int = 16 << 20
    max_header_bytes: int = 16 << 10
    header_timeout: float = 10.0
    idle_timeout: float = 60.0
    max_connections: int = 1024


def error_response(status: int, code: str, message: str) -> Response:
    """Dapr's error body, ``{"errorCode", "message"}``."""
    body = json.dumps({"errorCode": code, "message": message}).encode()
    return Response(status, body, {"content-type": _JSON})


class _Reject(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.response = error_response(status, code, message)


class _Connection(asyncio.Protocol):
    """One client connection: parses requests, answers them in order, enforces the limits."""

    def __init__(self, server: HttpServer) -> None:
        self._server = server
        self._limits = server.limits
        self._loop = asyncio.get_running_loop()
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._queue: collections.deque[Request | Response] = collections.deque()
        self._worker: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._closing = False
        self._reset_request()
        # Since when the connection has not completed a request: the cap evicts the longest waiting.
        self.waiting_since = time.monotonic()

    # ---- state of the request being read ----

    def _reset_request(self) -> None:
        self._url = bytearray()
        self._headers: dict[str, str] = {}
        self._head_bytes = 0
        self._body = bytearray()
        self._in_request = False
        self._content_length: str | None = None
        self._chunked = False
        self._headers_done = False

    @property
    def busy(self) -> bool:
        """A request is being read or answered (an evicted connection must not lose one)."""
        return self._in_request or bool(self._queue) or (self._worker is not None and not self._worker.done())

    # ---- asyncio.Protocol ----

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have its methods.
        self._transport = cast(asyncio.Transport, transport)
        self._arm(self._limits.idle_timeout, self._idle_expired)

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return
        if not self._in_request:
            self._in_request = True
            self._arm(self._limits.header_timeout, self._head_expired)
        elif self._url and self._headers_done:
            # Reading a body: each read may pause at most header_timeout.
            self._arm(self._limits.header_timeout, self._head_expired)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            reject = exc.__context__
            if isinstance(reject, _Reject):
                self._fail(reject.response)
            else:  # pragma: no cover - a bug in a callback below
                log.exception("HTTP parser callback failed")
                self._fail(error_response(500, "ERR_INTERNAL", "internal error"))
        except httptools.HttpParserUpgrade:
            self._fail(error_response(400, "ERR_BAD_REQUEST", "protocol upgrades are not supported"))
        except httptools.HttpParserError as exc:
            self._fail(error_response(400, "ERR_BAD_REQUEST", f"malformed HTTP request: {str(exc)[:100]}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self._closing = True
        self._disarm()
        self._server.forget(self)
        if self._worker is not None and not self._worker.done():
            self._worker.cancel()

    # ---- httptools callbacks ----

    def on_message_begin(self) -> None:
        self._in_request = True
        self._headers_done = False

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4)
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        if key == "content-length":
            self._content_length = text
        elif key == "transfer-encoding":
            self._chunked = True
        self._headers[key] = f"{self._headers[key]}, {text}" if key in self._headers else text

    def on_headers_complete(self) -> None:
        self._headers_done = True
        if self._content_length is not None and self._chunked:
            # llhttp refuses this too; checked here as well so the rule holds whatever the parser.
            raise _Reject(400, "ERR_BAD_REQUEST", "a request may not carry both Content-Length and Transfer-Encoding")
        limit = self._limits.max_body_bytes
        if self._content_length is not None and self._content_length.isdigit() and int(self._content_length) > limit:
            raise _Reject(413, "ERR_BODY_TOO_LARGE", f"the body is {self._content_length} bytes; at most {limit}")
        # The head is complete: from here on reads wait for the body, one pause at a time.
        self._arm(self._limits.header_timeout, self._head_expired)
        if self._headers.get("expect", "").lower() == "100-continue" and self._transport is not None:
            self._transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        self._body += body
        if len(self._body) > self._limits.max_body_bytes:
            raise _Reject(413, "ERR_BODY_TOO_LARGE", f"the body is over {self._limits.max_body_bytes} bytes")

    def on_message_complete(self) -> None:
        url = bytes(self._url).decode("latin-1")
        path, _, query = url.partition("?")
        method = self._parser.get_method().decode("ascii", "replace")
        request = Request(method, path, query, self._headers, bytes(self._body))
        keep = self._parser.should_keep_alive()
        self._reset_request()
        self.waiting_since = time.monotonic()
        self._queue.append(request)
        if not keep:
            self._queue.append(_CLOSE)
            self._closing = True
        self._disarm()
        if self._worker is None or self._worker.done():
            self._worker = self._loop.create_task(self._answer())

    def _count(self, n: int) -> None:
        self._head_bytes += n
        if self._head_bytes > self._limits.max_header_bytes:
            raise _Reject(
                431, "ERR_HEADERS_TOO_LARGE", f"the request head is over {self._limits.max_header_bytes} bytes"
            )

    # ---- answering ----

    async def _answer(self) -> None:
        while self._queue:
            item = self._queue.popleft()
            if item is _CLOSE:
                self._close()
                return
            assert isinstance(item, Request)
            try:
                response = await self._server.router(item)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("HTTP %s %s failed", item.method, item.path[:200])
                response = error_response(500, "ERR_INTERNAL", "internal error")
            self._write(response, head_only=item.method == "HEAD")
        if not self._in_request and not self._closing:
            self._arm(self._limits.idle_timeout, self._idle_expired)

    def _write(self, response: Response, *, head_only: bool = False, close: bool = False) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        status = response.status
        try:
            reason = HTTPStatus(status).phrase
        except ValueError:
            reason = ""
        lines = [f"HTTP/1.1 {status} {reason}"]
        # A header that could end the line early never goes out (no response splitting).
        lines += [
            f"{k}: {v}"
            for k, v in response.headers.items()
            if k != "content-length" and not _UNSAFE.search(k) and not _UNSAFE.search(v)
        ]
        body = b"" if head_only or status in (204, 304) else response.body
        if status >= 200 and status not in (204, 304):
            lines.append(f"content-length: {len(response.body)}")
        if close:
            lines.append("connection: close")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", "replace")
        transport.write(head + body if body else head)

    def _fail(self, response: Response) -> None:
        """A request l8 cannot read: answer it, then close (the stream's framing is lost).

        Closing a socket with unread bytes in it makes the kernel send a reset, which can destroy
        the answer before the client reads it; so l8 stops writing, discards what still comes for
        a moment (``_LINGER``), then closes."""
        self._closing = True
        self._queue.clear()
        if self._worker is not None and not self._worker.done():
            self._worker.cancel()
        self._write(response, close=True)
        transport = self._transport
        if transport is not None and not transport.is_closing() and transport.can_write_eof():
            transport.write_eof()
            self._arm(_LINGER, self._close)
        else:
            self._close()

    def _close(self) -> None:
        self._closing = True
        self._disarm()
        if self._transport is not None and not self._transport.is_closing():
            self._transport.close()

    def evict(self) -> None:
        """Make room for a new connection: close this waiting one."""
        if self._in_request:
            self._fail(error_response(408, "ERR_REQUEST_TIMEOUT", "the request took too long to arrive"))
        else:
            self._close()

    # ---- timers ----

    def _arm(self, delay: float, callback: Callable[[], None]) -> None:
        self._disarm()
        self._timer = self._loop.call_later(delay, callback)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _head_expired(self) -> None:
        self._fail(error_response(408, "ERR_REQUEST_TIMEOUT", "the request did not arrive in time"))

    def _idle_expired(self) -> None:
        if not self.busy:
            self._close()


_CLOSE = Response(0)
_LINGER = 2.0  # seconds a failed connection discards input before it closes


class HttpServer:
    """Serves ``router`` on host:port; ``start``/``stop`` are idempotent and stop closes keep-alives."""

    def __init__(
        self, host: str, port: int, router: Router, limits: Limits | None = None, ssl: ssl_.SSLContext | None = None
    ) -> None:
        self.host = host
        self.port = port
        self.router = router
        self.limits = limits or Limits()
        self._ssl = ssl
        self._server: asyncio.Server | None = None
        self._conns: set[_Connection] = set()

    @property
    def connections(self) -> int:
        return len(self._conns)

    async def start(self) -> None:
        if self._server is not None:
            return
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._accept, self.host, self.port, reuse_address=True, ssl=self._ssl)
        self.port = self._server.sockets[0].getsockname()[1]

    def _accept(self) -> _Connection:
        conn = _Connection(self)
        if len(self._conns) >= self.limits.max_connections:
            waiting = [c for c in self._conns if not c.busy or c._in_request]
            if waiting:
                min(waiting, key=lambda c: c.waiting_since).evict()
            else:
                conn._closing = True
                self._refuse(conn)
                return conn
        self._conns.add(conn)
        return conn

    def _refuse(self, conn: _Connection) -> None:
        loop = asyncio.get_running_loop()

        def refuse() -> None:
            conn._write(error_response(503, "ERR_TOO_MANY_CONNECTIONS", "l8 is at its connection limit"), close=True)
            conn._close()

        loop.call_soon(refuse)

    def forget(self, conn: _Connection) -> None:
        self._conns.discard(conn)

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        workers: list[asyncio.Task[Any]] = [
            c._worker for c in self._conns if c._worker is not None and not c._worker.done()
        ]
        # Requests being answered finish first (briefly); then every connection closes.
        if workers:
            await asyncio.wait(workers, timeout=5.0)
        for conn in list(self._conns):
            conn._close()
        self._conns.clear()
        with contextlib.suppress(Exception):
            await server.wait_closed()
