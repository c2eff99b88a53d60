"""Building the components a process serves: bridges from the registry, wrapped in handlers."""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass
from typing import Any

from bridges import registry
from bridges.errors import L8Error
from bridges.protocols import Probed
from bridges.registry import BridgeEnv
from bus.worker import Handler
from runtime.config import ComponentConfig, Config
from runtime.health import Health, Status
from runtime.secretrefs import Redacting, Redactor, resolve

log = logging.getLogger("l8.runtime.components")

# api -> the handler class serving one component of it, imported when a config needs it.
HANDLERS = {
    "state": "handlers.state:StateHandler",
    "configuration": "handlers.configuration:ConfigurationHandler",
    "lock": "handlers.lock:LockHandler",
    "sequencer": "handlers.sequencer:SequencerHandler",
    "pubsub": "handlers.pubsub:PubSubHandler",
    "file": "handlers.file:FileHandler",
    "secrets": "handlers.secrets:SecretsHandler",
    "bindings": "handlers.bindings:BindingsHandler",
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
    """The components of the apis this process serves; started in config order (secret stores
    first, since other components may read their metadata from them), stopped in reverse."""

    def __init__(self, config: Config, env: BridgeEnv, health: Health) -> None:
        self._config = config
        self._env = env
        self._health = health
        self.served: list[Served] = []
        self.redactor = Redactor()
        self._resolving: dict[str, Any] = {}  # secret stores opened only to resolve references

    async def start(self, apis: list[str]) -> None:
        ordered = sorted(self._config.components.items(), key=lambda item: item[1].kind != "secrets")
        try:
            for name, comp in ordered:
                if comp.kind in apis:
                    await self._start_one(name, comp)
        finally:
            await self._close_resolving()

    async def start_one(self, name: str, comp: ComponentConfig, config: Config) -> Served:
        """Start one more component while the process runs (runtime/reload.py); the caller serves it,
        and it is not in ``served`` until then."""
        self._config = config  # its secret references name the stores of the config it came with
        try:
            await self._start_one(name, comp)
        finally:
            await self._close_resolving()
        return self.served.pop()

    def adopt(self, served: Served) -> None:
        """``served`` is this process's from now on (stopped with the rest)."""
        self.served = [s for s in self.served if s.name != served.name] + [served]

    def release(self, name: str) -> Served | None:
        """Take ``name`` out of ``served`` (the caller stops it)."""
        for i, served in enumerate(self.served):
            if served.name == name:
                return self.served.pop(i)
        return None

    async def _start_one(self, name: str, comp: ComponentConfig) -> None:
        self._health.set(name, Status.INIT)
        bridge: Any = None
        try:
            metadata = comp.metadata
            if comp.secret_refs:
                self.redactor.install()
                metadata = await resolve(self._config, comp, self._secret_store, self.redactor)
            bridge = registry.create(comp.kind, comp.type, name, metadata, self._env)
            await bridge.start()
            # Inside the try: a handler refuses bad metadata (defaultGroup...) with ValueError too.
            handler = _handler_class(comp.kind)(name, bridge, metadata)
        except BaseException as exc:
            # A bridge may have taken a connection or a shared client before it failed: give it back.
            if bridge is not None:
                await _stop_quietly(name, bridge)
            if not isinstance(exc, (L8Error, ValueError, OSError)):
                raise
            reason = self.redactor.redact(str(exc))
            self._health.set(name, Status.DOWN, reason)
            raise ComponentError(f"component {name!r} ({comp.kind} {comp.type}) failed to start: {reason}") from None
        if comp.secret_refs:
            handler = Redacting(handler, self.redactor)
        self.served.append(Served(comp.kind, name, bridge, handler))
        self._health.set(name, Status.UP)
        log.debug("component %s (%s %s) is up", name, comp.kind, comp.type)

    async def _secret_store(self, name: str) -> Any:
        for served in self.served:
            if served.name == name:
                return served.bridge
        store = self._resolving.get(name)
        if store is None:
            comp = self._config.components[name]
            store = registry.create(comp.kind, comp.type, name, comp.metadata, self._env)
            await store.start()
            self._resolving[name] = store
        return store

    async def _close_resolving(self) -> None:
        while self._resolving:
            _, store = self._resolving.popitem()
            try:
                await store.stop()
            except Exception as exc:
                log.warning("a secret store opened to resolve references did not stop cleanly: %s", exc)

    def probes(self) -> dict[str, Any]:
        """``ping`` of every served component whose bridge has one (bridges/protocols.py ``Probed``)."""
        return {s.name: s.bridge.ping for s in self.served if isinstance(s.bridge, Probed)}

    async def stop(self) -> None:
        while self.served:
            served = self.served.pop()
            await _stop_quietly(served.name, served.bridge)
        self.redactor.uninstall()


async def stop_quietly(name: str, bridge: Any) -> None:
    await _stop_quietly(name, bridge)


async def _stop_quietly(name: str, bridge: Any) -> None:
    try:
        await bridge.stop()
    except Exception as exc:
        log.warning("component %s did not stop cleanly: %s", name, exc)


def _handler_class(api: str) -> Any:
    module, _, attr = HANDLERS[api].partition(":")
    return getattr(importlib.import_module(module), attr)
