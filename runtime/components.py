"""Building the components a process serves: bridges from the registry, wrapped in handlers."""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass
from typing import Any

from bridges import registry
from bridges.errors import L8Error
from bridges.registry import BridgeEnv
from bus.worker import Handler
from runtime.config import Config
from runtime.health import Health, Status

log = logging.getLogger("l8.runtime.components")

# api -> the handler class serving one component of it, imported when a config needs it.
HANDLERS = {
    "state": "handlers.state:StateHandler",
    "configuration": "handlers.configuration:ConfigurationHandler",
    "lock": "handlers.lock:LockHandler",
    "sequencer": "handlers.sequencer:SequencerHandler",
    "pubsub": "handlers.pubsub:PubSubHandler",
    "hello": "handlers.hello:HelloHandler",
}


class ComponentError(Exception):
    pass


@dataclass(slots=True)
class Served:
    api: str
    name: str
    bridge: Any
    handler: Handler


class Components:
    """The components of the apis this process serves; started in config order, stopped in reverse."""

    def __init__(self, config: Config, env: BridgeEnv, health: Health) -> None:
        self._config = config
        self._env = env
        self._health = health
        self.served: list[Served] = []

    async def start(self, apis: list[str]) -> None:
        for name, comp in self._config.components.items():
            if comp.kind not in apis:
                continue
            self._health.set(name, Status.INIT)
            try:
                bridge = registry.create(comp.kind, comp.type, name, comp.metadata, self._env)
                await bridge.start()
                # Inside the try: a handler refuses bad metadata (defaultGroup...) with ValueError too.
                handler = _handler_class(comp.kind)(name, bridge, comp.metadata)
            except (L8Error, ValueError, OSError) as exc:
                self._health.set(name, Status.DOWN, str(exc))
                raise ComponentError(f"component {name!r} ({comp.kind} {comp.type}) failed to start: {exc}") from exc
            self.served.append(Served(comp.kind, name, bridge, handler))
            self._health.set(name, Status.UP)
            log.debug("component %s (%s %s) is up", name, comp.kind, comp.type)

    async def stop(self) -> None:
        while self.served:
            served = self.served.pop()
            try:
                await served.bridge.stop()
            except Exception as exc:
                log.warning("component %s did not stop cleanly: %s", served.name, exc)


def _handler_class(api: str) -> Any:
    module, _, attr = HANDLERS[api].partition(":")
    return getattr(importlib.import_module(module), attr)
