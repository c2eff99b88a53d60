"""Forwarding of request bytes from a gRPC front to the bus, and of errors back."""

from __future__ import annotations

import time
from typing import Any, NoReturn

import grpc

from bridges.errors import Code, quote
from bus import Bus, BusError
from bus.codec import HDR_TIMEOUT, HDR_TRACEPARENT, request_headers
from bus.connection import ENVELOPE
from bus.subjects import request_subject
from handlers import limits
from runtime import errors, observe
from runtime.config import Config
from runtime.routing import Malformed, bytes_field, name_field

_NAMES = {
    "state": "state store",
    "pubsub": "pub/sub component",
    "lock": "lock store",
    "configuration": "configuration store",
    "sequencer": "sequencer",
    "file": "file store",
    "secrets": "secret store",
    "bindings": "binding",
    "hello": "hello component",
}
# Fields the front bounds before forwarding, by (api, op): (field number, limit, name). Only what
# reaches a subject on its way to a backend: a topic becomes a JetStream subject token. Keys and
# the like are bounded by the handlers (handlers/limits.py), where every caller's requests pass.
_BOUNDED: dict[tuple[str, str], tuple[tuple[int, int, str], ...]] = {
    ("pubsub", "publish"): ((2, limits.TOPIC, "topic"),),
    ("pubsub", "bulkpublish"): ((2, limits.TOPIC, "topic"),),
}
# Dapr's ErrorInfo reasons for an unknown or unnamed component, by api.
NOT_FOUND = {
    "state": "DAPR_STATE_NOT_FOUND",
    "pubsub": "DAPR_PUBSUB_NOT_FOUND",
    "lock": "DAPR_LOCK_NOT_FOUND",
    "configuration": "DAPR_CONFIGURATION_STORE_NOT_FOUND",
}
NAME_EMPTY = {"pubsub": "DAPR_PUBSUB_NAME_EMPTY"}


class Forwarder:
    """Routes a request by its component name and sends its bytes, as they came, to a worker."""

    def __init__(self, bus: Bus, config: Config) -> None:
        self._bus = bus
        self._ns = config.namespace
        self.app_id = config.app.id
        self._default_timeout = config.bus.request_timeout
        self._components: dict[str, tuple[str, ...]] = {}
        for name, comp in config.components.items():
            self._components[comp.kind] = (*self._components.get(comp.kind, ()), name)
        self._subjects: dict[tuple[str, str, str], str] = {}

    def set_components(self, config: Config) -> None:
        """The components requests may name, from a config applied while l8 runs (runtime/reload.py)."""
        found: dict[str, tuple[str, ...]] = {}
        for name, comp in config.components.items():
            found[comp.kind] = (*found.get(comp.kind, ()), name)
        self._components = found

    @property
    def bus(self) -> Bus:
        return self._bus

    @property
    def namespace(self) -> str:
        return self._ns

    @property
    def default_timeout(self) -> float:
        return self._default_timeout

    def components(self, api: str) -> tuple[str, ...]:
        return self._components.get(api, ())

    def component(self, api: str, name: str) -> str:
        """``name`` if it is a configured component of ``api``, else INVALID_ARGUMENT listing them."""
        known = self._components.get(api, ())
        if name in known:
            return name
        noun = _NAMES.get(api, api)
        listed = ", ".join(known) if known else "none"
        if not name:
            reason = NAME_EMPTY.get(api) or NOT_FOUND.get(api, "")
            raise FrontError(
                Code.INVALID_ARGUMENT, f"the {noun} name is empty; configured: {listed}", reason, (api, "")
            )
        raise FrontError(
            Code.INVALID_ARGUMENT,
            f"{noun} {quote(name)} is not configured; configured: {listed}",
            NOT_FOUND.get(api, ""),
            (api, name[:64]),
        )

    def subject(self, api: str, component: str, op: str) -> str:
        key = (api, component, op)
        subject = self._subjects.get(key)
        if subject is None:
            subject = self._subjects[key] = request_subject(self._ns, api, component, op, self.app_id)
        return subject

    def timeout(self, context: grpc.aio.ServicerContext[Any, Any]) -> float:
        remaining = context.time_remaining()
        return self._default_timeout if remaining is None else max(remaining, 0.001)

    @staticmethod
    def traceparent(context: grpc.aio.ServicerContext[Any, Any]) -> str | None:
        return traceparent_of(context)

    def headers(self, timeout: float, context: grpc.aio.ServicerContext[Any, Any]) -> dict[str, str]:
        headers = {HDR_TIMEOUT: str(max(1, int(timeout * 1000)))}
        traceparent = traceparent_of(context)
        if traceparent is not None:
            headers[HDR_TRACEPARENT] = traceparent
        return headers

    async def forward(
        self,
        api: str,
        op: str,
        request: bytes,
        context: grpc.aio.ServicerContext[Any, Any],
        name_at: tuple[int, ...] = (1,),
    ) -> bytes:
        """``name_at`` is the path of field numbers to the component name (nested messages first)."""
        try:
            name = name_field(request, name_at)
        except Malformed as exc:
            await abort(context, Code.INVALID_ARGUMENT, f"the request is not a valid protobuf message: {exc}")
        try:
            component = self.component(api, name)
            for number, limit, field in _BOUNDED.get((api, op), ()):
                if len(bytes_field(request, number)) > limit:
                    raise FrontError(Code.INVALID_ARGUMENT, f"the {field} is longer than {limit} bytes")
        except FrontError as exc:
            await abort(context, exc.code, exc.message, exc.reason, exc.resource)
        except Malformed as exc:
            await abort(context, Code.INVALID_ARGUMENT, f"the request is not a valid protobuf message: {exc}")
        return await self.send(
            self.subject(api, component, op),
            request,
            context,
            f"{_NAMES.get(api, api)} {component!r}",
            (api, component),
        )

    async def send(
        self,
        subject: str,
        payload: bytes,
        context: grpc.aio.ServicerContext[Any, Any],
        what: str,
        resource: tuple[str, str] = ("", ""),
    ) -> bytes:
        limit = self._bus.max_payload - ENVELOPE
        if len(payload) > limit:
            await abort(
                context, Code.INVALID_ARGUMENT, f"the request is {len(payload)} bytes; the bus carries at most {limit}"
            )
        timeout = self.timeout(context)
        started = time.monotonic()
        observer = observe.OBSERVER
        try:
            if observer is None:
                return await self._bus.call(subject, payload, timeout=timeout, headers=self.headers(timeout, context))
            data: bytes = await observer.call(
                self._bus, subject, payload, timeout=timeout, headers=self.headers(timeout, context),
                api=resource[0], component=resource[1],
            )  # fmt: skip
            return data
        except BusError as exc:
            code, message, reason = errors.failure(exc, what)
            if code is Code.DEADLINE_EXCEEDED:
                message += f" after {time.monotonic() - started:.3f}s"
            await abort(context, code, message, reason, resource)

    async def call(
        self,
        subject: str,
        payload: bytes,
        *,
        timeout: float | None = None,
        traceparent: str | None = None,
        what: str,
        resource: tuple[str, str] = ("", ""),
    ) -> bytes:
        """A request of the front's own (no gRPC call behind it, or an HTTP one); failures raise
        FrontError."""
        timeout = self._default_timeout if timeout is None else timeout
        limit = self._bus.max_payload - ENVELOPE
        if len(payload) > limit:
            raise FrontError(
                Code.INVALID_ARGUMENT, f"the request is {len(payload)} bytes; the bus carries at most {limit}"
            )
        observer = observe.OBSERVER
        try:
            if observer is None:
                return await self._bus.call(
                    subject, payload, timeout=timeout, headers=request_headers(timeout, traceparent)
                )
            found: bytes = await observer.call(
                self._bus, subject, payload, timeout=timeout, headers=request_headers(timeout, traceparent),
                api=resource[0], component=resource[1],
            )  # fmt: skip
            return found
        except BusError as exc:
            code, message, reason = errors.failure(exc, what)
            raise FrontError(code, message, reason, resource) from None


