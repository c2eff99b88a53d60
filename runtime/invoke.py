"""Service invocation: method M of app X, called through the bus.

Caller side (``Invoker``): the fronts (native and Dapr ``InvokeService``, Dapr's HTTP
``/v1.0/invoke/{app}/method/{method}``) send Dapr's ``common.v1.InvokeRequest`` bytes on
``l8.<ns>.app.<X>.invoke.<caller>``. The request's metadata travels in ``l8-md-*`` bus headers beside the
caller's app id, its deadline and its traceparent.

Target side (``InvokeHandler``, a route of the sidecar's worker host): every sidecar of app X that
has an app callback answers that subject in one queue group, so replicas of X share the load, and
hands the bytes as they came to its app's ``OnInvoke``. The app's ``InvokeResponse`` bytes, or its
status, are the reply.

The native ``InvokeServiceRequest``/``InvokeResponse`` are wire-compatible with Dapr's, so no
step of a gRPC invocation decodes the message: the fronts read the app id and the method off the
bytes and the target forwards them untouched.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import grpc

from bridges.errors import Code
from bus import Bus, BusError, Reply, RequestContext, Route
from bus.codec import HDR_TIMEOUT, HDR_TRACEPARENT
from bus.connection import ENVELOPE
from bus.errors import BusTimeout, NoResponders, RemoteError
from bus.subjects import TOKEN, invoke_queue, invoke_stem, invoke_subject, invoke_wildcard
from handlers.proto import runtime_pb2 as pb
from runtime import errors
from runtime.app_channel import AppCallError, AppChannel
from runtime.forward import FrontError, abort
from runtime.http import Request, Response
from runtime.routing import Malformed, bytes_field, string_field

log = logging.getLogger("l8.invoke")

HTTP_PREFIX = "/v1.0/invoke/"
HDR_META = "l8-md-"  # bus headers that carry the caller's metadata to the app, and the app's back
# Dapr's names for the metadata that tells an app who called it.
CALLER_APP_ID = "dapr-caller-app-id"
CALLEE_APP_ID = "dapr-callee-app-id"

_META_KEY = re.compile(r"^[0-9a-z_.-]+$")
# Connection-level HTTP headers and what gRPC or l8 set themselves never reach the app as metadata.
_NOT_METADATA = frozenset(
    {
        "host",
        "connection",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "upgrade",
        "te",
        "expect",
        "content-length",
        "content-type",
        "accept-encoding",
        "user-agent",
        "dapr-api-token",
        HDR_TRACEPARENT,
        CALLER_APP_ID,
        CALLEE_APP_ID,
    }
)
_VERBS = frozenset(pb.HTTPExtension.Verb.keys()) - {"NONE"}

Metadata = list[tuple[str, str | bytes]]


def _printable(value: str) -> bool:
    return value.isascii() and value.isprintable()


def metadata_headers(pairs: Iterable[tuple[str, str | bytes]]) -> tuple[dict[str, str], str | None]:
    """Bus headers for the metadata a caller may pass on to an app, and the traceparent among it."""
    headers: dict[str, str] = {}
    traceparent: str | None = None
    for raw_key, value in pairs:
        key = raw_key.lower()
        if key == HDR_TRACEPARENT and isinstance(value, str) and _printable(value):
            traceparent = value
            continue
        if key in _NOT_METADATA or key.startswith(("grpc-", ":", "l8-")) or not _META_KEY.match(key):
            continue
        if key.endswith("-bin"):
            raw = value if isinstance(value, bytes) else value.encode()
            headers[HDR_META + key] = base64.b64encode(raw).decode("ascii")
        elif isinstance(value, str) and _printable(value):
            headers[HDR_META + key] = value
    return headers, traceparent


def metadata_of(headers: dict[str, str] | None) -> Metadata:
    """The metadata that ``metadata_headers`` put in bus headers."""
    found: Metadata = []
    for key, value in (headers or {}).items():
        if not key.startswith(HDR_META):
            continue
        name = key[len(HDR_META) :]
        if name.endswith("-bin"):
            try:
                found.append((name, base64.b64decode(value, validate=True)))
            except ValueError:
                continue
        else:
            found.append((name, value))
    return found


@dataclass(slots=True, frozen=True)
class Invocation:
    """An app's answer: ``InvokeResponse`` bytes and the metadata the app sent with them."""

    data: bytes
    metadata: Metadata


