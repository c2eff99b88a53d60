"""Service invocation: method M of app X, called through the bus.

Caller side (``Invoker``): the fronts (native and Dapr ``InvokeService``, Dapr's HTTP
``/v1.0/invoke/{app}/method/{method}`` in runtime/dapr_http/invoke.py) send Dapr's ``common.v1.InvokeRequest`` bytes on
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
import logging
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, NoReturn

import grpc

from bridges.errors import Code, quote
from bus import Bus, BusError, Reply, RequestContext, Route
from bus.codec import HDR_TIMEOUT, HDR_TRACEPARENT
from bus.connection import ENVELOPE
from bus.errors import BusTimeout, NoResponders, RemoteError
from bus.subjects import TOKEN, invoke_queue, invoke_stem, invoke_subject, invoke_wildcard
from handlers import limits
from runtime import errors, observe
from runtime.app_channel import HTTP_STATUS, AppCallError, AppChannel
from runtime.forward import FrontError, abort
from runtime.routing import Malformed, bytes_field, string_field

log = logging.getLogger("l8.invoke")

HDR_META = "l8-md-"  # bus headers that carry the caller's metadata to the app, and the app's back
# Dapr's names for the metadata that tells an app who called it.
CALLER_APP_ID = "dapr-caller-app-id"
CALLEE_APP_ID = "dapr-callee-app-id"

_SUBJECTS = 1024  # invocation subjects remembered; beyond that the memory starts again
_META_KEY = re.compile(r"^[0-9a-z_.-]+$")
# Connection-level HTTP headers and what gRPC or l8 set themselves never reach the app as metadata.
NOT_METADATA = frozenset(
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

Metadata = list[tuple[str, str | bytes]]
# gRPC proxying: a request on the invoke subject with this header is the caller's own gRPC call,
# bytes as they came, for the app's method of that name (not an InvokeRequest).
HDR_GRPC_METHOD = "l8-grpc-method"
_GRPC_METHOD = re.compile(r"^/[A-Za-z_][A-Za-z0-9_.]*/[A-Za-z_][A-Za-z0-9_]*$")


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
        if key in NOT_METADATA or key.startswith(("grpc-", ":", "l8-")) or not _META_KEY.match(key):
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
        if len(app_id) > limits.APP_ID:
            raise FrontError(
                Code.INVALID_ARGUMENT,
                f"app id {quote(app_id)} is {len(app_id)} characters; at most {limits.APP_ID} are allowed",
            )
        if not TOKEN.match(app_id):
            raise FrontError(
                Code.INVALID_ARGUMENT,
                f"app id {quote(app_id)} is not valid: it may use only letters, digits, '_' and '-'",
            )
        if len(self._subjects) >= _SUBJECTS:
            self._subjects.clear()
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
        grpc_method: bool = False,
    ) -> Invocation:
        """Send ``request`` (``InvokeRequest`` bytes for ``method``) to a sidecar of ``app_id``; with
        ``grpc_method``, ``request`` is a proxied gRPC call's message for the app's ``method``."""
        subject = self.subject(app_id)
        if not method:
            raise FrontError(Code.INVALID_ARGUMENT, f"the method name is empty: say which method of {app_id!r} to call")
        if len(method) > limits.METHOD // 4 and limits.size(method) > limits.METHOD:
            raise FrontError(Code.INVALID_ARGUMENT, f"the method {quote(method)} is longer than {limits.METHOD} bytes")
        if len(metadata) > limits.MAP_ENTRIES:
            raise FrontError(
                Code.INVALID_ARGUMENT,
                f"the call carries {len(metadata)} metadata entries; at most {limits.MAP_ENTRIES} are passed on",
            )
        for key, value in metadata.items():
            if len(key) > limits.MAP_KEY + len(HDR_META) or len(value) > limits.MAP_VALUE:
                raise FrontError(
                    Code.INVALID_ARGUMENT,
                    f"metadata {quote(key[len(HDR_META) :])} is longer than {limits.MAP_KEY} bytes "
                    f"or its value longer than {limits.MAP_VALUE}",
                )
        timeout = self.default_timeout if timeout is None else max(timeout, 0.001)
        headers = {**metadata, HDR_TIMEOUT: str(max(1, int(timeout * 1000)))}
        if grpc_method:
            if not _GRPC_METHOD.match(method):
                raise FrontError(
                    Code.INVALID_ARGUMENT, f"{quote(method)} is not a gRPC method name (/package.Service/Method)"
                )
            headers[HDR_GRPC_METHOD] = method
        if traceparent and len(traceparent) <= limits.TRACEPARENT:
            headers[HDR_TRACEPARENT] = traceparent
        size = len(request) + sum(len(k) + len(v) + 4 for k, v in metadata.items())
        limit = self._bus.max_payload - ENVELOPE
        if size > limit:
            raise FrontError(
                Code.INVALID_ARGUMENT,
                f"the invocation is {size} bytes with its metadata; the bus carries at most {limit}",
            )
        started = time.monotonic()
        observer = observe.OBSERVER
        try:
            if observer is None:
                reply = await self._bus.exchange(subject, request, timeout=timeout, headers=headers)
            else:
                reply = await observer.call(
                    self._bus, subject, request, timeout=timeout, headers=headers, api="app", component=app_id,
                    exchange=True,
                )  # fmt: skip
        except NoResponders:
            raise FrontError(
                Code.UNAVAILABLE,
                f"no sidecar of app {app_id!r} answers on {subject}: is the app running, with its sidecar on this bus "
                f"and namespace ({self._ns!r}) and an app callback (app.callback / --app-port)?",
            ) from None
        except BusTimeout:
            raise FrontError(
                Code.DEADLINE_EXCEEDED,
                f"app {app_id!r} did not answer method {quote(method)} within the deadline "
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
        status = http_status_of(result.metadata)
        if status is not None and not 200 <= status < 300:
            await _abort_http(context, status, result.data)
        return result.data

    return grpc.unary_unary_rpc_method_handler(call)


def http_status_of(metadata: Metadata) -> int | None:
    """The status an HTTP app answered with (``dapr-http-status`` beside its reply), if any."""
    for key, value in metadata:
        if key == HTTP_STATUS and isinstance(value, str) and value.isdigit() and len(value) == 3:
            return int(value)
    return None


async def _abort_http(context: grpc.aio.ServicerContext[Any, Any], status: int, reply: bytes) -> NoReturn:
    """An HTTP app's error status, as daprd gives it to gRPC callers: the code it maps to, the
    status text, and an ErrorInfo with the status and the start of the app's answer."""
    from http import HTTPStatus

    from handlers.proto import runtime_pb2 as pb

    code = errors.code_of_http_app(status)
    try:
        text = HTTPStatus(status).phrase
    except ValueError:
        text = f"HTTP {status}"
    try:
        body = pb.InvokeResponse.FromString(reply).data.value.decode(errors="replace")
    except Exception:  # protobuf's DecodeError: a reply that is not one carries no detail
        body = ""
    details = errors.status_details(code, text, text, {"http.code": str(status), "http.error_message": body[:63]})
    await context.abort(errors.grpc_status(code), text, ((errors.DETAILS_KEY, details),))
    raise AssertionError("abort returns only by raising")  # pragma: no cover


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
        grpc_method = ctx.headers.get(HDR_GRPC_METHOD) if ctx.headers else None
        try:
            if grpc_method is not None:
                reply, answered = await self._channel.call_grpc(
                    grpc_method, payload, timeout=remaining, metadata=metadata
                )
            else:
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
