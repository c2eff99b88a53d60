"""The process's observer: spans and metrics at every hop a request or an event takes behind the
fronts (the fronts' own hooks are in runtime/front_hooks.py).

``OBSERVER`` is None unless tracing or metrics is on; the sidecar sets it at start and clears it
at stop. Where a hop has a wrapper (a worker's handler, an app channel, the events' router) the
wrapper is installed only then, so nothing of this runs while both are off; the few call sites
that are not wrapped (a front's bus request, an invocation, a wasm host call) test ``OBSERVER``
once.

The hops, each one span (names after Dapr's where Dapr has one):
- a front's request on the bus: CLIENT ``<api>/<component>/<op>`` (``CallLocal/<app>`` for an
  invocation), its context injected into the bus headers;
- the worker that answers it: SERVER, same name, its context handed on (``ctx.traceparent``) so a
  published event's envelope carries it;
- the pub/sub worker delivering an event: CONSUMER ``pubsub/<topic>``, child of the event's
  ``traceparent``, injected into the headers of the event's bus hop;
- the sidecar receiving it: SERVER ``events/<pubsub>/<topic>``;
- the call to the app: CLIENT ``/dapr.proto.runtime.v1.AppCallback/<rpc>``, its ``traceparent`` in
  the call's metadata.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

from bus import BusError, Reply, RequestContext, subjects
from bus.codec import HDR_TRACEPARENT
from handlers.pubsub_delivery import Delivery, Outcome
from handlers.pubsub_specs import Spec
from runtime import errors
from runtime.app_channel import AppChannel, AppSubscription, BindingAnswer, BulkEntry, Metadata
from runtime.routing import Malformed, bytes_field, count_field

if TYPE_CHECKING:
    from bus import Bus
    from runtime.metrics import Metrics
    from runtime.tracing import Tracer

Handler = Callable[[str, bytes, RequestContext], Awaitable["bytes | Reply"]]
_OUTCOMES = {o: o.name.lower() for o in Outcome}


class Observer:
    def __init__(self, tracer: Tracer | None, metrics: Metrics | None) -> None:
        self.tracer = tracer
        self.metrics = metrics

    def inject(self, headers: dict[str, str]) -> None:
        if self.tracer is not None:
            self.tracer.inject(headers)

    # ---- a front's request on the bus ----

    async def call(
        self,
        bus: Bus,
        subject: str,
        payload: bytes,
        *,
        timeout: float,
        headers: dict[str, str],
        api: str,
        component: str,
        op: str = "",
        exchange: bool = False,
    ) -> Any:
        # bytes from ``call``, a Reply from ``exchange``.
        """``bus.call`` (``bus.exchange`` with ``exchange``) as one CLIENT span, timed per api and component."""
        began = time.perf_counter()
        code = "OK"
        tracer = self.tracer
        if not api:
            # A front's own request (an announcement, an apply): the subject names the api and component.
            parts = subject.split(".")
            api, component = (parts[2], parts[3]) if len(parts) > 4 else ("bus", "")
        try:
            if tracer is None:
                if exchange:
                    return await bus.exchange(subject, payload, timeout=timeout, headers=headers)
                return await bus.call(subject, payload, timeout=timeout, headers=headers)
            name = f"{api}/{component}/{op or subjects.op_of(subject)}" if api != "app" else f"CallLocal/{component}"
            attributes = {
                "messaging.system": "nats",
                "messaging.destination.name": subject,
                "l8.api": api,
                "l8.component": component,
            }
            with tracer.span(name, "client", attributes=attributes):
                tracer.inject(headers)
                if exchange:
                    return await bus.exchange(subject, payload, timeout=timeout, headers=headers)
                return await bus.call(subject, payload, timeout=timeout, headers=headers)
        except BusError as exc:
            code = errors.failure(exc, "")[0].value
            raise
        finally:
            if self.metrics is not None:
                self.metrics.bus(api, component, code, time.perf_counter() - began)

    # ---- a worker's handler ----

    def handler(self, api: str, component: str, handler: Handler) -> Handler:
        """``handler`` of one component, as a SERVER span per request and counted per code."""
        tracer, metrics = self.tracer, self.metrics
        in_flight = metrics.worker_in_flight(api, component) if metrics is not None else None
        counts_events = metrics is not None and api == "pubsub"

        async def serve(op: str, payload: bytes, ctx: RequestContext) -> bytes | Reply:
            began = time.perf_counter()
            code = "OK"
            if in_flight is not None:
                in_flight.inc()
            try:
                if tracer is None:
                    return await handler(op, payload, ctx)
                attributes = {"l8.api": api, "l8.component": component, "l8.op": op, "l8.caller": ctx.app_id}
                with tracer.span(f"{api}/{component}/{op}", "server", carrier=ctx.headers, attributes=attributes):
                    _hand_on(tracer, ctx)
                    return await handler(op, payload, ctx)
            except Exception as exc:
                found = getattr(exc, "code", None)
                code = str(getattr(found, "value", found)) if found is not None else "INTERNAL"
                raise
            finally:
                if metrics is not None:
                    metrics.worker(api, component, code, time.perf_counter() - began)
                    if in_flight is not None:
                        in_flight.dec()
                    if counts_events and op in ("publish", "bulkpublish"):
                        _count_published(metrics, component, op, payload, code)

        return serve

    def route(self, name: Callable[[RequestContext], str], handler: Handler, kind: str = "server") -> Handler:
        """A route's handler (an app's events or invocations, a function's) as one span per request."""
        tracer = self.tracer
        if tracer is None:
            return handler

        async def serve(op: str, payload: bytes, ctx: RequestContext) -> bytes | Reply:
            with tracer.span(name(ctx), kind, carrier=ctx.headers, attributes={"l8.caller": ctx.app_id}):
                _hand_on(tracer, ctx)
                return await handler(op, payload, ctx)

        return serve

    # ---- the app ----

    def app(self, channel: AppChannel) -> AppChannel:
        return channel if self.tracer is None else TracedApp(channel, self.tracer)


