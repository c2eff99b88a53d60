"""WebAssembly functions in a process: their host calls over the bus, their invocation subject, and
the functions of a sidecar's config with hot reload of their files.

- ``BusDispatcher`` carries a function's host calls as requests on the bus, under the function's
  name as app id, exactly as an app's requests travel (local dispatch included).
- ``FunctionHost`` runs one function and answers ``l8.<ns>.app.<name>.invoke`` for it through a
  worker host of its own, in a queue group every process serving the function joins.
- ``SidecarFunctions`` builds the functions of ``functions: [...]``. A module that fails to load
  does not stop l8: the function is logged at ERROR with the reason, reports ``failed`` in
  metadata, and its calls answer UNAVAILABLE at once. Each file is checked every
  ``wasm.reload_interval`` seconds; a changed one is compiled and checked off the event loop and
  swapped in, or refused with a log line while the old version keeps serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bus import Bus, BusError, WorkerHost
from bus.codec import request_headers
from bus.subjects import invoke_subject, request_subject
from handlers.functions import Function, FunctionSpec, ModuleError
from handlers.wasm.host import DispatchError
from runtime import errors
from runtime.config import Config

log = logging.getLogger("l8.functions")

INVOKE_API = "app"  # invocations are l8.<ns>.app.<name>.invoke: the worker host's <api>.<component>.<op>


class BusDispatcher:
    """Host calls as bus requests (the ``Dispatcher`` of handlers/wasm/host.py)."""

    def __init__(self, bus: Bus, namespace: str) -> None:
        self._bus = bus
        self._ns = namespace

    async def request(self, api: str, component: str, op: str, payload: bytes, *, app_id: str, timeout: float) -> bytes:
        subject = request_subject(self._ns, api, component, op, app_id)
        try:
            return await self._bus.call(subject, payload, timeout=timeout, headers=request_headers(timeout))
        except BusError as exc:
            code, message = errors.from_bus_error(exc, f"{api} {component!r}")
            raise DispatchError(code.value, message) from None

    async def invoke(self, target: str, payload: bytes, *, app_id: str, timeout: float) -> bytes:
        subject = invoke_subject(self._ns, target, app_id)
        try:
            msg = await self._bus.request(subject, payload, timeout=timeout, headers=request_headers(timeout))
        except BusError as exc:
            code, message = errors.from_bus_error(exc, f"app {target!r}")
            raise DispatchError(code.value, message) from None
        data: bytes = msg.data
        return data


class FunctionHost:
    """A function and the subscription that answers its invocations; ``start``/``stop`` are idempotent."""

    def __init__(
        self, bus: Bus, namespace: str, spec: FunctionSpec, *, cache_dir: Path | None, default_timeout: float
    ) -> None:
        self.function = Function(spec, BusDispatcher(bus, namespace), cache_dir=cache_dir)
        self._bus = bus
        self._ns = namespace
        self._default_timeout = default_timeout
        self._workers: WorkerHost | None = None
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

    async def open(self) -> None:
        """Join the function's queue group (idempotent)."""
        if self._state != "running" or self._workers is not None:
            return
        if self.function.spec.invoke:
            self._workers = WorkerHost(
                self._bus,
                self._ns,
                concurrency=self.function.spec.limits.concurrency,
                default_timeout=self._default_timeout,
            )
            self._workers.add(INVOKE_API, self.name, self.function.serve)
            await self._workers.start()

    async def stop(self) -> None:
        if self._state != "running":
            self._state = "stopped"
            return
        self._state = "stopped"
        if self._workers is not None:
            await self._workers.stop()
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

    def __init__(self, config: Config, bus: Bus) -> None:
        self._config = config
        self._bus = bus
        cache = config.wasm.cache_dir or str(Path(config.data_dir) / "wasm-cache")
        self.cache_dir = Path(cache)
        self._watched = [
            _Watched(
                FunctionHost(
                    bus,
                    config.namespace,
                    fc.spec(),
                    cache_dir=self.cache_dir,
                    default_timeout=config.bus.request_timeout,
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
