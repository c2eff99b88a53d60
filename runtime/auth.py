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
from collections.abc import Awaitable, Callable
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


class ApiTokenInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Lets a call through only with the right ``dapr-api-token``; health is open."""

    def __init__(self, token: str) -> None:
        self._token = token.encode()

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method: str = details.method
        if method.startswith(_OPEN_GRPC):
            return await continuation(details)
        for key, value in details.invocation_metadata or ():
            if key == HEADER:
                if matches(value, self._token):
                    return await continuation(details)
                break
        handler = await continuation(details)
        return None if handler is None else _refusal(handler)


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
