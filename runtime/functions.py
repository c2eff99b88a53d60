"""WebAssembly functions in a process: their host calls over the bus, their invocations, and the
functions of a sidecar's config with hot reload of their files.

- ``BusDispatcher`` carries a function's host calls as requests on the bus, under the function's
  name as the caller token of their subjects, exactly as an app's requests travel (local dispatch
  included).
- ``FunctionHost`` runs one function as an app's sidecars serve an app: its invocations on a route
  of the process's one worker host on ``l8.<ns>.app.<name>.invoke.*``, its events on
  ``l8.<ns>.app.<name>.event.*.*`` (runtime/function_events.py), each in the queue group every
  process serving the function joins and found by local dispatch under the same stem as an app's;
  and it announces the function's subscriptions under its name (runtime/subscriptions.py).
- ``SidecarFunctions`` builds the functions of ``functions: [...]``. A module that fails to load
  does not stop l8: the function is logged at ERROR with the reason, reports ``failed`` in
  metadata, and its calls answer UNAVAILABLE at once. Each file is checked every
  ``wasm.reload_interval`` seconds; a changed one is compiled and checked off the event loop and
  swapped in, or refused with a log line while the old version keeps serving.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bridges.errors import Unimplemented
from bus import Bus, BusError, RequestContext, Route, WorkerHost
from bus.codec import request_headers
from bus.subjects import invoke_queue, invoke_stem, invoke_subject, invoke_wildcard, request_subject
from handlers.functions import Function, ModuleError
from handlers.wasm.host import DispatchError
from runtime import errors, observe
from runtime.config import Config
from runtime.forward import Forwarder
from runtime.function_config import FunctionConfig
from runtime.function_events import FunctionEvents
from runtime.invoke import invocation_metadata
from runtime.subscriptions import Announcer

log = logging.getLogger("l8.functions")


class BusDispatcher:
    """Host calls as bus requests (the ``Dispatcher`` of handlers/wasm/host.py)."""

    def __init__(self, bus: Bus, namespace: str) -> None:
        self._bus = bus
        self._ns = namespace

    async def request(self, api: str, component: str, op: str, payload: bytes, *, app_id: str, timeout: float) -> bytes:
        return await self._call(request_subject(self._ns, api, component, op, app_id), payload, timeout, api, component)

    async def invoke(self, target: str, payload: bytes, *, app_id: str, timeout: float) -> bytes:
        return await self._call(invoke_subject(self._ns, target, app_id), payload, timeout, "app", target)

    async def _call(self, subject: str, payload: bytes, timeout: float, api: str, component: str) -> bytes:
        observer = observe.OBSERVER
        try:
            if observer is None:
                return await self._bus.call(subject, payload, timeout=timeout, headers=request_headers(timeout))
            data: bytes = await observer.call(
                self._bus, subject, payload, timeout=timeout, headers=request_headers(timeout), api=api,
                component=component,
            )  # fmt: skip
            return data
        except BusError as exc:
            code, message = errors.from_bus_error(exc, f"{api} {component!r}")
            raise DispatchError(code.value, message) from None


def function_metadata(name: str, ctx: RequestContext) -> dict[str, str]:
    """An invocation's metadata as a function sees it in its meta: what an app's ``OnInvoke`` gets
    (runtime/invoke.py), as strings; binary (``-bin``) values stay base64, as gRPC writes them in text."""
    return {
        key: base64.b64encode(value).decode("ascii") if isinstance(value, bytes) else value
        for key, value in invocation_metadata(name, ctx)
    }


class FunctionHost:
    """A function, its routes on the process's worker host (invocations, events) and the
    announcement of its subscriptions; ``start``/``stop`` are idempotent."""

    def __init__(
        self, workers: WorkerHost, config: Config, function: FunctionConfig, *, cache_dir: Path | None
    ) -> None:
        spec = function.spec()
        self.function = Function(
            spec, BusDispatcher(workers.bus, config.namespace), cache_dir=cache_dir, inline_fuel=config.wasm.inline_fuel
        )
        self.config = function
        self._workers = workers
        self._ns = config.namespace
        # Calls at once, invocations and events together: one lane each.
        self._gate = asyncio.Semaphore(spec.limits.concurrency)
        self.events = FunctionEvents(self.function, config.namespace, self._gate)
        specs = function.event_specs()
        self._announcer = (
            Announcer(config, Forwarder(workers.bus, config), None, app_id=spec.name, specs=specs) if specs else None
        )
        self._routes: list[Route] = []
        self._state = "new"

    @property
    def name(self) -> str:
        return self.function.name

    async def start(self) -> None:
        """Start the function; it answers nothing until ``open``, so load a module first."""
        if self._state != "new":
            return
        self._state = "running"
        await self.function.start()

    def route(self) -> Route:
        """The route of the function's invocations, in the queue group an app's sidecars would join."""
        observer = observe.OBSERVER
        name = f"function/{self.name}"
        handler = self.serve if observer is None else observer.route(lambda ctx: name, self.serve)
        return Route(
            invoke_wildcard(self._ns, self.name),
            invoke_queue(self._ns, self.name),
            handler,
            f"invocations of function {self.name}",
            local=invoke_stem(self._ns, self.name),
            gate=self._gate,
        )

    async def open(self) -> None:
        """Join the function's queue groups and announce its subscriptions (idempotent). Opened even
        when no version loaded: invocations then answer the reason at once, and events wait."""
        if self._state != "running" or self._routes:
            return
        if self.function.spec.invoke:
            self._routes.append(await self._workers.serve(self.route()))
        if self._announcer is not None:
            self._routes.append(await self._workers.serve(self.events.route()))
            await self._announcer.start()

    async def serve(self, op: str, payload: bytes, ctx: RequestContext) -> bytes:
        """An invocation of the function's name, as the worker host hands it to any handler."""
        if op != "invoke":
            raise Unimplemented(f"function {self.name} has no operation {op!r}")
        return await self.function.answer(payload, function_metadata(self.name, ctx), ctx.deadline)

    async def stop(self) -> None:
        """Withdraw the subscriptions, leave the queue groups (answering what was routed here),
        then stop the function."""
        if self._state != "running":
            self._state = "stopped"
            return
        self._state = "stopped"
        if self._announcer is not None:
            await self._announcer.stop()
        routes, self._routes = self._routes, []
        await asyncio.gather(*(self._workers.leave(route) for route in routes))
        await self.function.stop()

    def row(self) -> dict[str, Any]:
        """The function as metadata shows it."""
        fn = self.function
        row: dict[str, Any] = {
            "name": fn.name,
            "status": fn.status,
            "invoke": fn.spec.invoke,
            "subscriptions": [
                {"pubsubname": s.pubsub, "topic": s.topic, "deadLetterTopic": s.deadLetterTopic or ""}
                for s in self.config.subscribe
            ],
            "digest": fn.digest,
        }
        if fn.status != "ok":
            row["reason"] = fn.reason
        return row


