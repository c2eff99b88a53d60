"""Tracing: W3C trace context from the fronts through the bus to the workers, the app callbacks and
the wasm host calls, each hop a span, exported over OTLP (gRPC or HTTP).

Off by default, and then nothing of OpenTelemetry is imported and no hook is installed. On when the
config says ``tracing: {enabled: true}``, or, with ``enabled`` unset, when the standard variables
ask for it: ``OTEL_SDK_DISABLED=false``, ``OTEL_TRACES_EXPORTER=otlp`` and an endpoint
(``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` or ``OTEL_EXPORTER_OTLP_ENDPOINT``). Sampling is
parent-based: a caller's decision (the ``traceparent`` flags) is kept, and a trace that starts in
l8 is sampled at ``tracing.sampling`` (else ``OTEL_TRACES_SAMPLER``/``_ARG``).

The SDK and the exporters are the official ones; l8 creates its spans itself rather than through
the contrib gRPC instrumentation, whose aio interceptors break l8's streams (see
shared/reference/mesh-observability.md), and carries the context in bus headers as it carries the
deadline.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping, MutableMapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from runtime.config import Config

log = logging.getLogger("l8.tracing")

HDR_TRACESTATE = "tracestate"
_TRACE_KEYS = ("traceparent", "tracestate")
PROTOCOLS = ("grpc", "http/protobuf")


@dataclass(frozen=True, slots=True)
class Settings:
    """What the tracer is built from; ``settings()`` derives it from config and environment."""

    sampling: float
    protocol: str
    endpoint: str | None  # None: the exporter reads the OTEL_EXPORTER_OTLP_* variables itself
    service_name: str
    origin: str  # "config" or "environment", for the start-up log line


def _env_ratio(env: Mapping[str, str]) -> float:
    sampler = env.get("OTEL_TRACES_SAMPLER", "parentbased_always_on").strip().lower()
    if sampler in ("always_off", "parentbased_always_off"):
        return 0.0
    if sampler in ("traceidratio", "parentbased_traceidratio"):
        try:
            return min(1.0, max(0.0, float(env.get("OTEL_TRACES_SAMPLER_ARG", "1.0"))))
        except ValueError:
            log.warning(
                "OTEL_TRACES_SAMPLER_ARG %r is not a number; sampling every trace", env["OTEL_TRACES_SAMPLER_ARG"]
            )
    return 1.0


def _env_wants_tracing(env: Mapping[str, str]) -> bool:
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() != "false":
        return False
    exporters = {e.strip().lower() for e in env.get("OTEL_TRACES_EXPORTER", "").split(",")}
    if "otlp" not in exporters:
        return False
    return bool(env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_ENDPOINT"))


def settings(config: Config, env: Mapping[str, str] | None = None) -> Settings | None:
    """The tracer's settings, or None when tracing is off."""
    env = os.environ if env is None else env
    cfg = config.tracing
    if cfg.enabled is False:
        return None
    if cfg.enabled is None and not _env_wants_tracing(env):
        return None
    protocol = (
        cfg.protocol
        or env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        or env.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "grpc"
    ).strip()
    if protocol not in PROTOCOLS:
        log.warning("OTLP protocol %r is not one l8 exports with (%s); using grpc", protocol, ", ".join(PROTOCOLS))
        protocol = "grpc"
    return Settings(
        sampling=cfg.sampling if cfg.sampling is not None else _env_ratio(env),
        protocol=protocol,
        endpoint=cfg.endpoint,
        service_name=cfg.service_name or env.get("OTEL_SERVICE_NAME") or config.app.id,
        origin="config" if cfg.enabled else "environment",
    )


def _http_endpoint(endpoint: str) -> str:
    """A configured HTTP endpoint is the collector's base URL, as in OTEL_EXPORTER_OTLP_ENDPOINT."""
    parts = urlsplit(endpoint)
    if parts.path in ("", "/"):
        return endpoint.rstrip("/") + "/v1/traces"
    return endpoint


