"""WebAssembly functions, each l8 figure beside its comparison from the same run:

1. cold load of each guest (guests/build, scripts/build-guests): compiled vs from the disk cache,
   plus the first instance (Go runs its _initialize there);
2. per-call host cost of a 1 KiB input with a reused instance, rows taking turns: the bare wasmtime
   calls a host must make (l8_alloc, write, export, read) on the loop's thread (the floor), l8's
   instance path there, ``Function.invoke`` from the event loop inline (a module that cannot call)
   and on a lane, beside the previous design (``run_in_executor`` on a pool); the hop alone; the
   cost of each host call and of its handoff beside ``run_coroutine_threadsafe``; 8 calls in
   flight; and how long an inline call that overruns its fuel budget holds the loop;
3. and 4. (bench/wasm_fleet.py): invoke round trip of a function beside an app's OnInvoke, and the
   time from ``l8 wasm deploy`` to every worker serving it.

Run: ``.venv/bin/python -m bench.wasm [--n 2000] [--rounds 3]``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import wasmtime

from bench.wasm_fleet import Nats, deploy_to_serving, invoke_round_trip
from handlers.functions import INLINE_FUEL, Function, FunctionSpec
from handlers.proto import runtime_pb2 as pb
from handlers.wasm import engine
from handlers.wasm.abi import Op, encode_fields, encode_input
from handlers.wasm.host import Allow, HostOps
from handlers.wasm.instance import InlineOverrun, Limits, Version
from handlers.wasm.lanes import Lanes

REPO = Path(__file__).parent.parent
GUESTS = ("wat", "rust", "go", "as")
ECHO_WAT = """(module
  (memory (export "memory") 4)
  (func (export "l8_alloc") (param i32) (result i32) (i32.const 65536))
  (func (export "l8_on_invoke") (param $p i32) (param $n i32) (result i64)
    (local $data i32)
    (local.set $data (i32.add (i32.add (local.get $p) (i32.const 4)) (i32.load (local.get $p))))
    (i64.or (i64.shl (i64.extend_i32_u (local.get $data)) (i64.const 32))
            (i64.extend_i32_u (i32.sub (i32.add (local.get $p) (local.get $n)) (local.get $data))))))"""
LOOP_WAT = """(module
  (memory (export "memory") 1)
  (func (export "l8_alloc") (param i32) (result i32) (i32.const 0))
  (func (export "l8_on_invoke") (param i32 i32) (result i64) (loop $forever (br $forever)) (i64.const 0)))"""


class _NoCalls:
    async def request(self, *args: object, **kwargs: object) -> bytes:
        raise RuntimeError("no host calls in this benchmark")

    async def invoke(self, *args: object, **kwargs: object) -> bytes:
        raise RuntimeError("no host calls in this benchmark")


def _us(seconds: float) -> str:
    return f"{seconds * 1e6:8.1f} µs"


def cold_loads() -> None:
    print("1. cold load (best of 3): compile | from cache | first instance")
    subprocess.run([str(REPO / "scripts" / "build-guests")], check=True)
    loop = asyncio.new_event_loop()
    ops = HostOps("bench", Allow(), _NoCalls(), loop)
    for guest in GUESTS:
        wasm = (REPO / "guests" / "build" / f"orders-{guest}.wasm").read_bytes()
        compiled, cached, first = [], [], []
        for _ in range(3):
            with tempfile.TemporaryDirectory() as cache:
                began = time.perf_counter()
                engine.compile_module(wasm, Path(cache))
                compiled.append(time.perf_counter() - began)
                began = time.perf_counter()
                c = engine.compile_module(wasm, Path(cache))
                cached.append(time.perf_counter() - began)
                assert c.cached
                version = Version("bench", c, Limits(), ops)
                began = time.perf_counter()
                version.check_instance()
                first.append(time.perf_counter() - began)
        print(
            f"   {guest:5} {len(wasm):>8} B   compile {min(compiled) * 1e3:8.2f} ms | "
            f"cached {min(cached) * 1e3:7.2f} ms | first instance {min(first) * 1e3:6.2f} ms"
        )
    loop.close()


def _echo(imports: str = "", calls: int = 0) -> bytes:
    """The echo module, importing ``imports``; with ``calls`` it first makes that many state.get
    host calls (store "s", key "k", 64-byte answer buffer at 4096)."""
    spin = ""
    if calls:
        spin = f"""(block $done (loop $again
          (br_if $done (i32.ge_u (local.get $i) (i32.const {calls})))
          (drop (call $call (i32.const 1) (i32.const 2048) (i32.const 10) (i32.const 4096) (i32.const 64)))
          (local.set $i (i32.add (local.get $i) (i32.const 1))) (br $again)))"""
    return wasmtime.wat2wasm(
        ECHO_WAT.replace("(memory", f"{imports} (memory", 1)
        .replace("(local $data i32)", f"(local $data i32) (local $i i32) {spin}", 1)
        .replace(
            '(func (export "l8_alloc")',
            '(data (i32.const 2048) "\\01\\00\\00\\00s\\01\\00\\00\\00k") (func (export "l8_alloc")',
            1,
        )
    )


_CALL = '(import "l8" "call" (func $call (param i32 i32 i32 i32 i32) (result i64)))'


class _Instant:
    """A dispatcher that answers every state.get at once, so a host call costs only its handoffs."""

    answer = pb.GetStateResponse(data=b"v").SerializeToString()

    async def request(self, *args: object, **kwargs: object) -> bytes:
        return self.answer

    async def invoke(self, *args: object, **kwargs: object) -> bytes:
        raise RuntimeError("no invocations in this benchmark")


def _sync_rate(call: Callable[[], object], n: int) -> float:
    began = time.perf_counter()
    for _ in range(n):
        call()
    return (time.perf_counter() - began) / n


async def _async_rate(call: Callable[[], Awaitable[object]], n: int) -> float:
    began = time.perf_counter()
    for _ in range(n):
        await call()
    return (time.perf_counter() - began) / n


async def _throughput(call: Callable[[], Awaitable[object]], n: int, inflight: int = 8) -> float:
    gate = asyncio.Semaphore(inflight)

    async def one() -> None:
        async with gate:
            await call()

    began = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(n)))
    return n / (time.perf_counter() - began)


async def host_overhead(n: int, rounds: int = 5) -> None:
    print(f"2. per call, 1 KiB in and out, reused instance; rows take turns, median of {rounds} rounds x {n}")
    data = os.urandom(1024)
    payload = encode_input({"method": "bench"}, data)
    loop = asyncio.get_running_loop()

    # The floor: the calls any host makes, on the loop's thread, no checks, no limits armed.
    eng = engine.engine()
    store = wasmtime.Store(eng)
    store.set_epoch_deadline(1 << 40)
    store.set_fuel(1 << 62)
    inst = wasmtime.Linker(eng).instantiate(store, wasmtime.Module(eng, wasmtime.wat2wasm(ECHO_WAT)))
    ex = inst.exports(store)
    mem, alloc, handle = ex["memory"], ex["l8_alloc"], ex["l8_on_invoke"]

    def bare() -> None:
        ptr = alloc(store, len(payload))  # type: ignore[operator]
        mem.write(store, payload, ptr)  # type: ignore[union-attr]
        r = handle(store, ptr, len(payload))  # type: ignore[operator]
        mem.read(store, r >> 32, (r >> 32) + (r & 0xFFFFFFFF))  # type: ignore[union-attr]

    def function(calls: int = 0) -> Function:
        limits = Limits(concurrency=1)
        return Function(FunctionSpec(f"bench{calls}", limits=limits, allow=Allow(state=("*",))), _Instant())

    pure, lane, lane10 = function(), function(), function(10)
    for fn, wasm in ((pure, _echo()), (lane, _echo(_CALL)), (lane10, _echo(_CALL, 10))):
        await fn.start()
        await fn.load(wasm)
    assert pure.version is not None and pure.version.inline_ready and lane.version is not None
    deadline = time.monotonic() + 3600
    version = lane.version
    pool = ThreadPoolExecutor(1)  # the previous design: run_in_executor on a concurrent.futures pool
    lanes = Lanes("bench", 1, loop)

    def on_pool() -> Awaitable[object]:
        return loop.run_in_executor(pool, version.run, "l8_on_invoke", payload, deadline)

    async def floor_row() -> float:
        return _sync_rate(bare, n)

    async def path_row() -> float:
        return _sync_rate(lambda: version.run("l8_on_invoke", payload, deadline), n)

    measures: dict[str, Callable[[], Awaitable[float]]] = {
        "floor": floor_row,
        "path": path_row,
        "inline": lambda: _async_rate(lambda: pure.invoke({"method": "bench"}, data), n),
        "lanes": lambda: _async_rate(lambda: lane.invoke({"method": "bench"}, data), n),
        "pool": lambda: _async_rate(on_pool, n),
        "hop lanes": lambda: _async_rate(lambda: lanes.submit(int), n),
        "hop pool": lambda: _async_rate(lambda: loop.run_in_executor(pool, int), n),
        "10 calls": lambda: _async_rate(lambda: lane10.invoke({"method": "bench"}, data), n // 4),
        "lanes x8": lambda: _throughput(lambda: lane.invoke({"method": "bench"}, data), n),
        "pool x8": lambda: _throughput(on_pool, n),
    }
    rows: dict[str, list[float]] = {}
    try:
        for _ in range(rounds):
            for name, measure in measures.items():
                rows.setdefault(name, []).append(await measure())
        handoff_l8, handoff_rcts = await _host_call_handoffs(n)
        hold = await _inline_hold()
    finally:
        pool.shutdown()
        await lanes.close()
        for fn in (pure, lane, lane10):
            await fn.stop()
    m = {name: statistics.median(values) for name, values in rows.items()}
    floor = m["floor"]

    def row(label: str, key: str) -> None:
        print(f"   {label:52} {_us(m[key])}   (+{_us(m[key] - floor)})")

    print(f"   {'bare wasmtime calls on the loop thread (floor)':52} {_us(floor)}")
    row("l8 instance path, on the loop thread, no handoff", "path")
    row("l8 Function.invoke, inline (module cannot call)", "inline")
    row("l8 Function.invoke, on a lane (module imports call)", "lanes")
    row("before: run_in_executor(pool, version.run)", "pool")
    print(f"   {'the hop alone, no wasm: lanes | run_in_executor':52} {_us(m['hop lanes'])} | {_us(m['hop pool'])}")
    per_call = (m["10 calls"] - m["lanes"]) / 10
    print(f"   {'each host call (state.get answered at once), lanes':52} {_us(per_call)}")
    print(
        f"   {'one host call handoff alone: l8 | run_coroutine_threadsafe':52} {_us(handoff_l8)} | {_us(handoff_rcts)}"
    )
    print(f"   {'8 in flight: lanes | pool':52} {m['lanes x8']:8.0f} /s | {m['pool x8']:8.0f} /s")
    print(
        f"   {'longest inline hold of the loop (over budget) p50|max':52} "
        f"{_us(statistics.median(hold))} | {_us(max(hold))}   ({INLINE_FUEL} fuel)"
    )
    print("   target: ≤ 100 µs host overhead per call with a reused instance")


async def _host_call_handoffs(n: int) -> tuple[float, float]:
    """Thread → loop → thread for a coroutine that answers at once: l8's handoff (HostOps) beside
    run_coroutine_threadsafe, from the same thread."""
    loop = asyncio.get_running_loop()
    ops = HostOps("bench", Allow(state=("*",)), _Instant(), loop)
    request = encode_fields(b"s", b"k")

    async def instant() -> bytes:
        return b""

    def l8_side() -> float:
        deadline = time.monotonic() + 3600
        return _sync_rate(lambda: ops.run(Op.STATE_GET, request, deadline), n)

    def rcts_side() -> float:
        return _sync_rate(lambda: asyncio.run_coroutine_threadsafe(instant(), loop).result(5), n)

    l8s, rcts = [], []
    for _ in range(3):
        l8s.append(await asyncio.to_thread(l8_side))
        rcts.append(await asyncio.to_thread(rcts_side))
    return statistics.median(l8s), statistics.median(rcts)


async def _inline_hold(reps: int = 20) -> list[float]:
    """How long an inline call holds the loop before its budget runs out (a loop that never ends)."""
    compiled = engine.compile_module(wasmtime.wat2wasm(LOOP_WAT), None)
    ops = HostOps("bench", Allow(), _Instant(), asyncio.get_running_loop())
    held = []
    for _ in range(reps):
        version = Version("bench", compiled, Limits(), ops, inline_fuel=INLINE_FUEL)
        version.check_instance()
        began = time.perf_counter()
        try:
            version.run_inline("l8_on_invoke", b"\0\0\0\0", time.monotonic() + 60)
        except InlineOverrun:
            held.append(time.perf_counter() - began)
    return held


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=2000, help="calls per row and round")
    parser.add_argument("--rounds", type=int, default=3, help="deploys per guest and kind")
    args = parser.parse_args()
    print(f"wasmtime {engine.WASMTIME_VERSION}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}")
    cold_loads()
    await host_overhead(args.n)
    work = Path(tempfile.mkdtemp(prefix="l8-bench-wasm-"))
    nats = Nats(work)
    try:
        await invoke_round_trip(nats, work, ECHO_WAT, max(args.n // 4, 100))
        await deploy_to_serving(nats, work, GUESTS, rounds=args.rounds)
    finally:
        nats.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    import uvloop

    uvloop.run(main())  # as l8 itself runs
