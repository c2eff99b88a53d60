"""WebAssembly functions in a process: their host calls over the bus, their invocations, and the
functions of a sidecar's config with hot reload of their files.

- ``BusDispatcher`` carries a function's host calls as requests on the bus, under the function's
  name as the caller token of their subjects, exactly as an app's requests travel (local dispatch
  included).
- ``FunctionHost`` runs one function and answers its invocations as an app's sidecars do: a route
  of the process's one worker host on ``l8.<ns>.app.<name>.invoke.*`` in the queue group every
  process serving the function joins, found by local dispatch under the same stem as an app's.
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
from bus.codec import HDR_TRACEPARENT, request_headers
from bus.subjects import invoke_queue, invoke_stem, invoke_subject, invoke_wildcard, request_subject
from handlers.functions import Function, FunctionSpec, ModuleError
from handlers.wasm.host import DispatchError
from runtime import errors, observe
from runtime.config import Config
from runtime.invoke import CALLEE_APP_ID, CALLER_APP_ID, metadata_of

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


def invocation_metadata(name: str, ctx: RequestContext) -> dict[str, str]:
    """What a function sees as ``metadata`` of an invocation: what an app's ``OnInvoke`` would get
    (the caller's metadata, the callee's and the caller's app ids, the traceparent), as strings;
    binary (``-bin``) values stay base64, as gRPC writes them in text."""
    found: dict[str, str] = {}
    for key, value in metadata_of(ctx.headers):
        found[key] = base64.b64encode(value).decode("ascii") if isinstance(value, bytes) else value
    # Last, so that no header a caller sent can stand in for them.
    found[CALLEE_APP_ID] = name
    if ctx.app_id:
        found[CALLER_APP_ID] = ctx.app_id
    if ctx.traceparent:
        found[HDR_TRACEPARENT] = ctx.traceparent
    return found


class FunctionHost:
    """A function and its route on the process's worker host; ``start``/``stop`` are idempotent."""

    def __init__(
        self, workers: WorkerHost, namespace: str, spec: FunctionSpec, *, cache_dir: Path | None, inline_fuel: int
    ) -> None:
        self.function = Function(
            spec, BusDispatcher(workers.bus, namespace), cache_dir=cache_dir, inline_fuel=inline_fuel
        )
        self._workers = workers
        self._ns = namespace
        self._route: Route | None = None
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
        """The route of the function's invocations, in the queue group an app's sidecars would join;
        its own bound is the function's concurrency."""
        observer = observe.OBSERVER
        name = f"function/{self.name}"
        handler = self.serve if observer is None else observer.route(lambda ctx: name, self.serve)
        return Route(
            invoke_wildcard(self._ns, self.name),
            invoke_queue(self._ns, self.name),
            handler,
            f"invocations of function {self.name}",
            local=invoke_stem(self._ns, self.name),
            gate=asyncio.Semaphore(self.function.spec.limits.concurrency),
        )

    async def open(self) -> None:
        """Join the function's queue group (idempotent)."""
        if self._state != "running" or self._route is not None or not self.function.spec.invoke:
            return
        self._route = await self._workers.serve(self.route())

    async def serve(self, op: str, payload: bytes, ctx: RequestContext) -> bytes:
        """An invocation of the function's name, as the worker host hands it to any handler."""
        if op != "invoke":
            raise Unimplemented(f"function {self.name} has no operation {op!r}")
        return await self.function.answer(payload, invocation_metadata(self.name, ctx), ctx.deadline)

    async def stop(self) -> None:
        """Leave the queue group (answering what was routed here), then stop the function."""
        if self._state != "running":
            self._state = "stopped"
            return
        self._state = "stopped"
        route, self._route = self._route, None
        if route is not None:
            await self._workers.leave(route)
        await self.function.stop()

    def row(self) -> dict[str, Any]:
        """The function as metadata shows it."""
        fn = self.function
        row: dict[str, Any] = {"name": fn.name, "status": fn.status, "invoke": fn.spec.invoke, "digest": fn.digest}
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
        cache = config.wasm.cache_dir or str(Path(config.data_dir) / "wasm-cache")
        self.cache_dir = Path(cache)
        self._watched = [
            _Watched(
                FunctionHost(
                    workers, config.namespace, fc.spec(), cache_dir=self.cache_dir, inline_fuel=config.wasm.inline_fuel
                ),
                Path(fc.module),
            )
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
