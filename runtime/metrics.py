"""Metrics in Prometheus' text format, served at ``/metrics`` on the HTTP port (``metrics.enabled``).

Every name starts with ``l8_``; durations are seconds, in buckets from 100 µs (a GetState through
l8 takes about half a millisecond) to 5 s. Labels are bounded: methods and routes are the registered
ones, components the configured ones, codes the status names, and a topic is a label value only
when it is configured (a subscription in config, or ``metrics.topics``); any other topic counts as
``_other``. Keys, ids and paths never become labels.

The metrics live in l8's own ``CollectorRegistry`` (one per sidecar or worker), and each labelled
child is looked up once and kept, which keeps a count at well under a microsecond.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
OTHER_TOPIC = "_other"
CONTENT_TYPE = CONTENT_TYPE_LATEST


class _Children:
    """A metric's labelled children, built on first use."""

    __slots__ = ("_metric", "_seen")

    def __init__(self, metric: Any) -> None:
        self._metric = metric
        self._seen: dict[tuple[str, ...], Any] = {}

    def __call__(self, *values: str) -> Any:
        child = self._seen.get(values)
        if child is None:
            child = self._seen[values] = self._metric.labels(*values)
        return child


class Metrics:
    def __init__(self, topics: Iterable[str] = ()) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._topics = frozenset(topics)
        r = self.registry

        def counter(name: str, doc: str, labels: tuple[str, ...]) -> _Children:
            return _Children(Counter(name, doc, labels, registry=r))

        def histogram(name: str, doc: str, labels: tuple[str, ...]) -> _Children:
            return _Children(Histogram(name, doc, labels, registry=r, buckets=BUCKETS))

        def gauge(name: str, doc: str, labels: tuple[str, ...]) -> _Children:
            return _Children(Gauge(name, doc, labels, registry=r))

        self._rpc_count = counter("l8_grpc_server_handled", "gRPC calls served, by method and code", ("method", "code"))
        self._rpc_time = histogram("l8_grpc_server_handling_seconds", "time to answer a gRPC call", ("method",))
        self._http_count = counter(
            "l8_http_server_handled", "HTTP requests served, by route and status", ("route", "status")
        )
        self._http_time = histogram("l8_http_server_handling_seconds", "time to answer an HTTP request", ("route",))
        self._in_flight = gauge("l8_server_in_flight", "calls being answered by a front", ("front",))
        self._bus_count = counter(
            "l8_bus_requests",
            "requests a front sent on the bus, by api, component and code",
            ("api", "component", "code"),
        )
        self._bus_time = histogram(
            "l8_bus_request_seconds", "round trip of a request on the bus to a worker", ("api", "component")
        )
        self._worker_count = counter(
            "l8_worker_handled", "requests a worker answered, by api, component and code", ("api", "component", "code")
        )
        self._worker_time = histogram(
            "l8_worker_handling_seconds", "time a worker took to answer a request", ("api", "component")
        )
        self._worker_in_flight = gauge("l8_worker_in_flight", "requests a worker is answering", ("api", "component"))
        self._errors = counter(
            "l8_component_errors", "requests a component answered with an error", ("api", "component", "code")
        )
        self._events_in = counter(
            "l8_pubsub_events_in", "events published into a pub/sub component", ("component", "topic", "status")
        )
        self._events_out = counter(
            "l8_pubsub_events_out",
            "events delivered to their target, by outcome (success, retry, drop, unreachable)",
            ("component", "topic", "status"),
        )
        self._redelivered = counter(
            "l8_pubsub_redeliveries", "deliveries of events that had been delivered before", ("component", "topic")
        )
        self._dead = counter(
            "l8_pubsub_dead_letters",
            "events given up on: sent to the dead-letter topic (dead_lettered), or dropped without one",
            ("component", "topic", "status"),
        )
        self._deliveries_in_flight = gauge(
            "l8_pubsub_deliveries_in_flight", "events (or bulk batches) with their target", ("component",)
        )
        self._flow_rejected = counter("l8_flow_control_rejected", "calls refused by a flow control rule", ("resource",))
        self._flow_queued = counter(
            "l8_flow_control_queued", "calls a flow control rule held back until their turn", ("resource",)
        )

    # ---- fronts ----

    def rpc(self, method: str, code: str, seconds: float) -> None:
        self._rpc_count(method, code).inc()
        self._rpc_time(method).observe(seconds)

    def http(self, route: str, status: int, seconds: float) -> None:
        self._http_count(route, str(status)).inc()
        self._http_time(route).observe(seconds)

    def in_flight(self, front: str) -> Any:
        """The gauge of ``front``'s calls in flight (``inc``/``dec`` it)."""
        return self._in_flight(front)

    def bus(self, api: str, component: str, code: str, seconds: float) -> None:
        self._bus_count(api, component, code).inc()
        self._bus_time(api, component).observe(seconds)

    def flow_rejected(self, resource: str) -> None:
        self._flow_rejected(resource).inc()

    def flow_queued(self, resource: str) -> None:
        self._flow_queued(resource).inc()

    # ---- workers ----

    def worker(self, api: str, component: str, code: str, seconds: float) -> None:
        self._worker_count(api, component, code).inc()
        self._worker_time(api, component).observe(seconds)
        if code != "OK":
            self._errors(api, component, code).inc()

    def worker_in_flight(self, api: str, component: str) -> Any:
        return self._worker_in_flight(api, component)

    def topic(self, topic: str) -> str:
        return topic if topic in self._topics else OTHER_TOPIC

    def events_in(self, component: str, topic: str, status: str, count: int = 1) -> None:
        self._events_in(component, self.topic(topic), status).inc(count)

    def events_out(self, component: str, topic: str, status: str, count: int = 1) -> None:
        self._events_out(component, self.topic(topic), status).inc(count)

    def redelivered(self, component: str, topic: str, count: int = 1) -> None:
        self._redelivered(component, self.topic(topic)).inc(count)

    def dead_lettered(self, component: str, topic: str, how: str) -> None:
        self._dead(component, self.topic(topic), how).inc()

    def deliveries_in_flight(self, component: str) -> Any:
        return self._deliveries_in_flight(component)

    # ---- plugins and scrapes ----

    def counter(self, name: str, doc: str, labels: tuple[str, ...] = ()) -> Counter:
        """A counter of a plugin's own, in l8's registry (its name must start with ``l8_``)."""
        if not name.startswith("l8_"):
            raise ValueError(f"metric {name!r}: l8's metrics are named l8_...")
        return Counter(name, doc, labels, registry=self.registry)

    def histogram(self, name: str, doc: str, labels: tuple[str, ...] = ()) -> Histogram:
        if not name.startswith("l8_"):
            raise ValueError(f"metric {name!r}: l8's metrics are named l8_...")
        return Histogram(name, doc, labels, registry=self.registry, buckets=BUCKETS)

    def scrape(self) -> bytes:
        data: bytes = generate_latest(self.registry)
        return data