class Invoker:
    """The caller side, shared by the fronts of one sidecar."""

    def __init__(self, bus: Bus, namespace: str, app_id: str, default_timeout: float) -> None:
        self._bus = bus
        self._ns = namespace
        self.app_id = app_id
        self.default_timeout = default_timeout
        self._subjects: dict[str, str] = {}

    def subject(self, app_id: str) -> str:
        subject = self._subjects.get(app_id)
        if subject is not None:
            return subject
        if not app_id:
            raise FrontError(Code.INVALID_ARGUMENT, "the app id is empty: say which app to invoke")
        if not TOKEN.match(app_id):
            raise FrontError(
                Code.INVALID_ARGUMENT, f"app id {app_id!r} is not valid: it may use only letters, digits, '_' and '-'"
            )
        subject = self._subjects[app_id] = invoke_subject(self._ns, app_id, self.app_id)
        return subject

    async def invoke(
        self,
        app_id: str,
        method: str,
        request: bytes,
        *,
        timeout: float | None,
        metadata: dict[str, str],
        traceparent: str | None,
    ) -> Invocation:
        """Send ``request`` (``InvokeRequest`` bytes for ``method``) to a sidecar of ``app_id``."""
        subject = self.subject(app_id)
        if not method:
            raise FrontError(Code.INVALID_ARGUMENT, f"the method name is empty: say which method of {app_id!r} to call")
        timeout = self.default_timeout if timeout is None else max(timeout, 0.001)
        headers = {**metadata, HDR_TIMEOUT: str(max(1, int(timeout * 1000)))}
        if traceparent:
            headers[HDR_TRACEPARENT] = traceparent
        size = len(request) + sum(len(k) + len(v) + 4 for k, v in metadata.items())
        limit = self._bus.max_payload - ENVELOPE
        if size > limit:
            raise FrontError(
                Code.INVALID_ARGUMENT,
                f"the invocation is {size} bytes with its metadata; the bus carries at most {limit}",
            )
        started = time.monotonic()
        try:
            reply = await self._bus.exchange(subject, request, timeout=timeout, headers=headers)
        except NoResponders:
            raise FrontError(
                Code.UNAVAILABLE,
                f"no sidecar of app {app_id!r} answers on {subject}: is the app running, with its sidecar on this bus "
                f"and namespace ({self._ns!r}) and an app callback (app.callback / --app-port)?",
            ) from None
        except BusTimeout:
            raise FrontError(
                Code.DEADLINE_EXCEEDED,
                f"app {app_id!r} did not answer method {method!r} within the deadline "
                f"({timeout:.3f}s; waited {time.monotonic() - started:.3f}s)",
            ) from None
        except RemoteError as exc:
            code, message = errors.from_bus_error(exc, f"app {app_id!r}")
            raise FrontError(code, message) from None
        except BusError as exc:
            code, message = errors.from_bus_error(exc, f"invoking app {app_id!r}")
            raise FrontError(code, message) from None
        return Invocation(reply.data, metadata_of(reply.headers))


# ---- fronts ----


