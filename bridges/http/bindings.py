"""An output binding to an HTTP server (aiohttp): ``get``, ``post``, ``put`` and ``delete``, and
``create``, Dapr's other name for ``post``.

Metadata: ``url`` (required, http or https), ``timeoutSeconds`` (default 30; every call is also cut
to the caller's deadline), ``errorIfNot2XX`` (default true), ``maxConnections`` (default 64). A call's
metadata ``path`` is appended to the url's path, and every other entry becomes a request header; a
path that would leave the url's scheme, host or port is refused, and so are headers that would
reframe the request (Host, Content-Length, Transfer-Encoding, Connection). Redirects are not
followed. The reply's body is the response data, and its metadata is ``statusCode`` plus the
response headers. With ``errorIfNot2XX`` a 5xx answers UNAVAILABLE and any other non-2xx status
FAILED_PRECONDITION, naming the status and a short prefix of the body.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

import aiohttp
from yarl import URL

from bridges.errors import (
    BackendUnavailable,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    ResourceExhausted,
)
from bridges.protocols import BindingReply
from bridges.registry import BridgeEnv

_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")  # RFC 9110 header names
_FRAMING = {"host", "content-length", "transfer-encoding", "connection"}
# create: Dapr's name for POST, which apps' answers to input binding events use.
_OPS = {"get": "GET", "post": "POST", "put": "PUT", "delete": "DELETE", "create": "POST"}


class HttpBinding:
    def __init__(self, name: str, metadata: dict[str, str], env: BridgeEnv) -> None:
        self.name = name
        self._what = f"binding {name!r}"
        try:
            self.url = URL(metadata.get("url", ""))
        except ValueError:
            raise ValueError(f"{self._what}: metadata url is not a URL") from None
        if self.url.scheme not in ("http", "https") or not self.url.host:
            raise ValueError(f"{self._what}: metadata url must be an http:// or https:// URL with a host")
        self._timeout = float(metadata.get("timeoutSeconds", "30"))
        self._error_if_not_2xx = metadata.get("errorIfNot2XX", "true").lower() != "false"
        self._max_connections = int(metadata.get("maxConnections", "64"))
        self._session: aiohttp.ClientSession | None = None

    def features(self) -> frozenset[str]:
        return frozenset()

    def operations(self) -> tuple[str, ...]:
        return tuple(_OPS)

    async def start(self) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=self._max_connections))

    async def stop(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    def _target(self, path: str) -> URL:
        if not path:
            return self.url
        if any(c in path for c in "\r\n\x00") or "://" in path:
            raise InvalidArgument(f"{self._what}: metadata path {path[:64]!r} must be a path, not a URL")
        base = str(self.url).rstrip("/")
        try:
            target = URL(base + "/" + path.lstrip("/"))
        except ValueError:
            raise InvalidArgument(f"{self._what}: metadata path {path[:64]!r} is not a URL path") from None
        base_path = self.url.path.rstrip("/")
        if (target.scheme, target.host, target.port) != (self.url.scheme, self.url.host, self.url.port) or not (
            target.path == base_path or target.path.startswith(base_path + "/")
        ):
            # yarl resolves '..' (plain or percent-encoded): what is left must stay under the url.
            raise InvalidArgument(f"{self._what}: metadata path {path[:64]!r} leaves {self.url}")
        return target

    def _headers(self, metadata: dict[str, str]) -> dict[str, str]:
        headers: dict[str, str] = {}
        for key, value in metadata.items():
            if key == "path":
                continue
            if not _TOKEN.match(key) or key.lower() in _FRAMING or any(c in value for c in "\r\n\x00"):
                raise InvalidArgument(f"{self._what}: metadata {key[:64]!r} cannot be a request header")
            headers[key] = value
        return headers

    async def invoke(
        self, operation: str, data: bytes, metadata: dict[str, str], *, timeout: float, max_reply: int
    ) -> BindingReply:
        session = self._session
        if session is None:
            raise BackendUnavailable(f"{self._what} is not started")
        target = self._target(metadata.get("path", ""))
        headers = self._headers(metadata)
        limit = min(timeout, self._timeout)
        what = f"{self._what}: {_OPS[operation]} {target.path}"
        try:
            async with session.request(
                _OPS[operation],
                target,
                data=data or None,
                headers=headers,
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=limit),
            ) as resp:
                body = await resp.content.read(max_reply + 1)
                status = resp.status
                reply_headers: dict[str, Any] = dict(resp.headers)
        except TimeoutError:
            raise DeadlineExceeded(f"{what}: no answer within {limit:.3f}s") from None
        except asyncio.CancelledError:
            raise
        except aiohttp.ClientConnectionError as exc:
            raise BackendUnavailable(f"{what}: {type(exc).__name__}: {exc}") from None
        except aiohttp.ClientError as exc:
            raise FailedPrecondition(f"{what}: {type(exc).__name__}: {exc}") from None
        if len(body) > max_reply:
            raise ResourceExhausted(f"{what}: the response is over {max_reply} bytes")
        if self._error_if_not_2xx and not 200 <= status < 300:
            prefix = body[:64].decode(errors="replace")
            error = BackendUnavailable if status >= 500 else FailedPrecondition
            raise error(f"{what} answered {status}: {prefix!r}")
        out = {str(k): str(v) for k, v in reply_headers.items()}
        out["statusCode"] = str(status)
        return BindingReply(body, out)
