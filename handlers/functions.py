"""WebAssembly functions: a module under a name, run in wasmtime with hard limits (ABI ``l8/1``,
docs/wasm-abi.md; the engine, instances and host calls are in handlers/wasm/).

A ``Function`` owns ``limits.concurrency`` lanes (threads, handlers/wasm/lanes.py); each keeps an
instance of the current version and reuses it. A version whose module can make no host call but
``l8.log`` runs its calls inline, on the event loop's thread, under a fuel budget of
``inline_fuel`` (handlers/wasm/instance.py says why that is safe and bounded); ``inline_fuel=0``
sends every call to a lane. ``load`` compiles (through the disk cache) and checks a new
version off the event loop, then swaps it in one assignment: calls that began on the old version
finish on it, later calls take the new one. A function whose module failed to load still exists:
it answers every call at once with UNAVAILABLE and the reason.

``answer(payload, metadata, deadline)`` answers an invocation (Dapr's ``InvokeRequest`` bytes) with
``InvokeResponse`` bytes, so the runtime can serve the invocation subject of the function's name as
an app's sidecar does. ``on_event`` runs ``l8_on_event`` on one event and answers its verdict.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bridges.errors import Unimplemented
from handlers.proto import runtime_pb2 as pb
from handlers.wasm import abi, engine
from handlers.wasm.abi import ModuleError
from handlers.wasm.errors import FunctionAnswered, FunctionError, FunctionUnavailable
from handlers.wasm.host import Allow, Dispatcher, HostOps, guess_content_type
from handlers.wasm.instance import INLINE_MAX_INPUT, InlineOverrun, Limits, Version
from handlers.wasm.lanes import Lanes

log = logging.getLogger("l8.functions")

# Fuel an inline call may use (wasmtime charges about one unit per wasm instruction): the bound on
# how long a call may hold the event loop, measured by bench/wasm.py.
INLINE_FUEL = 100_000

__all__ = ["Allow", "Function", "FunctionSpec", "Limits", "ModuleError", "Verdict"]


@dataclass(frozen=True, slots=True)
class FunctionSpec:
    name: str
    invoke: bool = True
    events: bool = False  # it has subscriptions, so its module must export l8_on_event
    limits: Limits = field(default_factory=Limits)
    allow: Allow = field(default_factory=Allow)


class Verdict(enum.Enum):
    """How ``l8_on_event`` settled an event."""

    SUCCESS = "SUCCESS"
    RETRY = "RETRY"
    DROP = "DROP"


class Function:
    """One named function; ``start``/``stop`` are idempotent, ``load`` swaps versions atomically."""

    def __init__(
        self,
        spec: FunctionSpec,
        dispatcher: Dispatcher,
        *,
        cache_dir: Path | None = None,
        inline_fuel: int = INLINE_FUEL,
    ) -> None:
        self.spec = spec
        self.name = spec.name
        self._dispatcher = dispatcher
        self._cache_dir = cache_dir
        self._inline_fuel = inline_fuel
        self._version: Version | None = None
        self.reason = "not loaded yet"
        self._lanes: Lanes | None = None
        self._ops: HostOps | None = None
        self._inflight: set[asyncio.Future[Any]] = set()
        self._state = "new"

    @property
    def status(self) -> str:
        """``ok`` when a version serves, else ``failed`` (see ``reason``)."""
        return "ok" if self._version is not None else "failed"

    @property
    def digest(self) -> str | None:
        return self._version.digest if self._version is not None else None

    @property
    def version(self) -> Version | None:
        return self._version

    async def start(self) -> None:
        if self._state != "new":
            return
        self._state = "running"
        self._ops = HostOps(self.name, self.spec.allow, self._dispatcher, asyncio.get_running_loop())
        self._lanes = Lanes(self.name, self.spec.limits.concurrency, asyncio.get_running_loop())
        engine.ticker.acquire()

    async def stop(self, timeout: float = 10.0) -> None:
        """Take no more calls; let those running finish (each is bounded by the function's deadline)."""
        if self._state != "running":
            self._state = "stopped"
            return
        self._state = "stopped"
        if self._inflight:
            await asyncio.wait(set(self._inflight), timeout=timeout)
        lanes, self._lanes = self._lanes, None
        if lanes is not None:
            await lanes.close()
        self._version = None
        self.reason = "stopped"
        engine.ticker.release()

    async def load(self, wasm: bytes) -> Version:
        """Compile and check ``wasm``, then make it the serving version; ModuleError says why not."""
        if self._state != "running" or self._lanes is None or self._ops is None:
            raise ModuleError(f"function {self.name} is not running")
        ops = self._ops
        spec = self.spec

        def build() -> Version:
            compiled = engine.compile_module(wasm, self._cache_dir)
            version = Version(spec.name, compiled, spec.limits, ops, inline_fuel=self._inline_fuel)
            if spec.invoke and not version.shape.on_invoke:
                raise ModuleError(f"it does not export {abi.ON_INVOKE!r}, which invoke: true needs")
            if spec.events and not version.shape.on_event:
                raise ModuleError(f"it does not export {abi.ON_EVENT!r}, which its subscriptions need")
            version.check_instance()
            return version

        version: Version = await self._lanes.submit(build)
        self._version = version
        self.reason = ""
        return version

    def fail(self, reason: str) -> None:
        """Record why the module could not load; calls answer it while no version serves."""
        self.reason = reason

    async def _run(
        self, export: str, meta: Mapping[str, Any], data: bytes, deadline: float | None
    ) -> tuple[int, bytes]:
        version, lanes = self._version, self._lanes
        if version is None or lanes is None:
            raise FunctionUnavailable(f"function {self.name} is not available: {self.reason}")
        if not (version.shape.on_event if export == abi.ON_EVENT else version.shape.on_invoke):
            raise Unimplemented(f"function {self.name} does not export {export}")
        limit = time.monotonic() + version.limits.timeout_ms / 1000
        until = limit if deadline is None else min(deadline, limit)
        payload = abi.encode_input(meta, data)
        if version.inline_ready and len(payload) <= INLINE_MAX_INPUT:
            try:
                return version.run_inline(export, payload, until)
            except InlineOverrun:
                log.info(
                    "function %s: a call needed more than the inline budget of %d fuel; "
                    "it and the calls after it run on the function's threads",
                    self.name,
                    self._inline_fuel,
                )
            except FunctionError:
                self._track(lanes.submit(version.prepare_inline))  # a fresh inline instance, off the loop
                raise
        future = lanes.submit(version.run, export, payload, until)
        self._track(future)
        return await asyncio.shield(future)

    def _track(self, future: asyncio.Future[Any]) -> None:
        """Keep ``future`` until it settles, so ``stop`` waits for it."""
        self._inflight.add(future)
        future.add_done_callback(self._inflight.discard)

    async def answer(self, payload: bytes, metadata: Mapping[str, str], deadline: float) -> bytes:
        """An invocation of the function's name: ``InvokeRequest`` bytes in, ``InvokeResponse`` out;
        ``metadata`` is the caller's, as the function sees it in its meta."""
        if not self.spec.invoke:
            raise Unimplemented(f"function {self.name} is not invocable (invoke: false)")
        req = pb.CommonInvokeRequest.FromString(payload)
        verb = pb.HTTPExtension.Verb.Name(req.http_extension.verb) if req.HasField("http_extension") else ""
        meta = {
            "method": req.method,
            "content_type": req.content_type,
            "verb": "" if verb == "NONE" else verb,
            "querystring": req.http_extension.querystring,
            "metadata": dict(metadata),
        }
        out = await self.invoke(meta, req.data.value, deadline=deadline)
        reply = pb.InvokeResponse(content_type=guess_content_type(out))
        reply.data.value = out
        data: bytes = reply.SerializeToString()
        return data

    async def invoke(self, meta: Mapping[str, Any], data: bytes, *, deadline: float | None = None) -> bytes:
        """Run ``l8_on_invoke``: its output, or FunctionAnswered when it answers a negative value."""
        r, out = await self._run(abi.ON_INVOKE, meta, data, deadline)
        if r < 0:
            raise FunctionAnswered(f"function {self.name} answered error {r} to method {meta.get('method', '')!r}")
        return out

    async def on_event(
        self, meta: Mapping[str, Any], data: bytes, *, deadline: float | None = None
    ) -> tuple[Verdict, bytes]:
        """Run ``l8_on_event`` on one event: SUCCESS, RETRY or DROP (a trap or limit raises FunctionError)."""
        r, out = await self._run(abi.ON_EVENT, meta, data, deadline)
        if r >= 0:
            return Verdict.SUCCESS, out
        return (Verdict.DROP if r == abi.DROP else Verdict.RETRY), b""