def grpc_handler(invoker: Invoker) -> grpc.RpcMethodHandler:
    """``InvokeService`` of the native and the Dapr services: the same bytes on the wire."""

    async def call(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        try:
            app_id = string_field(request, 1)
            message = bytes_field(request, 3)
            method = string_field(message, 1)
        except Malformed as exc:
            await abort(context, Code.INVALID_ARGUMENT, f"the request is not a valid InvokeServiceRequest: {exc}")
        metadata, traceparent = metadata_headers(context.invocation_metadata() or ())
        try:
            result = await invoker.invoke(
                app_id,
                method,
                message,
                timeout=context.time_remaining(),
                metadata=metadata,
                traceparent=traceparent,
            )
        except FrontError as exc:
            await abort(context, exc.code, exc.message)
        if result.metadata:
            await context.send_initial_metadata(result.metadata)
        return result.data

    return grpc.unary_unary_rpc_method_handler(call)


def _http_error(code: Code, message: str) -> Response:
    body = json.dumps({"errorCode": "ERR_DIRECT_INVOKE", "message": message, "code": code.value}).encode()
    return Response(errors.http_status(code), body, {"content-type": "application/json"})


def http_route(invoker: Invoker) -> Callable[[Request], Awaitable[Response]]:
    """Dapr's ``/v1.0/invoke/{app}/method/{method}``: any verb; the query string, the body, its
    content type and the headers (as metadata) reach the app; the app's data and content type
    come back, and an app error as the HTTP status of its code."""

    async def route(request: Request) -> Response:
        app_id, sep, method = request.path[len(HTTP_PREFIX) :].partition("/method/")
        if not sep:
            return _http_error(
                Code.INVALID_ARGUMENT, f"{request.path} is not /v1.0/invoke/{{app-id}}/method/{{method}}"
            )
        if request.method not in _VERBS:
            return _http_error(Code.INVALID_ARGUMENT, f"HTTP verb {request.method} cannot be passed on to an app")
        content_type = request.headers.get("content-type", "")
        message = pb.CommonInvokeRequest(
            method=method,
            content_type=content_type,
            http_extension=pb.HTTPExtension(
                verb=pb.HTTPExtension.Verb.Value(request.method), querystring=request.query
            ),
        )
        message.data.value = request.body
        metadata, traceparent = metadata_headers(request.headers.items())
        try:
            result = await invoker.invoke(
                app_id,
                method,
                message.SerializeToString(),
                timeout=None,
                metadata=metadata,
                traceparent=traceparent,
            )
        except FrontError as exc:
            return _http_error(exc.code, exc.message)
        answer = pb.InvokeResponse.FromString(result.data)
        headers = {k: v for k, v in result.metadata if isinstance(v, str) and k not in _NOT_METADATA}
        if answer.content_type:
            headers["content-type"] = answer.content_type
        # A response to HEAD carries no body, whatever the app answered.
        return Response(200, b"" if request.method == "HEAD" else answer.data.value, headers)

    return route


# ---- target side ----


class InvokeHandler:
    """Answers the invocations of one app (a route of the sidecar's worker host) with its app's
    ``OnInvoke``: the bytes go through as they came, the caller's deadline bounds the app's call."""

    def __init__(self, app_id: str, channel: AppChannel) -> None:
        self.app_id = app_id
        self._channel = channel

    def route(self, namespace: str, concurrency: int) -> Route:
        """The route every sidecar of the app joins; its own bound is the app's concurrency."""
        return Route(
            invoke_wildcard(namespace, self.app_id),
            invoke_queue(namespace, self.app_id),
            self,
            f"invocations of {self.app_id}",
            local=invoke_stem(namespace, self.app_id),
            gate=asyncio.Semaphore(concurrency),
        )

    async def __call__(self, op: str, payload: bytes, ctx: RequestContext) -> Reply:
        remaining = ctx.remaining()
        metadata: list[tuple[str, str | bytes]] = [(CALLEE_APP_ID, self.app_id), *metadata_of(ctx.headers)]
        if ctx.app_id:
            metadata.append((CALLER_APP_ID, ctx.app_id))
        if ctx.traceparent and _printable(ctx.traceparent):
            metadata.append((HDR_TRACEPARENT, ctx.traceparent))
        try:
            reply, answered = await self._channel.on_invoke(payload, timeout=remaining, metadata=metadata)
        except AppCallError as exc:
            raise _AppAnswered(*self._app_error(exc, remaining)) from None
        headers, _ = metadata_headers(answered)
        return Reply(reply, headers or None)

    def _app_error(self, exc: AppCallError, timeout: float) -> tuple[Code, str]:
        if exc.code is Code.DEADLINE_EXCEEDED:
            return exc.code, f"app {self.app_id!r} did not answer within the deadline ({timeout:.3f}s)"
        if exc.code is Code.UNAVAILABLE:
            # Mostly the app is down or restarting; say where l8 looked for it.
            return exc.code, f"app {self.app_id!r} at {self._channel.address} is unavailable: {exc.message}"
        return exc.code, exc.message


class _AppAnswered(Exception):
    """The app's error, carried back to the caller with its code (the worker host sends it)."""

    def __init__(self, code: Code, message: str) -> None:
        super().__init__(message)
        self.code = code