def traceparent_of(context: grpc.aio.ServicerContext[Any, Any]) -> str | None:
    """The caller's traceparent, passed on as it came; one longer than any valid one is dropped."""
    for key, value in context.invocation_metadata() or ():
        if key == HDR_TRACEPARENT and isinstance(value, str):
            return value if len(value) <= limits.TRACEPARENT and value.isprintable() else None
    return None


class FrontError(Exception):
    """A failure a front reports: its code, message, and Dapr's reason and resource when known."""

    def __init__(self, code: Code, message: str, reason: str = "", resource: tuple[str, str] = ("", "")) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.reason = reason
        self.resource = resource


async def parse(message: Any, data: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
    """``message.FromString(data)``; bytes that are not such a message end the call INVALID_ARGUMENT."""
    try:
        return message.FromString(data)
    except Exception as exc:  # protobuf's DecodeError, and the message classes are untyped
        await abort(context, Code.INVALID_ARGUMENT, f"the request is not a valid {message.DESCRIPTOR.name}: {exc}")


async def abort(
    context: grpc.aio.ServicerContext[Any, Any],
    code: Code,
    message: str,
    reason: str = "",
    resource: tuple[str, str] = ("", ""),
) -> NoReturn:
    """End the call with ``code``; with a reason, Dapr's rich details go in the trailers."""
    if reason:
        details = errors.status_details(code, message, reason, resource=resource)
        await context.abort(errors.grpc_status(code), message, ((errors.DETAILS_KEY, details),))
    else:
        await context.abort(errors.grpc_status(code), message)
    raise AssertionError("abort returns only by raising")  # pragma: no cover


def forwarding_handler(
    forwarder: Forwarder, api: str, op: str, name_at: tuple[int, ...] = (1,)
) -> grpc.RpcMethodHandler:
    """A unary handler taking and returning raw bytes: no decode, no re-encode at the edge."""

    async def call(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        return await forwarder.forward(api, op, request, context, name_at)

    return grpc.unary_unary_rpc_method_handler(call)