def _hand_on(tracer: Tracer, ctx: RequestContext) -> None:
    """Make the current span the one a handler passes on (a published event's ``traceparent``)."""
    carrier: dict[str, str] = {}
    tracer.inject(carrier)
    found = carrier.get(HDR_TRACEPARENT)
    if found:
        ctx.traceparent = found


def _count_published(metrics: Metrics, component: str, op: str, payload: bytes, code: str) -> None:
    try:
        topic = bytes_field(payload, 2).decode(errors="replace")
        count = 1 if op == "publish" else count_field(payload, 3)
    except Malformed:
        return
    metrics.events_in(component, topic, "success" if code == "OK" else code.lower(), count)


class TracedApp:
    """An ``AppChannel`` whose calls are CLIENT spans, their ``traceparent`` in the call's metadata."""

    def __init__(self, inner: AppChannel, tracer: Tracer) -> None:
        self._inner = inner
        self._tracer = tracer

    @property
    def address(self) -> str:
        return self._inner.address

    @property
    def protocol(self) -> str:
        return self._inner.protocol

    async def call_grpc(
        self, method: str, request: bytes, *, timeout: float, metadata: Metadata
    ) -> tuple[bytes, Metadata]:
        return await self._inner.call_grpc(method, request, timeout=timeout, metadata=self._metadata(metadata))

    async def health(self, *, timeout: float) -> tuple[bool, str]:
        return await self._inner.health(timeout=timeout)

    def _metadata(self, metadata: Metadata) -> Metadata:
        carrier: dict[str, str] = {}
        self._tracer.inject(carrier)
        kept = [(k, v) for k, v in metadata if k not in ("traceparent", "tracestate")]
        return [*kept, *carrier.items()]

    def _span(self, rpc: str, attributes: dict[str, Any]) -> Any:
        attributes = {"rpc.system": "grpc", "rpc.service": "dapr.proto.runtime.v1.AppCallback", "rpc.method": rpc,
                      "server.address": self._inner.address, **attributes}  # fmt: skip
        return self._tracer.span(f"/dapr.proto.runtime.v1.AppCallback/{rpc}", "client", attributes=attributes)

    async def on_invoke(self, request: bytes, *, timeout: float, metadata: Metadata) -> tuple[bytes, Metadata]:
        parent = {k: v for k, v in metadata if k in ("traceparent", "tracestate") and isinstance(v, str)}
        with self._tracer.span("/dapr.proto.runtime.v1.AppCallback/OnInvoke", "client", carrier=parent):
            return await self._inner.on_invoke(request, timeout=timeout, metadata=self._metadata(metadata))

    async def list_subscriptions(self, *, timeout: float) -> list[AppSubscription] | None:
        return await self._inner.list_subscriptions(timeout=timeout)

    async def on_event(self, event: Any, path: str, *, timeout: float, metadata: Metadata) -> int:
        attributes = {"messaging.destination.name": event.topic, "messaging.message.id": event.id, "l8.path": path}
        with self._span("OnTopicEvent", attributes) as span:
            status = await self._inner.on_event(event, path, timeout=timeout, metadata=self._metadata(metadata))
            span.set_attribute("l8.app_status", status)
            return status

    async def on_bulk_event(
        self, pubsub: str, topic: str, path: str, entries: Sequence[BulkEntry], *, timeout: float
    ) -> dict[str, int]:
        attributes = {"messaging.destination.name": topic, "messaging.batch.message_count": len(entries)}
        with self._span("OnBulkTopicEvent", attributes):
            return await self._inner.on_bulk_event(pubsub, topic, path, entries, timeout=timeout)

    async def list_input_bindings(self, *, timeout: float) -> list[str] | None:
        return await self._inner.list_input_bindings(timeout=timeout)

    async def on_binding_event(
        self, name: str, data: bytes, metadata: dict[str, str], *, timeout: float
    ) -> BindingAnswer:
        with self._span("OnBindingEvent", {"l8.binding": name}):
            return await self._inner.on_binding_event(name, data, metadata, timeout=timeout)

    async def close(self) -> None:
        await self._inner.close()


