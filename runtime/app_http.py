"""Apps that are HTTP servers (Dapr's default app channel: Flask, FastAPI, Express, the Dapr SDKs'
HTTP servers), called as daprd calls them.

- Subscriptions: ``GET /dapr/subscribe`` (Dapr's programmatic subscriptions, ``route`` or
  ``routes{rules, default}``, ``deadLetterTopic``, ``bulkSubscribe``, ``metadata``; 404: none).
  ``GET /dapr/config`` is read once; l8 uses none of its settings (actors) and says so.
- Events: ``POST <route>`` with the CloudEvent as ``application/cloudevents+json``. A 2xx answer
  with ``{"status": "SUCCESS"|"RETRY"|"DROP"}`` decides (an empty or unreadable body is SUCCESS,
  an unknown status RETRY), 404 drops, any other answer retries. Bulk: one ``POST`` of Dapr's bulk
  envelope (``{id, type, topic, pubsubname, metadata, entries[{entryId, event, contentType,
  metadata}]}``, ``application/json``), answered ``{"statuses": [{entryId, status}]}`` (an entry
  without a status retries; 404 drops them all).
- Invocations: Dapr's ``InvokeRequest`` becomes an HTTP request: its verb (NONE is POST), ``/``
  + method, the query string, the caller's metadata as headers, the data with its content type.
  The answer comes back as an ``InvokeResponse`` with the response's content type, its headers as
  metadata, and its status in ``dapr-http-status`` (the fronts answer with it: the HTTP route as
  the status itself, gRPC as Dapr maps it).
- Input bindings: ``OPTIONS /<name>`` tells whether the app takes a binding's events (2xx or 405),
  which come as ``POST /<name>`` (data as the body, metadata as headers); a non-2xx answer means
  "deliver it again". Dapr reads nothing else from the answer of an HTTP app.
- Health: ``GET`` of the health check path (default ``/healthz``); 2xx is healthy.

Connection failures raise ``AppUnavailable`` (events wait for the app); a reply over
``max_message_bytes`` is refused. aiohttp is imported only when an HTTP app is used.
"""

from __future__ import annotations

import base64
import logging
import posixpath
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING
from urllib.parse import quote as url_quote

import orjson

from bridges.errors import Code, quote
from handlers import limits
from runtime.app_channel import (
    DROP,
    HTTP_STATUS,
    AppCallError,
    AppSubscription,
    AppUnavailable,
    BindingAnswer,
    BulkEntry,
    Metadata,
)
from runtime.app_http_shapes import (
    CLOUDEVENT_JSON,
    bulk_envelope,
    bulk_verdicts,
    cloud_event,
    event_verdict,
    field_of,
    route_path,
    subscriptions_of,
)

if TYPE_CHECKING:
    import aiohttp

    from handlers.pubsub_envelope import Event

log = logging.getLogger("l8.runtime.app")

_VERBS = ("GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH")
_BAD_METHOD = re.compile(r"[\x00-\x1f\x7f#?]")
_BAD_QUERY = re.compile(r"[\x00-\x20\x7f#]")
# Headers that belong to one HTTP hop, never passed between the app and the caller.
_HOP = frozenset(
    {"connection", "keep-alive", "transfer-encoding", "upgrade", "te", "trailer", "proxy-connection", "host"}
)


