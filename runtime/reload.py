"""Live reconfiguration: components added, removed or changed while l8 runs, from a changed config
file (``reload.watch``) or Layotto's ``Lifecycle.ApplyConfiguration`` (a component's new metadata).

Each component a process serves is a ``Live`` handler on its own route. A change builds the new
components first; if any fails to start, none is applied, the running config stays, and a log line
says why. Otherwise a changed component's handler is swapped: requests that started on the old one
finish on it (it is stopped once they have, within ``shutdown_timeout``), new ones go to the new
one. An added component joins its queue group; a removed one leaves it, answering what was routed
to it first. The front's list of components, metadata and health follow; flow control rules and
``log_level`` are applied too, and any other key that changed is logged as needing a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from google.protobuf.message import DecodeError  # type: ignore[import-untyped]

from bridges.errors import InvalidArgument
from bus import RequestContext, Route, subjects
from bus.stream import serve_streams
from handlers.base import check_metadata, guarded
from handlers.proto import lifecycle_pb2
from runtime.components import ComponentError, Served, stop_quietly
from runtime.config import ComponentConfig, Config, ConfigError

if TYPE_CHECKING:
    from runtime.sidecar import Sidecar

log = logging.getLogger("l8.reload")
Handler = Callable[[str, bytes, RequestContext], Awaitable[Any]]
# Keys the reload applies; a change of any other one waits for a restart.
APPLIED = frozenset({"components", "flow_control", "log_level", "reload"})


@dataclass(slots=True, eq=False)
class _Generation:
    served: Served
    handler: Handler
    in_flight: int = 0
    retired: asyncio.Event | None = None  # set once retired and drained


class Live:
    """A component's handler that can be swapped; each request finishes on the one it started on."""

    def __init__(self, owner: LiveComponents, served: Served, handler: Handler) -> None:
        self._owner = owner
        self.name = served.name
        self.current = _Generation(served, handler)

    async def __call__(self, op: str, payload: bytes, ctx: RequestContext) -> Any:
        generation = self.current
        generation.in_flight += 1
        try:
            if op == "apply" and not hasattr(generation.served.handler, "apply"):
                return await self._owner.apply_request(self.name, payload)
            return await generation.handler(op, payload, ctx)
        finally:
            generation.in_flight -= 1
            if generation.retired is not None and generation.in_flight == 0:
                generation.retired.set()

    def swap(self, served: Served, handler: Handler) -> _Generation:
        old, self.current = self.current, _Generation(served, handler)
        old.retired = asyncio.Event()
        if old.in_flight == 0:
            old.retired.set()
        return old


