"""Lifecycle of an l8 process: the sidecar (`l8 run`) and the worker (`l8 worker`).

Start order: embedded bus → bus connection → components → worker host (handlers; the pub/sub
handlers' deliveries) → the app's invocations and events (when the app has a callback) → gRPC and
HTTP servers → the announcement of the app's subscriptions, last, so events flow only once
everything they may call back into is up.

Stop runs the other way: the subscriptions are withdrawn; this process's deliveries stop fetching,
let the app answer what it has and hand back the rest; the app's event routes and the fronts finish
what is in flight; then invocations, the worker host, components, the app channel, the bus
connection and the embedded server stop.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
import uuid
from pathlib import Path

from bridges.registry import BridgeEnv
from bus import Bus, EmbeddedNats, Route, WorkerHost, subjects
from bus.board import Board
from runtime.actuator import http_router, split_address
from runtime.app_channel import AppChannel, open_app
from runtime.components import Components
from runtime.config import Config
from runtime.event_router import BusRouter
from runtime.event_server import EventServer
from runtime.forward import Forwarder
from runtime.grpc_server import GrpcServer
from runtime.health import Health, Status
from runtime.http import HttpServer, Limits
from runtime.invoke import InvokeHandler, Invoker
from runtime.metadata import Metadata
from runtime.streaming import Streams
from runtime.subscriptions import LEASE, Announcer

log = logging.getLogger("l8")


class Sidecar:
    """``serve=False`` runs handlers only (a worker); ``start``/``stop`` are idempotent."""

    def __init__(self, config: Config, *, serve: bool = True, apis: list[str] | None = None) -> None:
        self.config = config
        self.serve = serve
        self.apis = config.apis() if apis is None else apis
        self.health = Health()
        self.embedded: EmbeddedNats | None = None
        self.bus: Bus | None = None
        self.components: Components | None = None
        self.workers: WorkerHost | None = None
        self.app_channel: AppChannel | None = None
        self.event_channel: AppChannel | None = None
        self.invocations: Route | None = None
        self.grpc: GrpcServer | None = None
        self.http: HttpServer | None = None
        self.events: EventServer | None = None
        self.announcer: Announcer | None = None
        self.board: Board | None = None
        self.worker_id = uuid.uuid4().hex[:12]
        self.metadata: Metadata | None = None
        # Set by Dapr's Shutdown (gRPC or POST /v1.0/shutdown); `l8 run` stops when it is.
        self.shutdown_requested = asyncio.Event()
        self.started_in: float | None = None
        self._state = "new"
        self._lock = asyncio.Lock()

    @property
    def bus_url(self) -> str:
        return self.embedded.url if self.embedded is not None else self.config.bus.url

    async def start(self) -> None:
        async with self._lock:
            if self._state != "new":
                return
            self._state = "starting"
            began = time.monotonic()
            try:
                await self._start()
            except BaseException:
                await self._stop()
                self._state = "stopped"
                raise
            self._state = "running"
            self.started_in = time.monotonic() - began
            self.health.set("runtime_startup", Status.UP)
            if self.grpc is not None:
                await self.grpc.set_serving(True)
            self._log_ready()

    async def _start(self) -> None:
        cfg = self.config
        if cfg.bus.embedded:
            self.embedded = EmbeddedNats(
                Path(cfg.data_dir) / "nats", port=cfg.bus.port, monitor_port=cfg.bus.monitor_port, name=cfg.app.id
            )
            await self.embedded.start()
            servers = [self.embedded.url]
        else:
            servers = cfg.bus.servers
        role = "sidecar" if self.serve else "worker"
        self.bus = Bus(servers, name=f"l8-{role}:{cfg.app.id}")
        await self.bus.start()
        env = BridgeEnv(self.bus.nc, cfg.namespace, cfg.app.id)
        self.components = Components(cfg, env, self.health)
        await self.components.start(self.apis)
        self.workers = WorkerHost(
            self.bus,
            cfg.namespace,
            concurrency=cfg.concurrency,
            default_timeout=cfg.bus.request_timeout,
            local_dispatch=cfg.bus.local_dispatch and self.serve,
        )
        for served in self.components.served:
            self.workers.add(served.api, served.name, served.handler)
        await self.workers.start()
        await self._start_watchers()
        await self._start_deliveries()
        if self.serve:
            if cfg.app.callback is not None:
                # Only a sidecar that can reach its app answers the app's invocations and events;
                # one without joins no queue group, so callers never wait on it.
                self.app_channel = open_app(cfg.app.callback, cfg.server.max_message_bytes)
                handler = InvokeHandler(cfg.app.id, self.app_channel)
                self.invocations = await self.workers.serve(handler.route(cfg.namespace, cfg.concurrency))
                # Events and subscription discovery get a channel of their own: asking a starting app
                # for its subscriptions must not put the invocations' connection into backoff.
                self.event_channel = open_app(cfg.app.callback, cfg.server.max_message_bytes)
            self.events = EventServer(
                self.workers, cfg.namespace, cfg.app.id, self.event_channel, concurrency=cfg.concurrency
            )
            await self.events.start()
            forwarder = Forwarder(self.bus, cfg)
            invoker = Invoker(self.bus, cfg.namespace, cfg.app.id, cfg.bus.request_timeout)
            self.announcer = Announcer(cfg, forwarder, self.event_channel)
            live = self.components.served
            self.metadata = Metadata(cfg, self.announcer.report, lambda: {s.name: s.bridge.features() for s in live})
            self.grpc = GrpcServer(
                cfg,
                forwarder,
                invoker,
                Streams(self.announcer, self.events),
                self.metadata,
                self.shutdown_requested.set,
            )
            await self.grpc.start()
            host, port = split_address(cfg.server.http)
            router = http_router(
                cfg,
                self.health,
                forwarder,
                invoker,
                self.metadata,
                self.grpc.configuration,
                self.shutdown_requested.set,
            )
            limits = Limits(
                max_body_bytes=cfg.server.max_message_bytes,
                max_header_bytes=cfg.server.http_max_header_bytes,
                header_timeout=cfg.server.http_header_timeout,
                idle_timeout=cfg.server.http_idle_timeout,
                max_connections=cfg.server.http_max_connections,
            )
            self.http = HttpServer(host, port, router, limits)
            try:
                await self.http.start()
            except OSError as exc:
                raise OSError(f"server.http: cannot listen on {cfg.server.http}: {exc.strerror or exc}") from None
            if self.embedded is not None:
                # So that `l8 subscriptions` and local workers find the embedded bus.
                (Path(cfg.data_dir) / "bus-url").write_text(self.embedded.url + "\n")
            await self.announcer.start()

    async def _start_deliveries(self) -> None:
        """The pub/sub handlers of this process deliver the subscriptions announced on the bus."""
        assert self.components is not None and self.bus is not None
        pubsubs = [s for s in self.components.served if s.api == "pubsub"]
        if not pubsubs:
            return
        from handlers.pubsub_registry import Deliveries

        self.board = Board(
            self.bus, f"l8_{self.config.namespace}_subscriptions", lease=LEASE, replicas=self.config.bus.replicas
        )
        router = BusRouter(self.bus, self.config.namespace)
        for served in pubsubs:
            deliveries = Deliveries(served.name, served.bridge, router, self.board, self.worker_id, self._health_of)
            served.handler.deliveries = deliveries  # type: ignore[attr-defined]
            await deliveries.start()

    def _health_of(self, name: str, up: bool, reason: str) -> None:
        self.health.set(name, Status.UP if up else Status.DOWN, reason)

    async def _start_watchers(self) -> None:
        """Handlers that push changes (configuration) publish them for every front on the bus."""
        assert self.components is not None and self.bus is not None
        for served in self.components.served:
            watch = getattr(served.handler, "watch", None)
            if watch is not None:
                subject = subjects.changes_subject(self.config.namespace, served.api, served.name)
                await watch(functools.partial(self.bus.publish, subject))

    async def stop(self) -> None:
        async with self._lock:
            if self._state in ("new", "stopped"):
                self._state = "stopped"
                return
            self._state = "stopping"
            self.health.set("runtime_startup", Status.DOWN, "shutdown")
            await self._stop()
            self._state = "stopped"
            log.info("l8 stopped")

    async def _stop(self) -> None:
        if self.announcer is not None:
            await self.announcer.stop()
        # Deliveries next: stop fetching, let the targets answer what is in flight, hand back the rest.
        for served in self.components.served if self.components is not None else ():
            deliveries = getattr(served.handler, "deliveries", None)
            if deliveries is not None:
                await deliveries.stop(timeout=10.0)
        if self.events is not None:
            await self.events.stop()
        if self.grpc is not None:
            await self.grpc.stop()
        if self.http is not None:
            await self.http.stop()
        if self.invocations is not None and self.workers is not None:
            await self.workers.leave(self.invocations)
        if self.workers is not None:
            await self.workers.stop()
        if self.components is not None:
            await self.components.stop()
        for channel in (self.app_channel, self.event_channel):
            if channel is not None:
                await channel.close()
        if self.bus is not None:
            await self.bus.stop()
        if self.embedded is not None:
            await self.embedded.stop()

    def _log_ready(self) -> None:
        served = ", ".join(f"{a}/{n}" for a, n in (self.workers.routes if self.workers else [])) or "none"
        bus = f"{self.bus_url} (embedded)" if self.embedded else self.bus_url
        if self.serve and self.grpc is not None and self.http is not None:
            log.info(
                "l8 ready in %.2fs: app %s, gRPC %s, HTTP %s:%s, bus %s, handlers: %s",
                self.started_in or 0.0,
                self.config.app.id,
                self.config.server.grpc,
                self.http.host,
                self.http.port,
                bus,
                served,
            )
        else:
            log.info("l8 worker ready in %.2fs: bus %s, handlers: %s", self.started_in or 0.0, bus, served)