class ObservedRouter:
    """The pub/sub workers' ``Router`` with a CONSUMER span per delivery and the events' counts."""

    def __init__(self, inner: Any, observer: Observer, component: str, system: str) -> None:
        self._inner = inner
        self._observer = observer
        self._component = component
        self._system = system
        metrics = observer.metrics
        self._in_flight = metrics.deliveries_in_flight(component) if metrics is not None else None

    def subject(self, spec: Spec) -> str:
        subject: str = self._inner.subject(spec)
        return subject

    async def deliver(self, spec: Spec, batch: Sequence[Delivery]) -> list[tuple[Outcome, str]]:
        observer, metrics = self._observer, self._observer.metrics
        if self._in_flight is not None:
            self._in_flight.inc()
        try:
            tracer = observer.tracer
            if tracer is None:
                outcomes: list[tuple[Outcome, str]] = await self._inner.deliver(spec, batch)
            else:
                first = batch[0].event
                attributes = {
                    "messaging.system": self._system,
                    "messaging.destination.name": spec.topic,
                    "messaging.operation": "deliver",
                    "l8.pubsub": self._component,
                    "l8.target": f"{spec.target}/{spec.app}",
                    "l8.attempt": batch[0].received.attempt,
                }
                if len(batch) == 1:
                    attributes["messaging.message.id"] = first.id
                else:
                    attributes["messaging.batch.message_count"] = len(batch)
                parents = [{HDR_TRACEPARENT: d.event.traceparent} for d in batch if d.event.traceparent]
                carrier = parents[0] if len(batch) == 1 and parents else None
                with tracer.span(
                    f"pubsub/{spec.topic}", "consumer", carrier=carrier, attributes=attributes,
                    links=parents if len(batch) > 1 else (),
                ) as span:  # fmt: skip
                    outcomes = await self._inner.deliver(spec, batch)
                    span.set_attribute("l8.outcome", ",".join(sorted({_OUTCOMES[o] for o, _ in outcomes})))
        finally:
            if self._in_flight is not None:
                self._in_flight.dec()
        if metrics is not None:
            self._count(metrics, spec, batch, outcomes)
        return outcomes

    def _count(
        self, metrics: Metrics, spec: Spec, batch: Sequence[Delivery], outcomes: list[tuple[Outcome, str]]
    ) -> None:
        by: dict[str, int] = {}
        for outcome, _ in outcomes:
            name = _OUTCOMES[outcome]
            by[name] = by.get(name, 0) + 1
        for name, count in by.items():
            metrics.events_out(self._component, spec.topic, name, count)
        again = sum(1 for d in batch if d.received.attempt > 1)
        if again:
            metrics.redelivered(self._component, spec.topic, again)


# The process's observer; None while tracing and metrics are both off.
OBSERVER: Observer | None = None


def inject(headers: dict[str, str]) -> None:
    """Put the current span's context into ``headers`` (a bus hop no wrapper covers)."""
    observer = OBSERVER
    if observer is not None and observer.tracer is not None:
        observer.tracer.inject(headers)
