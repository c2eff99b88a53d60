"""A loaded module version and its instances, one per thread, each call run under the limits.

wasmtime stores are not thread-safe, so each thread that runs a function keeps an instance of its
own (a ``threading.local`` per version) and reuses it call after call. One that trapped or passed
a limit is thrown away, so the next call starts from a fresh instance. A new version (a reload, a
redeploy) gets new instances; calls that began on the old one finish there.

A module that can make no host call but ``l8.log`` (no ``l8.call``, no WASI) cannot wait on
anything, so its calls may run on the event loop's thread itself ("inline"), which saves the two
thread wakeups of a hop to a lane. An inline call runs on an instance of its own, built off the
loop, under a fuel budget (``inline_fuel``) besides the function's limits, so it holds the loop
for a bounded number of instructions; its log lines wait until it ends. A call that uses up the
budget has done nothing outside its instance (its log lines are dropped with it), so it is run
again from the start on a lane (``InlineOverrun``), and the version runs on lanes from then on.

The imports ``l8.call``, ``l8.take`` and ``l8.log`` never raise into wasm (wasmtime-py passes an
exception through a process-wide slot that threads race on): every failure is a return code, and
every guest pointer is checked against the memory's current length before it is touched.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

import wasmtime

from handlers.wasm import abi, engine
from handlers.wasm.abi import ModuleError, Shape, Status
from handlers.wasm.errors import FunctionError, FunctionLimit, FunctionTimeout
from handlers.wasm.host import HostOps

log = logging.getLogger("l8.wasm")

UNLIMITED_FUEL = (1 << 63) - 1
_LEVELS = (logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR)
MAX_LOG = 2048  # characters of one guest log line kept


@dataclass(frozen=True, slots=True)
class Limits:
    memory_mb: int = 64
    timeout_ms: int = 1000
    fuel: int | None = None
    max_output_kb: int = 1024
    concurrency: int = 4
    max_host_calls: int = 100


INLINE_MAX_INPUT = 64 << 10  # bytes of input above which a call goes to a lane (copying it is loop time)


class InlineOverrun(Exception):
    """An inline call used up the inline fuel budget; it has had no effect, so run it on a lane."""


@dataclass(slots=True)
class _Call:
    """What the imports need while one export runs on this thread."""

    memory: wasmtime.Memory
    deadline: float
    host_calls: int = 0
    held: bytes | None = None
    breach: str | None = None
    logs: list[tuple[int, str]] | None = None  # inline: kept until the call ends


def _span(ptr: int, length: int, size: int) -> tuple[int, int] | None:
    """``(start, end)`` of a guest range if it lies inside a memory of ``size`` bytes."""
    start, n = ptr & 0xFFFFFFFF, length & 0xFFFFFFFF
    if start + n > size:
        return None
    return start, start + n


class Version:
    """One compiled module of a function: its linker, its pre-instantiation and its instances."""

    def __init__(
        self, name: str, compiled: engine.Compiled, limits: Limits, ops: HostOps, *, inline_fuel: int = 0
    ) -> None:
        self.name = name
        self.digest = compiled.digest
        self.cached = compiled.cached
        self.limits = limits
        self.shape: Shape = abi.check(compiled.module)
        cap = limits.memory_mb << 20
        if self.shape.initial_memory_bytes > cap:
            raise ModuleError(
                f"its initial memory is {self.shape.initial_memory_bytes >> 20} MiB, over the cap of "
                f"{limits.memory_mb} MiB (limits.memoryMb)"
            )
        self._ops = ops
        self._local = threading.local()
        # Inline only when no call can wait on anything, and within a budget under the function's own fuel.
        budget = min(inline_fuel, limits.fuel) if limits.fuel is not None else inline_fuel
        self.inline_fuel = budget if not (self.shape.host_calls or self.shape.wasi) else 0
        self._inline: _Instance | None = None
        linker = wasmtime.Linker(engine.engine())
        if self.shape.wasi:
            linker.define_wasi()
        i32, i64 = wasmtime.ValType.i32(), wasmtime.ValType.i64()
        linker.define_func("l8", "call", wasmtime.FuncType([i32] * 5, [i64]), self._call, access_caller=True)
        linker.define_func("l8", "take", wasmtime.FuncType([i32], [i32]), self._take, access_caller=True)
        linker.define_func("l8", "log", wasmtime.FuncType([i32] * 3, []), self._log, access_caller=True)
        try:
            self._pre = linker.instantiate_pre(compiled.module)
        except wasmtime.WasmtimeError as exc:
            raise ModuleError(f"cannot be linked: {engine._first_line(str(exc))}") from None

    def check_instance(self) -> None:
        """Instantiate once (and run ``_initialize``) to refuse a module that cannot start; the
        instance becomes the inline one when the version runs inline."""
        inst = _Instance(self)
        if self.inline_fuel:
            self._inline = inst

    @property
    def inline_ready(self) -> bool:
        """Whether the next call may run inline (on the calling thread, the event loop's)."""
        return self._inline is not None

    def prepare_inline(self) -> None:
        """Build the inline instance, off the loop (a Store may move between threads)."""
        if not self.inline_fuel or self._inline is not None:
            return
        try:
            self._inline = _Instance(self)
        except ModuleError as exc:
            log.warning("function %s: a new inline instance failed: %s", self.name, exc)

    def run(self, export: str, data: bytes, deadline: float) -> tuple[int, bytes]:
        """Call ``export`` with ``data`` on this thread's instance: ``(r, output)``; FunctionError on failure."""
        inst: _Instance | None = getattr(self._local, "instance", None)
        if inst is None:
            try:
                inst = _Instance(self)
            except ModuleError as exc:
                raise FunctionError(f"function {self.name}: a new instance failed: {exc}") from None
            self._local.instance = inst
        try:
            return inst.call(export, data, deadline)
        except FunctionError:
            self._local.instance = None  # trapped or over a limit: the next call starts afresh
            raise

    def run_inline(self, export: str, data: bytes, deadline: float) -> tuple[int, bytes]:
        """``run`` on the inline instance under the inline budget (``inline_ready`` first). After a
        trap or a limit the instance is gone until ``prepare_inline``; InlineOverrun when the call
        needs more than the budget, after which the version runs on lanes only."""
        inst = self._inline
        assert inst is not None, "run_inline without an inline instance"
        logs: list[tuple[int, str]] = []
        try:
            result = inst.call(export, data, deadline, budget=self.inline_fuel, logs=logs)
        except InlineOverrun:
            self._inline = None
            self.inline_fuel = 0
            raise
        except FunctionError:
            self._inline = None
            self._emit(logs)
            raise
        self._emit(logs)
        return result

    def _emit(self, logs: list[tuple[int, str]]) -> None:
        for level, text in logs:
            log.log(level, "function %s: %s", self.name, text)

    # ---- imports; each returns a code and never raises ----

    def _current(self) -> _Call | None:
        call: _Call | None = getattr(self._local, "call", None)
        return call

    def _counted(self, call: _Call) -> bool:
        call.host_calls += 1
        if call.host_calls <= self.limits.max_host_calls:
            return True
        if call.breach is None:
            call.breach = f"made more than {self.limits.max_host_calls} host calls in one call (limits.maxHostCalls)"
            log.warning("function %s %s", self.name, call.breach)
        return False

    def _call(self, caller: wasmtime.Caller, op: int, req_ptr: int, req_len: int, resp_ptr: int, resp_cap: int) -> int:
        try:
            call = self._current()
            if call is None:
                return int(Status.BAD_REQUEST)
            if not self._counted(call):
                return int(Status.FAILED)
            size = call.memory.data_len(caller)
            req = _span(req_ptr, req_len, size)
            resp = _span(resp_ptr, resp_cap, size)
            if req is None or resp is None:
                log.warning(
                    "function %s: host call %d points out of its memory (%d bytes): request %d+%d, response %d+%d",
                    self.name,
                    op,
                    size,
                    req_ptr & 0xFFFFFFFF,
                    req_len & 0xFFFFFFFF,
                    resp_ptr & 0xFFFFFFFF,
                    resp_cap & 0xFFFFFFFF,
                )
                return int(Status.BAD_REQUEST)
            request = bytes(call.memory.read(caller, req[0], req[1]))
            status, answer = self._ops.run(op, request, call.deadline)
            if status < 0:
                return status
            call.held = None
            if len(answer) <= resp[1] - resp[0]:
                if answer:
                    call.memory.write(caller, answer, resp[0])
            else:
                call.held = answer
            return len(answer)
        except BaseException as exc:
            log.error("function %s: host call failed in the host: %s: %s", self.name, type(exc).__name__, exc)
            return int(Status.FAILED)

    def _take(self, caller: wasmtime.Caller, dst: int) -> int:
        try:
            call = self._current()
            if call is None or call.held is None:
                log.warning("function %s: take() with no response held", self.name)
                return int(Status.BAD_REQUEST)
            held = call.held
            span = _span(dst, len(held), call.memory.data_len(caller))
            if span is None:
                log.warning("function %s: take() at %d is out of its memory", self.name, dst & 0xFFFFFFFF)
                return int(Status.BAD_REQUEST)
            call.held = None
            if held:
                call.memory.write(caller, held, span[0])
            return len(held)
        except BaseException as exc:
            log.error("function %s: take failed in the host: %s: %s", self.name, type(exc).__name__, exc)
            return int(Status.FAILED)

    def _log(self, caller: wasmtime.Caller, level: int, ptr: int, length: int) -> None:
        try:
            call = self._current()
            if call is None or not self._counted(call):
                return
            span = _span(ptr, length, call.memory.data_len(caller))
            if span is None:
                log.warning("function %s: log() with a range out of its memory", self.name)
                return
            end = min(span[1], span[0] + MAX_LOG * 4)
            text = bytes(call.memory.read(caller, span[0], end)).decode(errors="replace")[:MAX_LOG]
            if call.logs is not None:
                call.logs.append((_LEVELS[min(max(level, 0), 3)], text))
            else:
                log.log(_LEVELS[min(max(level, 0), 3)], "function %s: %s", self.name, text)
        except BaseException as exc:
            log.error("function %s: log failed in the host: %s: %s", self.name, type(exc).__name__, exc)


class _Instance:
    """A store and an instance of a version; used by one thread at a time."""

    def __init__(self, version: Version) -> None:
        self.version = version
        limits = version.limits
        self.store = wasmtime.Store(engine.engine())
        self.store.set_limits(memory_size=limits.memory_mb << 20)
        if version.shape.wasi:
            self.store.set_wasi(wasmtime.WasiConfig())
        self._arm(time.monotonic() + limits.timeout_ms / 1000)
        try:
            instance = version._pre.instantiate(self.store)
        except (wasmtime.WasmtimeError, wasmtime.Trap) as exc:
            raise ModuleError(f"cannot be instantiated: {engine._first_line(str(exc))}") from None
        exports = instance.exports(self.store)
        memory = exports["memory"]
        assert isinstance(memory, wasmtime.Memory)
        self.memory = memory
        self._funcs: dict[str, wasmtime.Func] = {}
        for name in (abi.ALLOC, abi.ON_EVENT, abi.ON_INVOKE, abi.INITIALIZE):
            func = exports.get(name)
            if isinstance(func, wasmtime.Func):
                self._funcs[name] = func
        if abi.INITIALIZE in self._funcs:
            deadline = time.monotonic() + limits.timeout_ms / 1000
            self._arm(deadline)
            try:
                self._enter(abi.INITIALIZE, (), _Call(self.memory, deadline))
            except FunctionError as exc:
                raise ModuleError(f"its _initialize failed: {exc}") from None

    def _arm(self, deadline: float, budget: int | None = None) -> None:
        self.store.set_epoch_deadline(engine.ticks_for(max(deadline - time.monotonic(), 0.0)))
        self.store.set_fuel(budget or self.version.limits.fuel or UNLIMITED_FUEL)

    def _enter(self, name: str, args: tuple[int, ...], call: _Call, budget: int | None = None) -> int:
        """Run one export of an armed store with the imports armed; wasm traps become FunctionError."""
        version = self.version
        version._local.call = call
        try:
            result = self._funcs[name](self.store, *args)
        except wasmtime.Trap as exc:
            if budget is not None and exc.trap_code is wasmtime.TrapCode.OUT_OF_FUEL and budget != version.limits.fuel:
                raise InlineOverrun() from None
            raise self._trap_error(exc) from None
        except wasmtime.WasmtimeError as exc:
            raise FunctionError(f"function {version.name}: {engine._first_line(str(exc))}") from None
        finally:
            version._local.call = None
        if call.breach is not None:
            raise FunctionLimit(f"function {version.name} {call.breach}")
        return int(result) if result is not None else 0

    def _trap_error(self, exc: wasmtime.Trap) -> FunctionError:
        name, limits = self.version.name, self.version.limits
        code = exc.trap_code
        if code is wasmtime.TrapCode.INTERRUPT:
            return FunctionTimeout(f"function {name} ran past its deadline (limits.timeoutMs {limits.timeout_ms})")
        if code is wasmtime.TrapCode.OUT_OF_FUEL:
            return FunctionLimit(f"function {name} used up its fuel (limits.fuel {limits.fuel})")
        lines = [line.strip() for line in exc.message.splitlines() if line.strip()]
        # The last line says what happened ("wasm `unreachable` instruction executed"); the
        # backtrace before it is noise to the caller.
        message = (lines[-1] if lines else "unknown trap")[:300]
        if code is not None:
            message = f"{code.name.lower()}: {message}"
        cap = limits.memory_mb << 20
        used = self.memory.data_len(self.store)
        if used * 2 >= cap:
            # Most likely a memory.grow the cap refused, which the guest then gave up on.
            message += f" (its memory is {used / 2**20:.1f} MiB of its cap of {limits.memory_mb} MiB, limits.memoryMb)"
        return FunctionError(f"function {name} trapped: {message}")

    def call(
        self,
        export: str,
        data: bytes,
        deadline: float,
        *,
        budget: int | None = None,
        logs: list[tuple[int, str]] | None = None,
    ) -> tuple[int, bytes]:
        """Run ``export`` on ``data``: l8_alloc, the input written, the export, the output read;
        the deadline, fuel (or the inline ``budget``) and host-call cap cover them together."""
        name = self.version.name
        if export not in self._funcs:
            raise FunctionError(f"function {name} does not export {export}")
        self._arm(deadline, budget)
        call = _Call(self.memory, deadline, logs=logs)
        ptr = self._enter(abi.ALLOC, (len(data),), call, budget)
        span = _span(ptr, len(data), self.memory.data_len(self.store))
        if span is None or (ptr < 0 and data):
            raise FunctionError(f"function {name}: l8_alloc({len(data)}) answered {ptr}, out of its memory")
        if data:
            self.memory.write(self.store, data, span[0])
        r = self._enter(export, (ptr, len(data)), call, budget)
        if r <= 0:
            return r, b""
        out_ptr, out_len = abi.split_result(r)
        cap = self.version.limits.max_output_kb * 1024
        if out_len > cap:
            raise FunctionLimit(
                f"function {name} answered {out_len} bytes, over its output cap of "
                f"{self.version.limits.max_output_kb} KiB (limits.maxOutputKb)"
            )
        out = _span(out_ptr, out_len, self.memory.data_len(self.store))
        if out is None:
            raise FunctionError(
                f"function {name} answered output at {out_ptr}+{out_len}, out of its memory "
                f"({self.memory.data_len(self.store)} bytes)"
            )
        return r, bytes(self.memory.read(self.store, out[0], out[1]))