class Tracer:
    """The process's tracer provider, its OTLP exporter and the W3C propagator."""

    def __init__(self, settings: Settings, *, instance: str = "") -> None:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        from runtime import __version__

        _otel.load()
        self.settings = settings
        attributes: dict[str, Any] = {"service.name": settings.service_name, "service.version": __version__}
        if instance:
            attributes["service.instance.id"] = instance
        self._provider = TracerProvider(
            resource=Resource.create(attributes), sampler=ParentBased(TraceIdRatioBased(settings.sampling))
        )
        self._provider.add_span_processor(BatchSpanProcessor(self._exporter(settings)))
        self._tracer = self._provider.get_tracer("l8", __version__)
        self._propagator = TraceContextTextMapPropagator()

    @staticmethod
    def _exporter(settings: Settings) -> Any:
        if settings.protocol == "http/protobuf":
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter

            if settings.endpoint:
                return HttpExporter(endpoint=_http_endpoint(settings.endpoint))
            return HttpExporter()
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter

        if settings.endpoint:
            scheme = urlsplit(settings.endpoint).scheme
            return GrpcExporter(endpoint=settings.endpoint, insecure=scheme != "https")
        return GrpcExporter()

    def span(
        self,
        name: str,
        kind: str,
        *,
        carrier: Mapping[str, str] | None = None,
        attributes: Mapping[str, Any] | None = None,
        links: Iterable[Mapping[str, str]] = (),
    ) -> Scope:
        """A span made current while the scope is entered; its parent is the context in ``carrier``
        (headers or metadata) when that holds one, else the current span."""
        trace = _otel.trace
        context = self._propagator.extract(carrier) if carrier and "traceparent" in carrier else None
        parent = trace.get_current_span(context).get_span_context()
        if parent.is_valid and not parent.trace_flags.sampled:
            # A trace sampled out upstream: no span of its own, the decision and the context pass on.
            return Scope(trace.NonRecordingSpan(parent))
        linked = []
        for other in links:
            span_context = trace.get_current_span(self._propagator.extract(other)).get_span_context()
            if span_context.is_valid:
                linked.append(trace.Link(span_context))
        span = self._tracer.start_span(
            name, context=context, kind=_KINDS[kind], attributes=attributes, links=linked or None
        )
        return Scope(span)

    def inject(self, carrier: MutableMapping[str, str]) -> None:
        """Write the current span's ``traceparent`` (and ``tracestate``) into ``carrier``."""
        self._propagator.inject(carrier)

    def shutdown(self) -> None:
        """Export what is buffered and stop (blocking: the exporter sends synchronously)."""
        self._provider.shutdown()


class Scope:
    """Enter to make the span current; exit ends it, with an error status when one escaped."""

    __slots__ = ("_token", "span")

    def __init__(self, span: Any) -> None:
        self.span = span
        self._token: Any = None

    def __enter__(self) -> Any:
        self._token = _otel.context.attach(_otel.trace.set_span_in_context(self.span))
        return self.span

    def __exit__(self, kind: Any, exc: BaseException | None, tb: Any) -> None:
        if exc is not None and self.span.is_recording():
            fail(self.span, getattr(exc, "code", None) or type(exc).__name__, str(exc))
        _otel.context.detach(self._token)
        self.span.end()


def fail(span: Any, code: Any, message: str = "") -> None:
    """Mark ``span`` failed with ``code`` (a status name) and a short description."""
    name = getattr(code, "name", None) or getattr(code, "value", None) or str(code)
    span.set_attribute("l8.status_code", str(name))
    span.set_status(_otel.trace.Status(_otel.trace.StatusCode.ERROR, f"{name}: {message}"[:200]))


def carrier_of(pairs: Iterable[tuple[str, Any]]) -> dict[str, str]:
    """The trace context keys among gRPC metadata or HTTP headers."""
    return {
        key: value
        for key, value in pairs
        if key in _TRACE_KEYS and isinstance(value, str) and len(value) <= 512 and value.isprintable()
    }


class _Otel:
    """OpenTelemetry's modules, bound when the first tracer is built (never while tracing is off)."""

    trace: Any = None
    context: Any = None

    def load(self) -> None:
        if self.trace is None:
            from opentelemetry import context, trace

            self.context, self.trace = context, trace
            _KINDS.update(
                server=trace.SpanKind.SERVER,
                client=trace.SpanKind.CLIENT,
                producer=trace.SpanKind.PRODUCER,
                consumer=trace.SpanKind.CONSUMER,
                internal=trace.SpanKind.INTERNAL,
            )


_otel = _Otel()
_KINDS: dict[str, Any] = {}
