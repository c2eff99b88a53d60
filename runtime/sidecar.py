"""Lifecycle of an l8 process: the sidecar (`l8 run`) and the worker (`l8 worker`).

Start order: embedded bus → bus connection → components → worker host (handlers; the pub/sub
and input binding handlers' deliveries) → watchers and the health probes (supervised) → the app's invocations and
events (when the app has a callback) → gRPC and HTTP servers (a worker: its health port, when it
has one) → the announcement of the app's subscriptions, last, so events flow only once everything
they may call back into is up.

Stop runs the other way under one budget (``shutdown_timeout``): the subscriptions are withdrawn;
this process's deliveries stop fetching, let the targets answer what they have and hand back the
rest; the app's event routes and the fronts finish what is in flight; then invocations, the worker
host, the supervised tasks, components, the app channels, the bus connection and the embedded
server stop. A start that is cancelled (SIGTERM while starting) stops what it had started the same
way.
The stop order is the list of runtime/shutdown.py.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bridges.registry import BridgeEnv
from bus import Bus, BusAuth, EmbeddedNats, Route, WorkerHost, subjects
from bus.auth import redact
from bus.board import Board
from handlers.pubsub_registry import Deliveries
from runtime import bus_identity
from runtime.actuator import http_router, probes_router, split_address
from runtime.app_channel import AppChannel, open_app
from runtime.app_health import AppHealth, Gated
from runtime.auth import http_context
from runtime.binding_events import BindingAnswers
from runtime.components import Components, Served
from runtime.config import Config
from runtime.configuration_push import AppPush
from runtime.event_router import BusRouter
from runtime.event_server import EventServer
from runtime.forward import Forwarder
from runtime.grpc_server import GrpcServer
from runtime.health import Health, HealthMonitor, Status
from runtime.http import HttpServer, Limits
from runtime.http import Router as HttpRouter
from runtime.invoke import InvokeHandler, Invoker
from runtime.metadata import Metadata
from runtime.operability import Operability
from runtime.reload import LiveComponents
from runtime.shutdown import shutdown_steps
from runtime.streaming import Streams
from runtime.subscriptions import LEASE, Announcer
from runtime.supervisor import Budget, Supervisor

if TYPE_CHECKING:
    from runtime.functions import SidecarFunctions

log = logging.getLogger("l8")


class Sidecar:
    """``serve=False`` runs handlers only (a worker); ``start``/``stop`` are idempotent."""

    def __init__(
        self,
        config: Config,
        *,
        serve: bool = True,
        apis: list[str] | None = None,
        reload_from: tuple[Path, Callable[[], Config]] | None = None,
    ) -> None:
        """``reload_from``: the config file and how to load it again, for ``reload.watch``."""
        self.config = config
        self.serve = serve
        self.apis = config.apis() if apis is None else apis
        self.health = Health()
        self.supervisor = Supervisor(self.health)
        self.monitor: HealthMonitor | None = None
        self.embedded: EmbeddedNats | None = None
        self.bus: Bus | None = None
        self.components: Components | None = None
        self.workers: WorkerHost | None = None
        self.app_channel: AppChannel | None = None
        self.event_channel: AppChannel | None = None
        self.app_health: AppHealth | None = None
        self.config_push: AppPush | None = None
        self.invocations: Route | None = None
        self.grpc: GrpcServer | None = None
        self.http: HttpServer | None = None
        self.events: EventServer | None = None
        self.announcer: Announcer | None = None
        self.board: Board | None = None
        self.deliveries: list[Deliveries] = []
        self.worker_id = uuid.uuid4().hex[:12]
        self.metadata: Metadata | None = None
        # Set by Dapr's Shutdown (gRPC or POST /v1.0/shutdown); `l8 run` stops when it is.
        self.shutdown_requested = asyncio.Event()
        self.functions: SidecarFunctions | None = None
        # Tracing, metrics, flow control, the request dump and plugins (runtime/operability.py).
        self.ops = Operability(config)
        # Components on routes of their own, changeable while l8 runs (runtime/reload.py).
        self.live = LiveComponents(self, *(reversed(reload_from) if reload_from else ()))
        self.forwarder: Forwarder | None = None
        self.probes: dict[str, Any] = {}
        self.started_in: float | None = None
        self._state = "new"
        self._lock = asyncio.Lock()
        self._serving_updates: set[asyncio.Task[None]] = set()

    @property
    def bus_url(self) -> str:
        return self.embedded.url if self.embedded is not None else redact(self.config.bus.url)

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
                await self.grpc.set_serving(self.health.ready)
            self._log_ready()

    async def _start(self) -> None:
        cfg = self.config
        identity = bus_identity.of(cfg, bus_identity.SIDECAR if self.serve else bus_identity.WORKER, self.apis)
        ops = self.ops
        await ops.start(self.worker_id)
        if cfg.bus.embedded:
            self.embedded = EmbeddedNats(
                Path(cfg.data_dir) / "nats",
                port=cfg.bus.port,
                monitor_port=cfg.bus.monitor_port,
                name=cfg.app.id,
                auth=cfg.bus.embedded_auth,
                users=bus_identity.embedded_users(cfg, identity),
            )
            await self.embedded.start()
            servers = [self.embedded.url]
            auth = self.embedded.credentials or BusAuth()
        else:
            servers = cfg.bus.servers
            auth = await bus_identity.auth_for(cfg, identity, servers)
        role = "sidecar" if self.serve else "worker"
        self.bus = Bus(
            servers,
            name=f"l8-{role}:{cfg.app.id}",
            start_timeout=cfg.bus.connect_timeout,
            auth=auth,
            inbox_prefix=identity.inbox,
        )
        await self.bus.start()
        self.health.set("bus", Status.UP)
        self.bus.add_status_listener(self._bus_status)
        self.health.listeners.append(self._readiness_changed)
        env = BridgeEnv(
            self.bus.nc,
            cfg.namespace,
            cfg.app.id,
            on_reopen=self.bus.add_reopen_listener,
            request=self.bus.replies.request,
        )
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
            await self.live.serve(served)
        await self.workers.start()
        for served in self.components.served:
            await self.start_watcher(served)
        for served in self.components.served:
            await self.deliver(served)
        bus = self.bus
        self.probes = self.components.probes()
        self.monitor = HealthMonitor(
            self.health,
            self.probes,
            bus=lambda: bus.connected,
            interval=cfg.health.interval,
            timeout=cfg.health.timeout,
        )
        self.supervisor.spawn("health-probes", self.monitor.run)
        if not self.serve:
            if cfg.server.worker_http is not None:
                router = probes_router(cfg, self.health, ops.hooks.metrics)
                await self._start_http("server.worker_http", cfg.server.worker_http, router)
            await self.live.start()
            return
        if cfg.functions:
            # Imported only when functions are configured: wasmtime is large to load.
            from runtime.functions import SidecarFunctions

            self.functions = SidecarFunctions(cfg, self.workers)
            await self.functions.start()
        app_token = cfg.app.api_token()
        if cfg.app.callback is not None:
            # Only a sidecar that can reach its app answers the app's invocations and events; one
            # without joins no queue group, so callers never wait on it. Events and subscription
            # discovery get a channel of their own: asking a starting app for its subscriptions
            # must not put the invocations' connection into backoff (nor must its health probes).
            self.app_channel = ops.app(self._open_app(app_token))
            self.event_channel = ops.app(self._open_app(app_token))
            check = cfg.app.health_check
            if check.enabled:
                self.app_health = AppHealth(
                    self._open_app(app_token), interval=check.interval, timeout=check.timeout, threshold=check.threshold
                )
                await self.app_health.start()
                self.app_channel = Gated(self.app_channel, self.app_health)
                self.event_channel = Gated(self.event_channel, self.app_health)
            handler = InvokeHandler(cfg.app.id, self.app_channel)
            route = handler.route(cfg.namespace, cfg.concurrency)
            span_name = f"CallLocal/{cfg.app.id}"
            route.handler = ops.route(lambda ctx: span_name, route.handler)
            self.invocations = await self.workers.serve(route)
        forwarder = self.forwarder = Forwarder(self.bus, cfg)
        self.events = EventServer(
            self.workers,
            cfg.namespace,
            cfg.app.id,
            self.event_channel,
            concurrency=cfg.concurrency,
            wrap=ops.events_wrap(),
            answers=BindingAnswers(forwarder).carry_out,
        )
        await self.events.start()
        invoker = Invoker(self.bus, cfg.namespace, cfg.app.id, cfg.bus.request_timeout)
        self.announcer = Announcer(cfg, forwarder, self.event_channel)
        live = self.components.served
        await ops.start_plugins(self.bus, forwarder, self.components.served, self.app_channel)
        self.metadata = Metadata(
            cfg,
            self.announcer.report,
            lambda: {s.name: s.bridge.features() for s in live},
            functions=self.functions.rows if self.functions is not None else None,
            app_protocol=(lambda: channel.protocol) if (channel := self.event_channel) is not None else None,
            plugins=ops.plugin_rows if ops.plugins else None,
        )
        self.grpc = GrpcServer(
            cfg,
            forwarder,
            invoker,
            Streams(self.announcer, self.events),
            self.metadata,
            self.shutdown_requested.set,
            hooks=ops.hooks,
            plugins=ops.plugins,
        )
        await self.grpc.start()
        if self.app_channel is not None:
            # Dapr's HTTP configuration subscribe sends the changes to the app as invocations.
            self.config_push = AppPush(self.grpc.configuration, self.app_channel, cfg.bus.request_timeout)
        router = http_router(
            cfg,
            self.health,
            forwarder,
            invoker,
            self.metadata,
            self.grpc.configuration,
            self.shutdown_requested.set,
            self.config_push,
            hooks=ops.hooks,
        )
        await self._start_http("server.http", cfg.server.http, router)
        if self.embedded is not None:
            # So that `l8 subscriptions` finds the embedded bus.
            (Path(cfg.data_dir) / "bus-url").write_text(self.embedded.url + "\n")
        # Last: events flow to the app only once everything they may call back into is up.
        await self.announcer.start()
        await self.live.start()

    def _open_app(self, app_token: str | None) -> AppChannel:
        cfg = self.config
        assert cfg.app.callback is not None
        return open_app(
            cfg.app.callback,
            cfg.server.max_message_bytes,
            app_token,
            protocol=cfg.app.protocol,
            bindings=tuple(cfg.components_of("bindings")),
            health_path=cfg.app.health_check.path,
        )

    async def deliver(self, served: Served) -> None:
        """This process delivers the subscriptions announced on the bus for ``served``, if it has
        events: a pub/sub component its broker's topics, an input binding (its handler's
        ``source``) the binding's events."""
        assert self.bus is not None
        # Looked up by attribute: a handler may be wrapped (runtime/secretrefs.py's Redacting).
        registry = getattr(served.handler, "registry", None)
        source = served.bridge if served.api == "pubsub" else getattr(served.handler, "source", None)
        if registry is None or source is None:
            return
        if self.board is None:
            self.board = Board(
                self.bus, f"l8_{self.config.namespace}_subscriptions", lease=LEASE, replicas=self.config.bus.replicas
            )
        router = self.ops.router(BusRouter(self.bus, self.config.namespace), served.name, served_type(self, served))
        deliveries = Deliveries(served.name, source, router, self.board, self.worker_id, self._health_of)
        registry.deliveries = deliveries
        self.deliveries.append(deliveries)
        await deliveries.start()

    async def stop_deliveries_of(self, name: str) -> None:
        for deliveries in [d for d in self.deliveries if d.component == name]:
            self.deliveries.remove(deliveries)
            await deliveries.stop(timeout=min(10.0, self.config.shutdown_timeout))

    def _health_of(self, name: str, up: bool, reason: str) -> None:
        self.health.set(name, Status.UP if up else Status.DOWN, reason)

    async def _start_http(self, field: str, address: str, router: HttpRouter) -> None:
        host, port = split_address(address)
        cfg = self.config
        limits = Limits(
            max_body_bytes=cfg.server.max_message_bytes,
            max_header_bytes=cfg.server.http_max_header_bytes,
            header_timeout=cfg.server.http_header_timeout,
            idle_timeout=cfg.server.http_idle_timeout,
            max_connections=cfg.server.http_max_connections,
        )
        tls = cfg.server.tls
        self.http = HttpServer(host, port, router, limits, http_context(tls) if tls.enabled else None)
        try:
            await self.http.start()
        except OSError as exc:
            raise OSError(f"{field}: cannot listen on {address}: {exc.strerror or exc}") from None

    def _bus_status(self, connected: bool, reason: str) -> None:
        self.health.set("bus", Status.UP if connected else Status.DOWN, reason)

    def _readiness_changed(self, status: Status) -> None:
        # gRPC health follows readiness; its servicer is async, the listener is not.
        if self.grpc is None or self._state != "running":
            return
        task = asyncio.get_running_loop().create_task(self.grpc.set_serving(status is Status.UP))
        self._serving_updates.add(task)
        task.add_done_callback(self._serving_updates.discard)

    async def start_watcher(self, served: Served) -> None:
        """A handler that pushes changes (configuration) publishes them for every front on the bus."""
        assert self.bus is not None
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
        budget = Budget(self.config.shutdown_timeout)
        for name, step in shutdown_steps(self):
            await budget.step(name, step)
        for task in list(self._serving_updates):
            task.cancel()

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
            probes = f", health on HTTP {self.http.host}:{self.http.port}" if self.http is not None else ""
            log.info("l8 worker ready in %.2fs: bus %s, handlers: %s%s", self.started_in or 0.0, bus, served, probes)


def served_type(sidecar: Sidecar, served: Served) -> str:
    comp = sidecar.config.components.get(served.name)
    return comp.type if comp is not None else ""
