"""Forwarding of request bytes from a gRPC front to the bus, and of errors back."""

from __future__ import annotations

import time
from typing import Any, NoReturn

import grpc

from bridges.errors import Code
from bus import Bus, BusError
from bus.codec import HDR_TIMEOUT, HDR_TRACEPARENT, request_headers
from bus.connection import ENVELOPE
from bus.subjects import request_subject
from runtime import errors
from runtime.config import Config
from runtime.routing import Malformed, string_field

_NAMES = {
    "state": "state store",
    "pubsub": "pub/sub component",
    "lock": "lock store",
    "configuration": "configuration store",
    "sequencer": "sequencer",
    "file": "file store",
    "secrets": "secret store",
    "bindings": "binding",
}


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
            raise FrontError(Code.INVALID_ARGUMENT, f"the {noun} name is empty; configured: {listed}")
        raise FrontError(Code.INVALID_ARGUMENT, f"{noun} {name!r} is not configured; configured: {listed}")

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
        for key, value in context.invocation_metadata() or ():
            if key == HDR_TRACEPARENT:
                return str(value)
        return None

    def headers(self, timeout: float, context: grpc.aio.ServicerContext[Any, Any]) -> dict[str, str]:
        headers = {HDR_TIMEOUT: str(max(1, int(timeout * 1000)))}
        for key, value in context.invocation_metadata() or ():
            if key == HDR_TRACEPARENT:
                headers[HDR_TRACEPARENT] = str(value)
        return headers

    async def forward(self, api: str, op: str, request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        try:
            name = string_field(request, 1)
        except Malformed as exc:
            await abort(context, Code.INVALID_ARGUMENT, f"the request is not a valid protobuf message: {exc}")
        try:
            component = self.component(api, name)
        except FrontError as exc:
            await abort(context, exc.code, exc.message)
        return await self.send(
            self.subject(api, component, op), request, context, f"{_NAMES.get(api, api)} {component!r}"
        )

    async def send(self, subject: str, payload: bytes, context: grpc.aio.ServicerContext[Any, Any], what: str) -> bytes:
        limit = self._bus.max_payload - ENVELOPE
        if len(payload) > limit:
            await abort(
                context, Code.INVALID_ARGUMENT, f"the request is {len(payload)} bytes; the bus carries at most {limit}"
            )
        timeout = self.timeout(context)
        started = time.monotonic()
        try:
            return await self._bus.call(subject, payload, timeout=timeout, headers=self.headers(timeout, context))
        except BusError as exc:
            code, message = errors.from_bus_error(exc, what)
            if code is Code.DEADLINE_EXCEEDED:
                message += f" after {time.monotonic() - started:.3f}s"
            await abort(context, code, message)

    async def call(
        self, subject: str, payload: bytes, *, timeout: float | None = None, traceparent: str | None = None, what: str
    ) -> bytes:
        """A request of the front's own (no gRPC call behind it); failures raise FrontError."""
        timeout = self._default_timeout if timeout is None else timeout
        try:
            return await self._bus.call(
                subject, payload, timeout=timeout, headers=request_headers(timeout, traceparent)
            )
        except BusError as exc:
            code, message = errors.from_bus_error(exc, what)
            raise FrontError(code, message) from None


class FrontError(Exception):
    def __init__(self, code: Code, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


async def abort(context: grpc.aio.ServicerContext[Any, Any], code: Code, message: str) -> NoReturn:
    await context.abort(errors.grpc_status(code), message)
    raise AssertionError("abort returns only by raising")  # pragma: no cover


def forwarding_handler(forwarder: Forwarder, api: str, op: str) -> grpc.RpcMethodHandler:
    """A unary handler taking and returning raw bytes: no decode, no re-encode at the edge."""

    async def call(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        return await forwarder.forward(api, op, request, context)

    return grpc.unary_unary_rpc_method_handler(call)
