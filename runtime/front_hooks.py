"""The fronts' per-call hooks: flow control, a SERVER span, metrics and the request dump, composed
once per gRPC method (or HTTP route) from the ones that are on.

With all of them off nothing is installed: the gRPC server gets its handlers as they are and the
HTTP router its routes. With any on, ``GrpcHooks`` stands in front of the server's generic handlers
and hands out each method's wrapped handler (built on the method's first call, then kept), and
``wrap_http`` replaces each route's handler once.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc

from bridges.errors import Code
from runtime.flow_control import FlowControl, Limited
from runtime.http import Request, Response, error_response

if TYPE_CHECKING:
    from runtime.dapr_http.router import Handler as HttpHandler
    from runtime.dapr_http.router import Params
    from runtime.dapr_http.router import Route as HttpRoute
    from runtime.dump import Dump
    from runtime.metrics import Metrics
    from runtime.tracing import Tracer


@dataclass(slots=True)
class Hooks:
    tracer: Tracer | None = None
    metrics: Metrics | None = None
    flow: FlowControl | None = None
    dump: Dump | None = None

    @property
    def any(self) -> bool:
        return any((self.tracer, self.metrics, self.flow, self.dump))


def _code(context: Any, exc: BaseException | None) -> str:
    if isinstance(exc, asyncio.CancelledError):
        return "CANCELLED"
    code = context.code()
    if code is None:
        return "UNKNOWN" if exc is not None else "OK"
    return str(code.name)


class GrpcHooks(grpc.GenericRpcHandler):  # type: ignore[misc]
    """The server's generic handlers, each method's handler wrapped in the hooks that are on."""

    def __init__(self, handlers: Sequence[grpc.GenericRpcHandler], hooks: Hooks) -> None:
        self._handlers = list(handlers)
        self._hooks = hooks
        self._wrapped: dict[str, grpc.RpcMethodHandler] = {}

    def add(self, handlers: Sequence[grpc.GenericRpcHandler]) -> None:
        self._handlers.extend(handlers)

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        method: str = details.method
        found = self._wrapped.get(method)
        if found is not None:
            return found
        for generic in self._handlers:
            handler = generic.service(details)
            if handler is not None:
                # Only registered methods get here, so this holds one entry per method of l8's services.
                found = self._wrapped[method] = wrap_grpc(method, handler, self._hooks)
                return found
        return None


def wrap_grpc(method: str, handler: grpc.RpcMethodHandler, hooks: Hooks) -> grpc.RpcMethodHandler:
    if handler.request_streaming or handler.response_streaming:
        return _wrap_stream(method, handler, hooks)
    tracer, metrics, flow, dump = hooks.tracer, hooks.metrics, hooks.flow, hooks.dump
    behavior = handler.unary_unary
    in_flight = metrics.in_flight("grpc") if metrics is not None else None
    service, _, rpc = method[1:].partition("/")
    span_attributes = {"rpc.system": "grpc", "rpc.service": service, "rpc.method": rpc, "dapr.protocol": "grpc"}
    if tracer is not None:
        from runtime.tracing import carrier_of, fail
    deserialize = handler.request_deserializer
    captures = dump is not None and dump.records(method)
    if captures and deserialize is not None:
        # The dump keeps the bytes as they came; the handler still gets its message.
        inner_deserialize = deserialize

        def deserialize(raw: bytes) -> tuple[bytes, Any]:
            return raw, inner_deserialize(raw)

    async def unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        began = time.perf_counter()
        failure: BaseException | None = None
        raw = request
        if captures and handler.request_deserializer is not None:
            raw, request = request
        if in_flight is not None:
            in_flight.inc()
        try:
            if flow is not None:
                await _admit_grpc(flow, metrics, method, context)
            if tracer is None:
                return await behavior(request, context)
            carrier = carrier_of(context.invocation_metadata() or ())
            with tracer.span(method, "server", carrier=carrier, attributes=span_attributes) as span:
                try:
                    return await behavior(request, context)
                except BaseException as exc:
                    fail(span, _code(context, exc), context.details() or str(exc))
                    raise
        except BaseException as exc:
            failure = exc
            raise
        finally:
            code = _code(context, failure)
            elapsed = time.perf_counter() - began
            if metrics is not None:
                metrics.rpc(method, code, elapsed)
                if in_flight is not None:
                    in_flight.dec()
            if captures and dump is not None:
                dump.record(method, context.invocation_metadata() or (), raw, elapsed, code)

    return grpc.unary_unary_rpc_method_handler(
        unary, request_deserializer=deserialize, response_serializer=handler.response_serializer
    )


async def _admit_grpc(flow: FlowControl, metrics: Metrics | None, method: str, context: Any) -> None:
    bucket = flow.bucket(method)
    if bucket is None:
        return
    try:
        queued = await flow.admit(bucket)
    except Limited as exc:
        if metrics is not None:
            metrics.flow_rejected(method)
        from runtime.errors import grpc_status

        await context.abort(grpc_status(Code.RESOURCE_EXHAUSTED), str(exc))
        raise AssertionError("abort returns only by raising") from None  # pragma: no cover
    if queued and metrics is not None:
        metrics.flow_queued(method)


def _wrap_stream(method: str, handler: grpc.RpcMethodHandler, hooks: Hooks) -> grpc.RpcMethodHandler:
    """Streams get flow control at their start, a span over their life (not made current: it
    would have to cross the generator's yields) and one count when they end."""
    tracer, metrics, flow = hooks.tracer, hooks.metrics, hooks.flow
    if handler.request_streaming and handler.response_streaming:
        behavior, make = handler.stream_stream, grpc.stream_stream_rpc_method_handler
    elif handler.request_streaming:
        behavior, make = handler.stream_unary, grpc.stream_unary_rpc_method_handler
    else:
        behavior, make = handler.unary_stream, grpc.unary_stream_rpc_method_handler

    def begin(context: Any) -> Any:
        if tracer is None:
            return None
        from runtime.tracing import carrier_of

        carrier = carrier_of(context.invocation_metadata() or ())
        return tracer.span(method, "server", carrier=carrier, attributes={"rpc.system": "grpc"}).span

    def end(span: Any, context: Any, began: float, failure: BaseException | None) -> None:
        code = _code(context, failure)
        if span is not None:
            if code != "OK":
                from runtime.tracing import fail

                fail(span, code, context.details() or "")
            span.end()
        if metrics is not None:
            metrics.rpc(method, code, time.perf_counter() - began)

    if inspect.isasyncgenfunction(behavior):

        async def streaming(request: Any, context: Any) -> AsyncIterator[Any]:
            began, failure = time.perf_counter(), None
            span = None
            try:
                if flow is not None:
                    await _admit_grpc(flow, metrics, method, context)
                span = begin(context)
                async for item in behavior(request, context):
                    yield item
            except BaseException as exc:
                failure = exc
                raise
            finally:
                end(span, context, began, failure)

        return make(streaming, handler.request_deserializer, handler.response_serializer)

    async def call(request: Any, context: Any) -> Any:
        began, failure = time.perf_counter(), None
        span = None
        try:
            if flow is not None:
                await _admit_grpc(flow, metrics, method, context)
            span = begin(context)
            return await behavior(request, context)
        except BaseException as exc:
            failure = exc
            raise
        finally:
            end(span, context, began, failure)

    return make(call, handler.request_deserializer, handler.response_serializer)


# ---- HTTP ----


def http_label(route: HttpRoute, method: str) -> str:
    return f"{method} /{'/'.join(route.segments)}"


def wrap_http(route: HttpRoute, hooks: Hooks) -> HttpHandler:
    """``route``'s handler in the hooks that are on; the route pattern (never the path) names it."""
    tracer, metrics, flow = hooks.tracer, hooks.metrics, hooks.flow
    handler = route.handler
    pattern = f"/{'/'.join(route.segments)}"
    labels = {m: f"{m} {pattern}" for m in route.methods}
    any_verb = f"* {pattern}"
    in_flight = metrics.in_flight("http") if metrics is not None else None
    if tracer is not None:
        from runtime.tracing import carrier_of, fail

    async def serve(request: Request, params: Params) -> Response:
        began = time.perf_counter()
        label = labels.get(request.method) or f"{request.method[:16]} {pattern}"
        status = 500
        if in_flight is not None:
            in_flight.inc()
        try:
            if flow is not None:
                bucket = flow.bucket(label, any_verb)
                if bucket is not None:
                    try:
                        queued = await flow.admit(bucket)
                    except Limited as exc:
                        if metrics is not None:
                            metrics.flow_rejected(label)
                        status = 429
                        return error_response(429, "ERR_TOO_MANY_REQUESTS", str(exc))
                    if queued and metrics is not None:
                        metrics.flow_queued(label)
            if tracer is None:
                response = await handler(request, params)
            else:
                attributes = {"http.request.method": request.method, "http.route": pattern, "dapr.protocol": "http"}
                with tracer.span(
                    label, "server", carrier=carrier_of(request.headers.items()), attributes=attributes
                ) as span:
                    response = await handler(request, params)
                    span.set_attribute("http.response.status_code", response.status)
                    if response.status >= 500:
                        fail(span, response.status, "")
            status = response.status
            return response
        finally:
            if metrics is not None:
                metrics.http(label, status, time.perf_counter() - began)
                if in_flight is not None:
                    in_flight.dec()

    return serve