@dataclass(slots=True)
class _Watched:
    host: FunctionHost
    path: Path
    stamp: tuple[int, int] | None = None  # (mtime_ns, size) of the file last read


class SidecarFunctions:
    """The ``functions`` of a sidecar's config; ``start``/``stop`` are idempotent."""

    def __init__(self, config: Config, workers: WorkerHost) -> None:
        self._config = config
        self.cache_dir = config.wasm.cache_path()
        self._watched = [
            _Watched(FunctionHost(workers, config, fc, cache_dir=self.cache_dir), Path(fc.module))
            for fc in config.functions
        ]
        self._task: asyncio.Task[None] | None = None
        self._state = "new"

    @property
    def hosts(self) -> list[FunctionHost]:
        return [w.host for w in self._watched]

    def rows(self) -> list[dict[str, Any]]:
        return [w.host.row() for w in self._watched]

    async def start(self) -> None:
        if self._state != "new":
            return
        self._state = "running"
        for watched in self._watched:
            await watched.host.start()
            await self._load(watched, first=True)
            # Opened even when the load failed: its calls then answer the reason at once.
            await watched.host.open()
        if self._watched:
            self._task = asyncio.create_task(self._watch(), name="l8-functions-reload")

    async def stop(self) -> None:
        if self._state != "running":
            self._state = "stopped"
            return
        self._state = "stopped"
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await asyncio.gather(*(w.host.stop() for w in self._watched))

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self._config.wasm.reload_interval)
            for watched in self._watched:
                try:
                    await self._load(watched, first=False)
                except Exception:
                    log.exception("checking the module of function %s failed", watched.host.name)

    async def _load(self, watched: _Watched, *, first: bool) -> None:
        fn = watched.host.function
        try:
            st = os.stat(watched.path)
        except OSError as exc:
            if first:
                self._failed(fn, f"cannot read {watched.path}: {exc.strerror or exc}")
            return
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp == watched.stamp:
            return
        watched.stamp = stamp
        try:
            wasm = await asyncio.to_thread(watched.path.read_bytes)
        except OSError as exc:
            self._failed(fn, f"cannot read {watched.path}: {exc.strerror or exc}")
            return
        if fn.version is not None and fn.version.digest == _sha(wasm):
            return  # touched, not changed
        try:
            version = await fn.load(wasm)
        except ModuleError as exc:
            if fn.version is None:
                self._failed(fn, f"{watched.path}: {exc}")
            else:
                log.error(
                    "function %s: the new %s is refused, the loaded version keeps serving: %s",
                    fn.name,
                    watched.path,
                    exc,
                )
            return
        log.info(
            "function %s %s %s (sha256 %s, %s)",
            fn.name,
            "loaded" if first else "reloaded",
            watched.path,
            version.digest[:12],
            "from the compile cache" if version.cached else "compiled",
        )

    @staticmethod
    def _failed(fn: Function, reason: str) -> None:
        fn.fail(reason)
        log.error("function %s failed to load: %s", fn.name, reason)


def _sha(wasm: bytes) -> str:
    from handlers.wasm.engine import digest

    return digest(wasm)