class LiveComponents:
    """The components of a sidecar or worker, each on its own route, changeable while it runs."""

    def __init__(self, sidecar: Sidecar, loader: Callable[[], Config] | None = None, path: Path | None = None) -> None:
        self._sidecar = sidecar
        self._loader = loader
        self._path = path
        self._live: dict[str, tuple[Live, Route]] = {}
        self._lock = asyncio.Lock()
        self._retiring: set[asyncio.Task[None]] = set()
        self._task: asyncio.Task[None] | None = None
        self._stamp: tuple[int, int] | None = None
        self._started = False  # the worker host runs: components join it with serve()

    def _chain(self, served: Served) -> Handler:
        sidecar = self._sidecar
        assert sidecar.bus is not None
        streams = getattr(served.handler, "streams", None)
        handler: Handler = guarded(served.handler)
        if streams:
            handler = serve_streams(sidecar.bus, handler, streams)
        return sidecar.ops.handler(served.api, served.name, handler)

    async def serve(self, served: Served) -> None:
        """Answer ``served``'s requests (added before the worker host starts, or served while it runs)."""
        sidecar = self._sidecar
        workers = sidecar.workers
        assert workers is not None
        live = Live(self, served, self._chain(served))
        if not self._started:
            route = workers.add(served.api, served.name, live)
        else:
            ns = sidecar.config.namespace
            group = subjects.queue_group(ns, served.api, served.name)
            wildcard = subjects.request_wildcard(ns, served.api, served.name)
            route = await workers.serve(Route(wildcard, group, live, f"{served.api}/{served.name}", group))
        self._live[served.name] = (live, route)

    # ---- applying a config ----

    async def apply(self, new: Config) -> list[str]:
        """Apply ``new``'s components (and rules); returns what changed. A component that fails to
        start raises ComponentError and nothing is applied."""
        async with self._lock:
            return await self._apply(new)

    async def _apply(self, new: Config) -> list[str]:
        sidecar = self._sidecar
        old = sidecar.config
        assert sidecar.components is not None
        apis = set(sidecar.apis)
        before = {n: c for n, c in old.components.items() if c.kind in apis}
        after = {n: c for n, c in new.components.items() if c.kind in apis}
        changed = [n for n in after if n in before and _differs(before[n], after[n])]
        added = [n for n in after if n not in before]
        removed = [n for n in before if n not in after]
        started: dict[str, Served] = {}
        try:
            for name in [*changed, *added]:
                started[name] = await sidecar.components.start_one(name, after[name], new)
        except BaseException:
            for served in started.values():
                await stop_quietly(served.name, served.bridge)
            for name in changed:
                sidecar.health.set(name, _status_up(), "")  # the old one still serves
            for name in added:
                sidecar.health.indicators.pop(name, None)
            raise
        notes: list[str] = []
        for name in changed:
            await self._replace(name, started[name])
            notes.append(f"changed {name}")
        for name in added:
            sidecar.components.adopt(started[name])
            await self.serve(started[name])
            await self._begin(started[name])
            notes.append(f"added {name}")
        for name in removed:
            await self._remove(name)
            notes.append(f"removed {name}")
        notes += self._rules(old, new)
        sidecar.config = old.model_copy(update={k: getattr(new, k) for k in APPLIED})
        self._everywhere(sidecar.config)
        for key in sorted(set(Config.model_fields) - APPLIED):
            if getattr(old, key) != getattr(new, key):
                log.warning("config %s changed; it takes effect when l8 restarts", key)
        return notes

    def _rules(self, old: Config, new: Config) -> list[str]:
        notes = []
        flow = self._sidecar.ops.hooks.flow
        if old.flow_control != new.flow_control:
            if flow is not None:
                flow.reload(new.flow_control.rules if new.flow_control is not None else [])
                notes.append("flow control rules")
            else:
                log.warning("flow_control was off at start; turning it on takes a restart")
        if old.log_level != new.log_level:
            logging.getLogger().setLevel(new.log_level.upper())
            notes.append(f"log level {new.log_level}")
        return notes

    def _everywhere(self, config: Config) -> None:
        """The running parts that list components see the new ones."""
        sidecar = self._sidecar
        if sidecar.forwarder is not None:
            sidecar.forwarder.set_components(config)
        if sidecar.metadata is not None:
            sidecar.metadata.config = config
        if sidecar.monitor is not None and sidecar.components is not None:
            sidecar.probes.clear()
            sidecar.probes.update(sidecar.components.probes())

    async def _begin(self, served: Served) -> None:
        """What a component does besides answering requests: watch its store, deliver its events."""
        sidecar = self._sidecar
        await sidecar.start_watcher(served)
        await sidecar.deliver(served)

    async def _replace(self, name: str, served: Served) -> None:
        sidecar = self._sidecar
        assert sidecar.components is not None
        live, _ = self._live[name]
        await sidecar.stop_deliveries_of(name)
        old = live.swap(served, self._chain(served))
        sidecar.components.adopt(served)
        await self._begin(served)
        task = asyncio.create_task(self._retire(old), name=f"l8-retire-{name}")
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def _retire(self, old: _Generation) -> None:
        assert old.retired is not None
        try:
            await asyncio.wait_for(old.retired.wait(), self._sidecar.config.shutdown_timeout)
        except TimeoutError:
            log.warning("component %s: requests on its old configuration did not finish in time", old.served.name)
        await stop_quietly(old.served.name, old.served.bridge)

    async def _remove(self, name: str) -> None:
        sidecar = self._sidecar
        assert sidecar.workers is not None and sidecar.components is not None
        _, route = self._live.pop(name)
        await sidecar.workers.leave(route, min(10.0, sidecar.config.shutdown_timeout))
        await sidecar.stop_deliveries_of(name)
        served = sidecar.components.release(name)
        if served is not None:
            await stop_quietly(name, served.bridge)
        sidecar.health.indicators.pop(name, None)

    # ---- Lifecycle.ApplyConfiguration ----

    async def apply_request(self, name: str, payload: bytes) -> bytes:
        """A component's new full metadata (Layotto's ApplyConfiguration), for components that do not
        take it themselves: the component is rebuilt with it, in this process."""
        try:
            config = lifecycle_pb2.DynamicConfiguration.FromString(payload).component_config
        except DecodeError:
            raise InvalidArgument("the request is not a valid DynamicConfiguration") from None
        metadata = check_metadata(config.metadata, f"component {name!r}")
        sidecar = self._sidecar
        current = sidecar.config.components.get(name)
        if current is None:
            raise InvalidArgument(f"component {name!r} is not configured here")
        components = dict(sidecar.config.components)
        components[name] = ComponentConfig(kind=current.kind, type=current.type, metadata=metadata)
        new = sidecar.config.model_copy(update={"components": components})
        try:
            await self.apply(new)
        except ComponentError as exc:
            raise InvalidArgument(f"{exc}; the running configuration stays") from None
        log.info("component %s took a new configuration through Lifecycle.ApplyConfiguration", name)
        data: bytes = lifecycle_pb2.ApplyConfigurationResponse().SerializeToString()
        return data

    # ---- the config file ----

    async def start(self) -> None:
        """Once the process runs: later components are served at once; the file is watched."""
        self._started = True
        if self._task is not None or self._loader is None or self._path is None:
            return
        if not self._sidecar.config.reload.watch:
            return
        self._stamp = _stamp(self._path)
        self._task = asyncio.create_task(self._watch(), name="l8-config-watch")
        log.info("watching %s for changes", self._path)

    async def _watch(self) -> None:
        assert self._path is not None and self._loader is not None
        while True:
            await asyncio.sleep(self._sidecar.config.reload.interval)
            stamp = _stamp(self._path)
            if stamp is None or stamp == self._stamp:
                continue
            self._stamp = stamp
            await self.reload()

    async def reload(self) -> bool:
        """Load the file again and apply it; False (with the reason logged) when it is refused."""
        assert self._loader is not None
        try:
            new = await asyncio.to_thread(self._loader)
            notes = await self.apply(new)
        except (ConfigError, ComponentError) as exc:
            log.error("config %s refused, the running config stays: %s", self._path, exc)
            return False
        except Exception as exc:
            log.exception("config %s refused, the running config stays: %s", self._path, exc)
            return False
        log.info("config %s applied: %s", self._path, ", ".join(notes) or "nothing changed")
        return True

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._retiring:
            await asyncio.gather(*list(self._retiring), return_exceptions=True)


def _differs(a: ComponentConfig, b: ComponentConfig) -> bool:
    return a.model_dump() != b.model_dump() or a.secret_refs != b.secret_refs


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size


def _status_up() -> Any:
    from runtime.health import Status

    return Status.UP