class HttpApp:
    """``close`` is idempotent; the connection pool opens on the first call."""

    def __init__(
        self,
        address: str,
        max_message_bytes: int = 16 << 20,
        api_token: str | None = None,
        *,
        bindings: Sequence[str] = (),
        health_path: str = "/healthz",
        concurrency: int = 256,
    ) -> None:
        self._address = address
        self._base = f"http://{address}"
        self._max = max_message_bytes
        self._token = api_token
        self._bindings = tuple(bindings)
        self._health_path = route_path(health_path)
        self._concurrency = concurrency
        self._session: aiohttp.ClientSession | None = None
        self._config_read = False
        self._warned = ""

    @property
    def address(self) -> str:
        return self._address

    @property
    def protocol(self) -> str:
        return "http"

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None:
            import aiohttp

            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._concurrency),
                auto_decompress=False,
                skip_auto_headers=("User-Agent", "Content-Type"),
            )
        return self._session

    async def _request(
        self,
        verb: str,
        path: str,
        *,
        timeout: float,
        body: bytes = b"",
        headers: dict[str, str] | None = None,
        query: str = "",
    ) -> tuple[int, bytes, list[tuple[str, str]]]:
        """One request to the app: (status, body, headers in lower case)."""
        import aiohttp
        from yarl import URL

        sent = dict(headers or {})
        if self._token:
            sent["dapr-api-token"] = self._token
        url = URL(self._base + path + (f"?{query}" if query else ""), encoded=True)
        what = f"{verb} {quote(path)}"
        try:
            async with self._open().request(
                verb,
                url,
                data=body if body or verb not in ("GET", "HEAD", "OPTIONS") else None,
                headers=sent,
                timeout=aiohttp.ClientTimeout(total=max(timeout, 0.001)),
                allow_redirects=False,
            ) as resp:
                data = await self._read(resp, what)
                answered = [(k.lower(), v) for k, v in resp.headers.items()]
                return resp.status, data, answered
        except AppCallError:
            raise
        except TimeoutError:
            raise AppCallError(Code.DEADLINE_EXCEEDED, f"the app did not answer {what} in {timeout:.3f}s") from None
        except aiohttp.ClientConnectionError as exc:
            raise AppUnavailable(f"the app at {self._address} is unavailable: {exc}") from None
        except aiohttp.ClientError as exc:
            raise AppCallError(Code.UNKNOWN, f"the app's answer to {what} is not valid HTTP: {exc}") from None

    async def _read(self, resp: aiohttp.ClientResponse, what: str) -> bytes:
        size = resp.content_length
        if size is not None and size > self._max:
            raise AppCallError(
                Code.RESOURCE_EXHAUSTED, f"the app answered {what} with {size} bytes; l8 takes {self._max}"
            )
        if size is not None:
            return await resp.read()
        data = bytearray()
        async for chunk in resp.content.iter_chunked(1 << 16):
            data += chunk
            if len(data) > self._max:
                raise AppCallError(
                    Code.RESOURCE_EXHAUSTED, f"the app answered {what} with over {self._max} bytes; l8 takes no more"
                )
        return bytes(data)

    # ---- invocations ----

    async def on_invoke(self, request: bytes, *, timeout: float, metadata: Metadata) -> tuple[bytes, Metadata]:
        from handlers.proto import runtime_pb2 as pb

        try:
            message = pb.CommonInvokeRequest.FromString(request)
        except Exception:  # protobuf's DecodeError
            raise AppCallError(Code.INVALID_ARGUMENT, "the invocation is not a valid InvokeRequest") from None
        method = message.method
        if _BAD_METHOD.search(method):
            raise AppCallError(
                Code.INVALID_ARGUMENT, f"the method {quote(method)} holds '#', '?' or a control character"
            )
        query = message.http_extension.querystring
        if _BAD_QUERY.search(query):
            raise AppCallError(
                Code.INVALID_ARGUMENT, f"the query string {quote(query)} holds a space or control character"
            )
        verb = pb.HTTPExtension.Verb.Name(message.http_extension.verb)
        if verb == "NONE":
            verb = "POST"  # a gRPC caller names no verb; daprd sends POST where none is known
        headers = _headers(metadata)
        if message.content_type:
            headers["content-type"] = message.content_type
        # As daprd does again before it calls the app: no '..' may reach above the app's root.
        clean = posixpath.normpath("/" + method.lstrip("/"))
        if method.endswith("/") and clean != "/":
            clean += "/"
        path = url_quote(clean, safe="/:@!$&'()*+,;=-._~%")
        status, body, answered = await self._request(
            verb, path, timeout=timeout, body=message.data.value, headers=headers, query=query
        )
        reply = pb.InvokeResponse(content_type=_header(answered, "content-type"))
        reply.data.value = body
        back: Metadata = [(k, v) for k, v in answered if k not in _HOP]
        del back[limits.MAP_ENTRIES - 1 :]
        back.append((HTTP_STATUS, str(status)))
        return reply.SerializeToString(), back

    async def call_grpc(
        self, method: str, request: bytes, *, timeout: float, metadata: Metadata
    ) -> tuple[bytes, Metadata]:
        raise AppCallError(Code.UNIMPLEMENTED, f"the app at {self._address} speaks HTTP: it serves no gRPC {method}")

    # ---- subscriptions and events ----

    async def list_subscriptions(self, *, timeout: float) -> list[AppSubscription] | None:
        if not self._config_read:
            await self._read_config(timeout)
        status, body, _ = await self._request("GET", "/dapr/subscribe", timeout=timeout)
        if status == 404:
            return None
        if not 200 <= status < 300:
            raise AppCallError(Code.UNAVAILABLE, f"GET /dapr/subscribe answered HTTP {status}")
        try:
            return subscriptions_of(body)
        except AppCallError as exc:
            if self._warned != exc.message:
                log.warning("the app's subscriptions cannot be read: %s", exc.message)
                self._warned = exc.message
            raise

    async def _read_config(self, timeout: float) -> None:
        status, body, _ = await self._request("GET", "/dapr/config", timeout=timeout)
        self._config_read = True
        if status != 200 or not body.strip():
            return
        try:
            config = orjson.loads(body)
        except orjson.JSONDecodeError:
            log.warning("GET /dapr/config of the app did not answer JSON; l8 goes on without it")
            return
        entities = field_of(config, "entities") if isinstance(config, dict) else None
        if entities:
            log.warning("the app declares actor types %s in /dapr/config; l8 has no actors", str(entities)[:200])

    async def on_event(self, event: Event, path: str, *, timeout: float, metadata: Metadata) -> int:
        headers = {"content-type": CLOUDEVENT_JSON, "pubsubname": event.pubsubname, **_headers(metadata)}
        body = orjson.dumps(cloud_event(event))
        status, answer, _ = await self._request("POST", route_path(path), timeout=timeout, body=body, headers=headers)
        if 200 <= status < 300:
            return event_verdict(answer)
        if status == 404:
            return DROP
        raise AppCallError(
            Code.UNKNOWN, f"POST {quote(route_path(path))} answered HTTP {status}: {quote(answer[:200])}"
        )

    async def on_bulk_event(
        self, pubsub: str, topic: str, path: str, entries: Sequence[BulkEntry], *, timeout: float
    ) -> dict[str, int]:
        body = bulk_envelope(pubsub, topic, entries)
        headers = {"content-type": "application/json", "pubsubname": pubsub}
        status, answer, _ = await self._request("POST", route_path(path), timeout=timeout, body=body, headers=headers)
        if status == 404:
            return {entry.entry_id: DROP for entry in entries}
        if not 200 <= status < 300:
            raise AppCallError(
                Code.UNKNOWN, f"POST {quote(route_path(path))} answered HTTP {status}: {quote(answer[:200])}"
            )
        return bulk_verdicts(answer)

    # ---- input bindings ----

    async def list_input_bindings(self, *, timeout: float) -> list[str] | None:
        taken = []
        for name in self._bindings:
            status, _, _ = await self._request("OPTIONS", "/" + name, timeout=timeout)
            if 200 <= status < 300 or status == 405:
                taken.append(name)
        return taken

    async def on_binding_event(
        self, name: str, data: bytes, metadata: dict[str, str], *, timeout: float
    ) -> BindingAnswer:
        headers = _headers(list(metadata.items()))
        headers["content-type"] = "application/json"
        status, answer, _ = await self._request("POST", "/" + name, timeout=timeout, body=data, headers=headers)
        if not 200 <= status < 300:
            raise AppCallError(Code.UNKNOWN, f"POST /{quote(name)} answered HTTP {status}: {quote(answer[:200])}")
        return BindingAnswer()

    # ---- health ----

    async def health(self, *, timeout: float) -> tuple[bool, str]:
        try:
            status, _, _ = await self._request("GET", self._health_path, timeout=timeout)
        except AppCallError as exc:
            return False, exc.message
        if 200 <= status < 300:
            return True, ""
        return False, f"GET {self._health_path} answered HTTP {status}"

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()


def _refused(path: str, status: int, answer: bytes) -> AppCallError:
    """An event the app answered with an error status: delivered again (never UNIMPLEMENTED, so
    a 501 retries as daprd retries it)."""
    return AppCallError(Code.UNKNOWN, f"POST {quote(route_path(path))} answered HTTP {status}: {quote(answer[:200])}")


def _headers(metadata: Metadata) -> dict[str, str]:
    """gRPC metadata as HTTP headers: binary values base64-encoded, as daprd sends them."""
    headers: dict[str, str] = {}
    for key, value in metadata:
        if key in _HOP or key.startswith(":"):
            continue
        headers[key] = base64.b64encode(value).decode() if isinstance(value, bytes) else value
    return headers


def _header(headers: list[tuple[str, str]], name: str) -> str:
    for key, value in headers:
        if key == name:
            return value
    return ""
