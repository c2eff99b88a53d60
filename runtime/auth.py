"""The API token of the fronts, the app token on callbacks, and TLS for the servers.

With a token configured (``DAPR_API_TOKEN`` or ``L8_API_TOKEN``, or ``server.api_token_file``),
every gRPC call must carry metadata ``dapr-api-token`` and every HTTP request the header of that
name, as Dapr asks; health endpoints are open (the Dapr SDK polls ``/v1.0/healthz/outbound``
without it, and so do orchestrators). A missing or wrong token answers UNAUTHENTICATED / 401.
Tokens are compared in constant time. ``APP_API_TOKEN`` travels the other way: l8 sends it to the
app as ``dapr-api-token`` on every callback, so the app can tell l8 from anyone else.
"""

from __future__ import annotations

import hmac
import json
import ssl
from collections.abc import Sequence
from typing import Any

import grpc

from runtime.config import ServerTlsConfig
from runtime.http import Request, Response

HEADER = "dapr-api-token"
_OPEN_GRPC = ("/grpc.health.v1.Health/",)
_OPEN_HTTP = ("/actuator/health/", "/v1.0/healthz")
_REFUSED = "the API token is missing or wrong: send it as dapr-api-token metadata"


def matches(given: str | bytes | None, token: bytes) -> bool:
    if given is None:
        return False
    raw = given.encode() if isinstance(given, str) else given
    return hmac.compare_digest(raw, token)


class TokenGate(grpc.GenericRpcHandler):  # type: ignore[misc]
    """The server's generic handlers, letting a call through only with the right ``dapr-api-token``.

    A generic handler rather than a ``grpc.aio`` interceptor: grpc.aio runs interceptors as a
    coroutine chain on every call, which cost about a tenth of a GetState's time; the lookup of a
    method's handler is synchronous and cheap. Health is open.
    """

    def __init__(self, handlers: Sequence[grpc.GenericRpcHandler], token: str) -> None:
        self._handlers = list(handlers)
        self._token = token.encode()
        self._refusals: dict[str, grpc.RpcMethodHandler] = {}

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        method: str = details.method
        allowed = method.startswith(_OPEN_GRPC)
        if not allowed:
            for key, value in details.invocation_metadata or ():
                if key == HEADER:
                    allowed = matches(value, self._token)
                    break
        for generic in self._handlers:
            handler = generic.service(details)
            if handler is not None:
                return handler if allowed else self._refusal(method, handler)
        return None

    def _refusal(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        found = self._refusals.get(method)
        if found is None:
            if len(self._refusals) >= 1024:  # proxied methods are any name a caller sends
                self._refusals.clear()
            found = self._refusals[method] = _refusal(handler)
        return found


def _refusal(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """A handler of the same shape as ``handler`` that answers UNAUTHENTICATED without reading."""

    async def unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, _REFUSED)

    async def streaming(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, _REFUSED)
        yield b""  # pragma: no cover - makes this an async generator

    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(streaming)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(unary)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(streaming)
    return grpc.unary_unary_rpc_method_handler(unary)


def http_refusal(request: Request, token: bytes | None) -> Response | None:
    """None when ``request`` may go on, else the 401 to answer."""
    if token is None or request.path.startswith(_OPEN_HTTP):
        return None
    if matches(request.headers.get(HEADER), token):
        return None
    body = {
        "errorCode": "ERR_UNAUTHORIZED",
        "message": "the API token is missing or wrong: send the dapr-api-token header",
    }
    return Response(401, json.dumps(body).encode(), {"content-type": "application/json"})


class _AppToken:
    """Adds ``dapr-api-token: <APP_API_TOKEN>`` to every call l8 makes to its app."""

    def __init__(self, token: str) -> None:
        self._pair = (HEADER, token)

    def _details(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        metadata = grpc.aio.Metadata(*(details.metadata or ()), self._pair)
        return grpc.aio.ClientCallDetails(
            details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
        )


class _UnaryUnary(_AppToken, grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._details(details), request)


class _UnaryStream(_AppToken, grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[misc]
    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._details(details), request)


class _StreamUnary(_AppToken, grpc.aio.StreamUnaryClientInterceptor):  # type: ignore[misc]
    async def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        return await continuation(self._details(details), requests)


class _StreamStream(_AppToken, grpc.aio.StreamStreamClientInterceptor):  # type: ignore[misc]
    async def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        return await continuation(self._details(details), requests)


def app_token_interceptors(token: str | None) -> list[Any]:
    if not token:
        return []
    return [cls(token) for cls in (_UnaryUnary, _UnaryStream, _StreamUnary, _StreamStream)]


# ---- TLS of the servers ----


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def grpc_credentials(tls: ServerTlsConfig) -> grpc.ServerCredentials:
    assert tls.cert_file and tls.key_file
    return grpc.ssl_server_credentials(
        [(_read(tls.key_file), _read(tls.cert_file))],
        root_certificates=_read(tls.client_ca_file) if tls.client_ca_file else None,
        require_client_auth=bool(tls.client_ca_file),
    )


def http_context(tls: ServerTlsConfig) -> ssl.SSLContext:
    assert tls.cert_file and tls.key_file
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tls.cert_file, tls.key_file)
    if tls.client_ca_file:
        context.load_verify_locations(tls.client_ca_file)
        context.verify_mode = ssl.CERT_REQUIRED
    return context
