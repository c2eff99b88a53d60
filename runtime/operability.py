"""What a sidecar or worker runs for its operators: tracing, metrics, flow control, the request dump
and API plugins, built from config at start (each only when on) and stopped last.

The hooks they need are installed by the sidecar through ``Operability``'s ``handler``, ``route``,
``app`` and ``router``, each of which hands back what it was given when nothing is on.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from handlers import pubsub_settle
from runtime import observe
from runtime.config import Config
from runtime.front_hooks import Hooks

if TYPE_CHECKING:
    from bridges.protocols import EventSource
    from bus import Bus
    from runtime.app_channel import AppChannel
    from runtime.components import Served
    from runtime.forward import Forwarder
    from runtime.plugins import Plugin

log = logging.getLogger("l8")
Handler = Callable[..., Any]


class Operability:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.hooks = Hooks()
        self.observer: observe.Observer | None = None
        self.plugins: list[Plugin] = []
        self._owns_observer = False

    async def start(self, instance: str) -> None:
        cfg = self.config
        from runtime import tracing

        found = tracing.settings(cfg)
        if found is not None:
            self.hooks.tracer = tracing.Tracer(found, instance=instance)
            where = found.endpoint or "the OTEL_EXPORTER_OTLP_* endpoint"
            log.info("tracing on (%s): OTLP %s to %s, sampling %g", found.origin, found.protocol, where, found.sampling)
        if cfg.metrics.enabled:
            from runtime.metrics import Metrics

            topics = {s.topic for s in cfg.subscriptions} | set(cfg.metrics.topics)
            self.hooks.metrics = Metrics(topics)
        if cfg.flow_control is not None:
            from runtime.flow_control import FlowControl

            self.hooks.flow = FlowControl(cfg.flow_control.rules, cfg.app.id)
        if cfg.dump is not None:
            from runtime.dump import Dump

            self.hooks.dump = Dump(cfg.dump, cfg.app.id)
            await self.hooks.dump.start()
        if self.hooks.tracer is not None or self.hooks.metrics is not None:
            self.observer = observe.Observer(self.hooks.tracer, self.hooks.metrics)
            if observe.OBSERVER is None:
                observe.OBSERVER = self.observer
                self._owns_observer = True
            else:
                log.warning("another l8 in this process already traces or counts; its observer is shared")
            if self.hooks.metrics is not None and pubsub_settle.on_given_up is None:
                metrics = self.hooks.metrics

                def given_up(bridge: EventSource, topic: str, how: str) -> None:
                    metrics.dead_lettered(str(getattr(bridge, "name", "")), topic, how)

                pubsub_settle.on_given_up = given_up

    # ---- hooks ----

    def handler(self, api: str, component: str, handler: Handler) -> Handler:
        return handler if self.observer is None else self.observer.handler(api, component, handler)

    def route(self, name: Callable[[Any], str], handler: Handler) -> Handler:
        return handler if self.observer is None else self.observer.route(name, handler)

    def app(self, channel: AppChannel) -> AppChannel:
        return channel if self.observer is None else self.observer.app(channel)

    def router(self, router: Any, component: str, system: str) -> Any:
        if self.observer is None:
            return router
        return observe.ObservedRouter(router, self.observer, component, system)

    def events_wrap(self) -> Callable[[Handler], Handler] | None:
        if self.observer is None or self.observer.tracer is None:
            return None
        observer = self.observer

        def wrap(handler: Handler) -> Handler:
            return observer.route(_event_span, handler)

        return wrap

    # ---- plugins ----

    async def start_plugins(self, bus: Bus, forwarder: Forwarder, served: list[Served], app: AppChannel | None) -> None:
        if not self.config.plugins and not _any_entry_points():
            return
        from runtime.plugins import PluginContext, start_plugins

        cfg = self.config
        bridges = {s.name: s.bridge for s in served}
        context = PluginContext(
            cfg, cfg.app.id, cfg.namespace, bus, forwarder, bridges, app, logging.getLogger("l8.plugins"),
            self.hooks.metrics,
        )  # fmt: skip
        self.plugins = await start_plugins(cfg, context)

    async def stop_plugins(self) -> None:
        if self.plugins:
            from runtime.plugins import stop_plugins

            await stop_plugins(self.plugins)

    def plugin_rows(self) -> list[dict[str, Any]]:
        return [p.row() for p in self.plugins]

    async def stop(self, timeout: float = 5.0) -> None:
        if self.hooks.dump is not None:
            await self.hooks.dump.stop()
        if self._owns_observer:
            observe.OBSERVER = None
            self._owns_observer = False
            pubsub_settle.on_given_up = None
        tracer, self.hooks.tracer = self.hooks.tracer, None
        if tracer is not None:
            # The exporter sends what is buffered synchronously; off the loop, within the budget.
            try:
                await asyncio.wait_for(asyncio.to_thread(tracer.shutdown), timeout)
            except TimeoutError:
                log.warning("tracing: the spans still buffered were not exported within %gs", timeout)


def _event_span(ctx: Any) -> str:
    # l8.<ns>.app.<app>.<event|stream>.<pubsub>.<topic key>
    parts = str(ctx.subject).split(".")
    return f"events/{parts[-2]}/{parts[-1]}" if len(parts) >= 7 else "events"


def _any_entry_points() -> bool:
    from importlib import metadata

    from runtime.plugins import GROUP

    return bool(metadata.entry_points(group=GROUP))
