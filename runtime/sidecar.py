"""Lifecycle of an l8 process: the sidecar (`l8 run`) and the worker (`l8 worker`).

Start order: embedded bus → bus connection → components → worker host → watchers and the health
probes (supervised) → invocation server (when the app has a callback) → gRPC and HTTP servers
(a worker: its health port, when it has one). Stop runs the other way under one budget
(``shutdown_timeout``): deliveries first, then the fronts stop taking calls and finish those in
flight, then the invocation server and the worker host drain, then the supervised tasks,
components, the app channel, the bus connection and the embedded server stop. A start that is
cancelled (SIGTERM while starting) stops what it had started the same way.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from urllib.parse import urlsplit

from bridges.registry import BridgeEnv
from bus import Bus, BusAuth, EmbeddedNats, Route, WorkerHost, credentials, subjects
from bus.auth import redact
from handlers.base import guarded
from runtime.actuator import Routes, split_address
from runtime.app_channel import AppChannel, open_app
from runtime.auth import http_context
from runtime.components import Components
from runtime.config import Config
from runtime.forward import Forwarder
from runtime.grpc_server import GrpcServer
from runtime.health import Health, HealthMonitor, Status
from runtime.http import HttpServer
from runtime.invoke import InvokeHandler, Invoker, http_route
from runtime.subscriber import Bridges, SubscriberManager
from runtime.supervisor import Budget, Supervisor

log = logging.getLogger("l8")


class Sidecar:
    """``serve=False`` runs handlers only (a worker); ``start``/``stop`` are idempotent."""

    def __init__(self, config: Config, *, serve: bool = True, apis: list[str] | None = None) -> None:
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
        self.invocations: Route | None = None
        self.grpc: GrpcServer | None = None
        self.http: HttpServer | None = None
        self.subscriber: SubscriberManager | None = None
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

    def _bus_auth(self) -> BusAuth:
        cfg = self.config
        if self.embedded is not None:
            return self.embedded.credentials or BusAuth()
        auth = cfg.bus.auth()
        if not cfg.bus.has_auth and _loopback(cfg.bus.servers):
            # A local worker joins the embedded bus of the sidecar whose data dir it shares.
            local = credentials.read(Path(cfg.data_dir) / "nats")
            if local is not None:
                auth = replace(auth, user=local.user, password=local.password)
        return auth

    async def _start(self) -> None:
        cfg = self.config
        if cfg.bus.embedded:
            self.embedded = EmbeddedNats(
                Path(cfg.data_dir) / "nats",
                port=cfg.bus.port,
                monitor_port=cfg.bus.monitor_port,
                name=cfg.app.id,
                auth=cfg.bus.embedded_auth,
            )
            await self.embedded.start()
            servers = [self.embedded.url]
        else:
            servers = cfg.bus.servers
        role = "sidecar" if self.serve else "worker"
        self.bus = Bus(
            servers, name=f"l8-{role}:{cfg.app.id}", start_timeout=cfg.bus.connect_timeout, auth=self._bus_auth()
        )
        await self.bus.start()
        self.health.set("bus", Status.UP)
        self.bus.add_status_listener(self._bus_status)
        self.health.listeners.append(self._readiness_changed)
        env = BridgeEnv(self.bus.nc, cfg.namespace, cfg.app.id, on_reopen=self.bus.add_reopen_listener)
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
            self.workers.add(served.api, served.name, guarded(served.handler))
        await self.workers.start()
        await self._start_watchers()
        bus = self.bus
        self.monitor = HealthMonitor(
            self.health,
            self.components.probes(),
            bus=lambda: bus.connected,
            interval=cfg.health.interval,
            timeout=cfg.health.timeout,
        )
        self.supervisor.spawn("health-probes", self.monitor.run)
        if not self.serve:
            if cfg.server.worker_http is not None:
                await self._start_http("server.worker_http", cfg.server.worker_http, Routes(cfg, self.health))
            return
        app_token = cfg.app.api_token()
        if cfg.app.callback is not None:
            # Only a sidecar that can reach its app answers the app's invocations; one
            # without joins no queue group, so callers never wait on it.
            self.app_channel = open_app(cfg.app.callback, cfg.server.max_message_bytes, app_token)
            handler = InvokeHandler(cfg.app.id, self.app_channel)
            self.invocations = await self.workers.serve(handler.route(cfg.namespace, cfg.concurrency))
        forwarder = Forwarder(self.bus, cfg)
        invoker = Invoker(self.bus, cfg.namespace, cfg.app.id, cfg.bus.request_timeout)
        pubsubs = {s.name: s.bridge for s in self.components.served if s.api == "pubsub"}
        # Deliveries get a channel of their own: the subscriber closes it when it has drained,
        # while invocations may still be answering.
        self.subscriber = SubscriberManager(
            cfg,
            open_app(cfg.app.callback, cfg.server.max_message_bytes, app_token) if cfg.app.callback else None,
            Bridges(cfg, env, pubsubs),
        )
        self.grpc = GrpcServer(cfg, forwarder, invoker, self.subscriber)
        await self.grpc.start()
        await self._start_http("server.http", cfg.server.http, Routes(cfg, self.health, http_route(invoker)))
        # Last: events flow to the app only once everything they may call back into is up.
        await self.subscriber.start()

    async def _start_http(self, field: str, address: str, routes: Routes) -> None:
        host, port = split_address(address)
        tls = self.config.server.tls
        self.http = HttpServer(host, port, routes, http_context(tls) if tls.enabled else None)
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

    def _steps(self) -> list[tuple[str, Callable[[float], Awaitable[None]]]]:
        """The shutdown in order; each step gets the time left in the budget."""
        steps: list[tuple[str, Callable[[float], Awaitable[None]]]] = []
        # Deliveries first: stop fetching, let the app answer what is in flight, hand back the rest.
        # (The delivery manager of the event-routing rework takes this place.)
        if (subscriber := self.subscriber) is not None:
            steps.append(("deliveries", lambda left: subscriber.stop()))
        if (grpc_server := self.grpc) is not None:
            steps.append(("the gRPC server", lambda left: grpc_server.stop(min(5.0, left))))
        if (http := self.http) is not None:
            steps.append(("the HTTP server", lambda left: http.stop()))
        if (host := self.workers) is not None and (invocations := self.invocations) is not None:
            steps.append(("invocations", lambda left: host.leave(invocations, min(10.0, left))))
        if (workers := self.workers) is not None:
            steps.append(("the worker host", lambda left: workers.stop(min(10.0, left))))
        steps.append(("supervised tasks", lambda left: self.supervisor.stop(min(5.0, left))))
        if (components := self.components) is not None:
            steps.append(("components", lambda left: components.stop()))
        if (channel := self.app_channel) is not None:
            steps.append(("the app channel", lambda left: channel.close()))
        if (bus := self.bus) is not None:
            steps.append(("the bus connection", lambda left: bus.stop(min(5.0, left))))
        if (embedded := self.embedded) is not None:
            steps.append(("the embedded nats-server", lambda left: embedded.stop(min(5.0, left))))
        return steps

    async def _stop(self) -> None:
        budget = Budget(self.config.shutdown_timeout)
        for name, step in self._steps():
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


def _loopback(servers: list[str]) -> bool:
    for url in servers:
        host = urlsplit(url).hostname or ""
        if host == "localhost":
            continue
        try:
            if not ipaddress.ip_address(host).is_loopback:
                return False
        except ValueError:
            return False
    return bool(servers)
