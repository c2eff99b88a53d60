"""A small HTTP/1.1 server on asyncio and h11, for the actuator and the Dapr /v1.0 subset."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl as ssl_
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from urllib.parse import unquote

import h11

log = logging.getLogger("l8.runtime.http")

_MAX_BODY = 16 << 20
_STATUSES = {s.value for s in HTTPStatus}


@dataclass(slots=True)
class Request:
    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes


@dataclass(slots=True)
class Response:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


Router = Callable[[Request], Awaitable[Response]]


class HttpServer:
    """Serves ``router`` on host:port; ``start``/``stop`` are idempotent and stop closes keep-alives."""

    def __init__(self, host: str, port: int, router: Router, ssl: ssl_.SSLContext | None = None) -> None:
        self.host = host
        self.port = port
        self._router = router
        self._ssl = ssl
        self._server: asyncio.Server | None = None
        self._conns: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        if self._server is not None:
            return
        self._server = await asyncio.start_server(
            self._on_conn, self.host, self.port, reuse_address=True, ssl=self._ssl
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for task in list(self._conns):
            task.cancel()
        await asyncio.gather(*self._conns, return_exceptions=True)
        with contextlib.suppress(Exception):
            await server.wait_closed()

    async def _on_conn(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._conns.add(task)
        try:
            await self._serve(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, h11.ProtocolError, ssl_.SSLError):
            pass
        finally:
            self._conns.discard(task)
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h11.Connection(h11.SERVER)
        while True:
            request = await self._read_request(conn, reader)
            if request is None:
                return
            try:
                response = await self._router(request)
            except Exception:
                log.exception("HTTP %s %s failed", request.method, request.path)
                response = Response(500, b'{"errorCode":"ERR_INTERNAL","message":"internal error"}')
            headers = [(k, v) for k, v in response.headers.items()]
            if response.status != 204 and response.status >= 200:
                headers.append(("content-length", str(len(response.body))))
            reason = HTTPStatus(response.status).phrase if response.status in _STATUSES else ""
            writer.write(conn.send(h11.Response(status_code=response.status, headers=headers, reason=reason)) or b"")
            if response.body and response.status != 204:
                writer.write(conn.send(h11.Data(data=response.body)) or b"")
            writer.write(conn.send(h11.EndOfMessage()) or b"")
            await writer.drain()
            if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
                return
            try:
                conn.start_next_cycle()
            except h11.LocalProtocolError:
                return

    async def _read_request(self, conn: h11.Connection, reader: asyncio.StreamReader) -> Request | None:
        head: h11.Request | None = None
        body = bytearray()
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await reader.read(65536)
                conn.receive_data(data)
                if not data and conn.their_state is not h11.DONE:
                    return None
                continue
            if isinstance(event, h11.Request):
                head = event
            elif isinstance(event, h11.Data):
                body += event.data
                if len(body) > _MAX_BODY:
                    return None
            elif isinstance(event, h11.EndOfMessage):
                assert head is not None
                target = head.target.decode("latin-1")
                path, _, query = target.partition("?")
                headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in head.headers}
                return Request(head.method.decode("ascii"), unquote(path), query, headers, bytes(body))
            elif isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
                return None
