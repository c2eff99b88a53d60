"""Lifecycle of an l8 process: the sidecar (`l8 run`) and the worker (`l8 worker`).

Start order: embedded bus → bus connection → components → worker host → invocation server (when
the app has a callback) → gRPC and HTTP servers. Stop runs the other way: the fronts stop taking
calls and finish those in flight, then the invocation server and the worker host drain, then
components, the app channel, the bus connection and the embedded server stop.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

from bridges.registry import BridgeEnv
from bus import Bus, EmbeddedNats, Route, WorkerHost, subjects
from runtime.actuator import Routes, split_address
from runtime.app_channel import AppChannel, open_app
from runtime.components import Components
from runtime.config import Config
from runtime.forward import Forwarder
from runtime.grpc_server import GrpcServer
from runtime.health import Health, Status
from runtime.http import HttpServer
from runtime.invoke import InvokeHandler, Invoker, http_route
from runtime.subscriber import Bridges, SubscriberManager

if TYPE_CHECKING:
    from runtime.functions import SidecarFunctions

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
        self.invocations: Route | None = None
        self.grpc: GrpcServer | None = None
        self.http: HttpServer | None = None
        self.subscriber: SubscriberManager | None = None
        self.functions: SidecarFunctions | None = None
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
        if self.serve and cfg.functions:
            # Imported only when functions are configured: wasmtime is large to load.
            from runtime.functions import SidecarFunctions

            self.functions = SidecarFunctions(cfg, self.workers)
            await self.functions.start()
        if self.serve:
            if cfg.app.callback is not None:
                # Only a sidecar that can reach its app answers the app's invocations; one
                # without joins no queue group, so callers never wait on it.
                self.app_channel = open_app(cfg.app.callback, cfg.server.max_message_bytes)
                handler = InvokeHandler(cfg.app.id, self.app_channel)
                self.invocations = await self.workers.serve(handler.route(cfg.namespace, cfg.concurrency))
            forwarder = Forwarder(self.bus, cfg)
            invoker = Invoker(self.bus, cfg.namespace, cfg.app.id, cfg.bus.request_timeout)
            pubsubs = {s.name: s.bridge for s in self.components.served if s.api == "pubsub"}
            # Deliveries get a channel of their own: the subscriber closes it when it has drained,
            # while invocations may still be answering.
            self.subscriber = SubscriberManager(
                cfg,
                open_app(cfg.app.callback, cfg.server.max_message_bytes) if cfg.app.callback else None,
                Bridges(cfg, env, pubsubs),
            )
            self.grpc = GrpcServer(cfg, forwarder, invoker, self.subscriber)
            await self.grpc.start()
            host, port = split_address(cfg.server.http)
            rows = self.functions.rows if self.functions is not None else None
            self.http = HttpServer(host, port, Routes(cfg, self.health, http_route(invoker), functions=rows))
            try:
                await self.http.start()
            except OSError as exc:
                raise OSError(f"server.http: cannot listen on {cfg.server.http}: {exc.strerror or exc}") from None
            # Last: events flow to the app only once everything they may call back into is up.
            await self.subscriber.start()

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
        # Deliveries first: stop fetching, let the app answer what is in flight, hand back the rest.
        if self.subscriber is not None:
            await self.subscriber.stop()
        if self.grpc is not None:
            await self.grpc.stop()
        if self.http is not None:
            await self.http.stop()
        if self.invocations is not None and self.workers is not None:
            await self.workers.leave(self.invocations)
        if self.functions is not None:
            await self.functions.stop()
        if self.workers is not None:
            await self.workers.stop()
        if self.components is not None:
            await self.components.stop()
        if self.app_channel is not None:
            await self.app_channel.close()
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
