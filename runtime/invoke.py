"""Service invocation: method M of app X, called through the bus.

Caller side (``Invoker``): the fronts (native and Dapr ``InvokeService``, Dapr's HTTP
``/v1.0/invoke/{app}/method/{method}``) send Dapr's ``common.v1.InvokeRequest`` bytes on
``l8.<ns>.app.<X>.invoke``. The request's metadata travels in ``l8-md-*`` bus headers beside the
caller's app id, its deadline and its traceparent.

Target side (``InvokeServer``): every sidecar of app X that has an app callback answers that subject
in one queue group, so replicas of X share the load, and hands the bytes as they came to its app's
``AppCallback/OnInvoke``. The app's ``InvokeResponse`` bytes, or its gRPC status, are the reply.

The native ``InvokeServiceRequest``/``InvokeResponse`` are wire-compatible with Dapr's, so no
step of a gRPC invocation decodes the message: the fronts read the app id and the method off the
bytes and the target forwards them untouched.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import grpc
from nats.aio.msg import Msg

from bridges.errors import Code, quote
from bus import Bus, BusError
from bus.codec import HDR_APP_ID, HDR_TIMEOUT, HDR_TRACEPARENT, context_from_headers, error_headers
from bus.errors import BusTimeout, NoResponders, RemoteError
from bus.subjects import TOKEN, invoke_subject
from handlers import limits
from handlers.proto import runtime_pb2 as pb
from runtime import errors
from runtime.app_channel import AppChannel
from runtime.forward import FrontError, abort
from runtime.http import Request, Response
from runtime.routing import Malformed, bytes_field, string_field

log = logging.getLogger("l8.invoke")

ON_INVOKE = "/dapr.proto.runtime.v1.AppCallback/OnInvoke"
HTTP_PREFIX = "/v1.0/invoke/"
HDR_META = "l8-md-"  # bus headers that carry the caller's metadata to the app, and the app's back
# Dapr's names for the metadata that tells an app who called it.
CALLER_APP_ID = "dapr-caller-app-id"
CALLEE_APP_ID = "dapr-callee-app-id"

_ENVELOPE = 1024  # room for the subject and the fixed headers under the bus's payload limit
_SUBJECTS = 1024  # invocation subjects remembered; beyond that the memory starts again
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
        subject = self._subjects[app_id] = invoke_subject(self._ns, app_id)
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
        headers = {**metadata, HDR_APP_ID: self.app_id, HDR_TIMEOUT: str(max(1, int(timeout * 1000)))}
        if traceparent and len(traceparent) <= limits.TRACEPARENT:
            headers[HDR_TRACEPARENT] = traceparent
        size = len(request) + sum(len(k) + len(v) + 4 for k, v in metadata.items())
        limit = self._bus.max_payload - _ENVELOPE
        if size > limit:
            raise FrontError(
                Code.INVALID_ARGUMENT,
                f"the invocation is {size} bytes with its metadata; the bus carries at most {limit}",
            )
        started = time.monotonic()
        try:
            msg = await self._bus.request(subject, request, timeout=timeout, headers=headers)
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
        return Invocation(msg.data, metadata_of(msg.headers))


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


class InvokeServer:
    """Answers ``l8.<ns>.app.<app_id>.invoke`` with the app's OnInvoke; ``start``/``stop`` are idempotent.

    As in the worker host, the subscription callback only admits a message and starts a task for
    it; a semaphore bounds the invocations in flight, leaving the rest with the server meanwhile.
    """

    def __init__(
        self,
        bus: Bus,
        namespace: str,
        app_id: str,
        channel: AppChannel,
        *,
        concurrency: int = 256,
        default_timeout: float = 5.0,
    ) -> None:
        self._bus = bus
        self.subject = invoke_subject(namespace, app_id)
        self.app_id = app_id
        self._channel = channel
        self._sem = asyncio.Semaphore(concurrency)
        self._default_timeout = default_timeout
        self._subscription: Any = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._state = "new"

    async def start(self) -> None:
        if self._state != "new":
            return
        self._state = "running"
        # The queue group is the subject itself: every sidecar of this app joins the same one.
        self._subscription = await self._bus.subscribe(self.subject, self.subject, self._admit)
        log.debug("invocations of app %s answered on %s", self.app_id, self.subject)

    async def stop(self, timeout: float = 10.0) -> None:
        """Stop taking invocations, then let those in flight finish within ``timeout``."""
        if self._state != "running":
            self._state = "stopped"
            return
        self._state = "stopped"
        subscription, self._subscription = self._subscription, None
        began = time.monotonic()
        if subscription is not None:
            # Retire rather than unsubscribe: invocations the server already routed to this
            # process are served, not dropped to wait out their callers' deadlines.
            try:
                await self._bus.retire(subscription, timeout=timeout)
            except Exception as exc:  # a timeout, or the connection is already gone
                log.debug("draining %s failed: %s", self.subject, exc)
                with contextlib.suppress(Exception):
                    await subscription.unsubscribe()
        if self._tasks:
            left = max(timeout - (time.monotonic() - began), 0.1)
            _done, pending = await asyncio.wait(set(self._tasks), timeout=left)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)

    async def _admit(self, msg: Msg) -> None:
        await self._sem.acquire()
        task = asyncio.create_task(self._serve(msg))
        self._tasks.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._sem.release()

    async def _serve(self, msg: Msg) -> None:
        ctx = context_from_headers(msg.headers, self._default_timeout)
        remaining = ctx.remaining()
        if remaining <= 0:
            return  # the caller has already given up; calling the app would only add load
        metadata: Metadata = [(CALLEE_APP_ID, self.app_id), *metadata_of(msg.headers)]
        if ctx.app_id:
            metadata.append((CALLER_APP_ID, ctx.app_id))
        if ctx.traceparent and _printable(ctx.traceparent):
            metadata.append((HDR_TRACEPARENT, ctx.traceparent))
        try:
            call = self._channel.unary(ON_INVOKE)(msg.data, timeout=remaining, metadata=metadata)
            reply: bytes = await call
            answered = await call.initial_metadata()
        except grpc.aio.AioRpcError as exc:
            await self._reply_error(msg, *self._app_error(exc, remaining))
            return
        except Exception as exc:
            log.exception("invocation of app %s failed", self.app_id)
            await self._reply_error(msg, Code.INTERNAL, f"{type(exc).__name__}: {exc}")
            return
        if msg.reply:
            headers, _ = metadata_headers(answered or ())
            try:
                await self._bus.publish(msg.reply, reply, headers=headers or None)
            except Exception as exc:
                log.warning("could not send the reply of an invocation of app %s: %s", self.app_id, exc)

    def _app_error(self, exc: grpc.aio.AioRpcError, timeout: float) -> tuple[Code, str]:
        code = errors.code_of_grpc(exc.code())
        details = exc.details() or ""
        if code is Code.DEADLINE_EXCEEDED:
            return code, f"app {self.app_id!r} did not answer within the deadline ({timeout:.3f}s)"
        if code is Code.UNAVAILABLE:
            # Mostly the app is down or restarting; say where l8 looked for it.
            return code, f"app {self.app_id!r} at {self._channel.address} is unavailable: {details}"
        return code, details

    async def _reply_error(self, msg: Msg, code: Code, message: str) -> None:
        if not msg.reply:
            return
        try:
            await self._bus.publish(msg.reply, b"", headers=error_headers(code.value, message))
        except Exception as exc:
            log.warning("could not send the error reply of app %s: %s", self.app_id, exc)
