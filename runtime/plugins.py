"""API plugins: a plugin adds gRPC services of its own to l8's port.

A plugin is named ``package.module:factory`` in ``plugins: [...]``, or installed under the
``l8.plugins`` entry-point group (``[project.entry-points."l8.plugins"] name = "pkg.mod:factory"``).
``factory(context)`` gets a ``PluginContext`` (the bus, a forwarder to call components as the fronts
do, the running components, the app channel, a logger and l8's metrics) and returns an object with

- ``register(server)``: adds its services the way generated code does
  (``add_GreeterServicer_to_server(servicer, server)``); ``server`` takes
  ``add_generic_rpc_handlers`` and ``add_registered_method_handlers``;
- optionally ``name``, ``async start()`` and ``async stop()``.

Its services are served behind the same API token and hooks (flow control, spans, metrics) as
l8's own, listed by reflection and in metadata. A plugin that cannot be imported, whose factory or
``start`` fails, or that registers nothing stops l8's start-up with a message naming it.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import metadata as importlib_metadata
from typing import TYPE_CHECKING, Any

import grpc

if TYPE_CHECKING:
    from bus import Bus
    from runtime.app_channel import AppChannel
    from runtime.config import Config
    from runtime.forward import Forwarder
    from runtime.metrics import Metrics

GROUP = "l8.plugins"
log = logging.getLogger("l8.plugins")


class PluginError(Exception):
    """A plugin that cannot start; the message names it."""


@dataclass(slots=True)
class PluginContext:
    config: Config
    app_id: str
    namespace: str
    bus: Bus
    forwarder: Forwarder
    components: dict[str, Any]  # name -> the running bridge of each component this process serves
    app: AppChannel | None
    logger: logging.Logger
    metrics: Metrics | None


class _Registrar:
    """What a plugin's ``register`` gets as its server: collects the handlers it adds."""

    def __init__(self) -> None:
        self.handlers: list[grpc.GenericRpcHandler] = []
        self.services: list[str] = []

    def add_generic_rpc_handlers(self, handlers: Sequence[grpc.GenericRpcHandler]) -> None:
        for handler in handlers:
            self.handlers.append(handler)
            name = getattr(handler, "service_name", None)
            if callable(name):
                self.services.append(str(name()))

    def add_registered_method_handlers(self, service: str, handlers: dict[str, grpc.RpcMethodHandler]) -> None:
        self.handlers.append(grpc.method_handlers_generic_handler(service, handlers))
        self.services.append(service)


@dataclass(slots=True)
class Plugin:
    name: str
    source: str  # "config" or "entry point <dist>"
    instance: Any
    registered: list[grpc.GenericRpcHandler] = field(default_factory=list)
    services: tuple[str, ...] = ()
    started: bool = False

    def handlers(self) -> list[grpc.GenericRpcHandler]:
        return list(self.registered)

    def row(self) -> dict[str, Any]:
        return {"name": self.name, "services": list(self.services), "source": self.source}


def _factory(spec: str) -> Any:
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise PluginError(f"plugin {spec!r}: name it as package.module:factory")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise PluginError(f"plugin {spec!r} cannot be imported: {type(exc).__name__}: {exc}") from None
    found: Any = module
    for part in attr.split("."):
        found = getattr(found, part, None)
        if found is None:
            raise PluginError(f"plugin {spec!r}: module {module_name!r} has no {attr!r}")
    if not callable(found):
        raise PluginError(f"plugin {spec!r}: {attr!r} is not callable")
    return found


def discover(config: Config) -> list[tuple[str, str, Any]]:
    """(name, source, factory) of every plugin: the config's, then the installed entry points'."""
    found: list[tuple[str, str, Any]] = [(spec, "config", _factory(spec)) for spec in config.plugins]
    named = {spec for spec in config.plugins}
    for entry in importlib_metadata.entry_points(group=GROUP):
        if entry.value in named:
            continue  # named in config as well: loaded once
        try:
            factory = entry.load()
        except Exception as exc:
            raise PluginError(
                f"plugin {entry.name!r} (entry point {entry.value!r}) cannot be loaded: {type(exc).__name__}: {exc}"
            ) from None
        dist = getattr(entry, "dist", None)
        found.append((entry.name, f"entry point of {getattr(dist, 'name', '?')}", factory))
    return found


async def start_plugins(config: Config, context: PluginContext) -> list[Plugin]:
    """Build, register and start every plugin; on a failure, stop those started and raise PluginError."""
    plugins: list[Plugin] = []
    try:
        for name, source, factory in discover(config):
            try:
                instance = factory(context)
                registrar = _Registrar()
                instance.register(registrar)
            except Exception as exc:
                raise PluginError(f"plugin {name!r} failed to start: {type(exc).__name__}: {exc}") from None
            if not registrar.handlers:
                raise PluginError(f"plugin {name!r} registered no gRPC service")
            plugin = Plugin(
                str(getattr(instance, "name", name) or name),
                source,
                instance,
                registrar.handlers,
                tuple(dict.fromkeys(registrar.services)),
            )
            start = getattr(instance, "start", None)
            if start is not None:
                try:
                    await start()
                except Exception as exc:
                    raise PluginError(f"plugin {name!r} failed to start: {type(exc).__name__}: {exc}") from None
            plugin.started = True
            plugins.append(plugin)
            log.info("plugin %s serves %s (%s)", plugin.name, ", ".join(plugin.services) or "?", source)
    except BaseException:
        await stop_plugins(plugins)
        raise
    return plugins


async def stop_plugins(plugins: list[Plugin]) -> None:
    while plugins:
        plugin = plugins.pop()
        stop = getattr(plugin.instance, "stop", None)
        if stop is None or not plugin.started:
            continue
        try:
            await stop()
        except Exception as exc:
            log.warning("plugin %s did not stop cleanly: %s", plugin.name, exc)
