"""WebAssembly functions, each l8 figure beside its comparison from the same run:

1. cold load of each guest (guests/build, scripts/build-guests): compiled vs from the disk cache,
   plus the first instance (Go runs its _initialize there);
2. per-call host cost of a 1 KiB input with a reused instance: the bare wasmtime calls a host must
   make (l8_alloc, write, export, read) beside l8's instance path on the same thread, and beside a
   call from the event loop through the function's thread pool;
3. invoke round trip through the bus (native InvokeService) of a function beside an app's OnInvoke
   (a Dapr SDK ``App``, tests/apps/echo_app.py) behind its sidecar.

Run: ``.venv/bin/python -m bench.wasm [--n 2000]``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import grpc
import wasmtime

from bench.procs import free_port, spawn, stop, venv_bin, wait_port
from handlers.functions import Function, FunctionSpec
from handlers.proto import runtime_pb2 as pb
from handlers.proto import runtime_pb2_grpc
from handlers.wasm import engine
from handlers.wasm.abi import encode_input
from handlers.wasm.host import Allow, HostOps
from handlers.wasm.instance import Limits, Version
from runtime.config import Config
from runtime.sidecar import Sidecar

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


def _median_per_call(fn: object, n: int) -> float:
    runs = []
    for _ in range(5):
        began = time.perf_counter()
        for _ in range(n):
            fn()  # type: ignore[operator]
        runs.append((time.perf_counter() - began) / n)
    return statistics.median(runs)


async def host_overhead(n: int) -> None:
    print(f"2. per call, 1 KiB in and out, reused instance (median of 5 x {n})")
    wasm = wasmtime.wat2wasm(ECHO_WAT)
    data = os.urandom(1024)
    payload = encode_input({"method": "bench"}, data)

    # The floor: the calls any host makes, on one thread, no checks, no limits armed.
    store = wasmtime.Store(engine.engine())
    store.set_epoch_deadline(1 << 40)
    store.set_fuel(1 << 62)
    module = wasmtime.Module(engine.engine(), wasm)
    inst = wasmtime.Linker(engine.engine()).instantiate(store, module)
    ex = inst.exports(store)
    mem, alloc, handle = ex["memory"], ex["l8_alloc"], ex["l8_on_invoke"]

    def bare() -> None:
        ptr = alloc(store, len(payload))  # type: ignore[operator]
        mem.write(store, payload, ptr)  # type: ignore[union-attr]
        r = handle(store, ptr, len(payload))  # type: ignore[operator]
        mem.read(store, r >> 32, (r >> 32) + (r & 0xFFFFFFFF))  # type: ignore[union-attr]

    floor = _median_per_call(bare, n)
    fn = Function(FunctionSpec("bench", limits=Limits(concurrency=1)), _NoCalls())
    await fn.start()
    try:
        version = await fn.load(wasm)
        deadline = time.monotonic() + 3600

        def l8_path() -> None:
            version.run("l8_on_invoke", payload, deadline)

        on_thread: list[float] = []
        t = threading.Thread(target=lambda: on_thread.append(_median_per_call(l8_path, n)))
        t.start()
        t.join()
        runs = []
        for _ in range(5):
            began = time.perf_counter()
            for _ in range(n):
                await fn.invoke({"method": "bench"}, data)
            runs.append((time.perf_counter() - began) / n)
        from_loop = statistics.median(runs)
    finally:
        await fn.stop()
    print(f"   bare wasmtime calls (floor)                 {_us(floor)}")
    print(f"   l8 instance path, same thread               {_us(on_thread[0])}   (+{_us(on_thread[0] - floor)})")
    print(f"   l8 Function.invoke from the event loop      {_us(from_loop)}   (+{_us(from_loop - floor)})")
    print("   target: ≤ 100 µs host overhead per call with a reused instance")


async def invoke_round_trip(n: int) -> None:
    print(f"3. invoke round trip through the bus, 1 KiB, sequential p50 of {n}")
    nats_port, mon = free_port(), free_port()
    work = Path(tempfile.mkdtemp(prefix="l8-bench-wasm-"))
    nats = spawn(
        [venv_bin("nats-server"), "-a", "127.0.0.1", "-p", str(nats_port), "-m", str(mon), "-js", "-sd", str(work)]
    )
    app_port = free_port()
    env = {**os.environ, "APP_PORT": str(app_port), "APP_ID": "echo-app", "PYTHONPATH": str(REPO)}
    app = subprocess.Popen([sys.executable, str(REPO / "tests" / "apps" / "echo_app.py")], env=env)
    sidecars: list[Sidecar] = []
    try:
        wait_port(nats_port, nats)
        wait_port(app_port, app, timeout=30)
        echo = work / "echo.wasm"
        echo.write_bytes(wasmtime.wat2wasm(ECHO_WAT))
        url = f"nats://127.0.0.1:{nats_port}"

        def config(app_id: str, **extra: object) -> Config:
            return Config.model_validate(
                {
                    "app": {"id": app_id, **extra.pop("app", {})},  # type: ignore[dict-item]
                    "bus": {"url": url},
                    "server": {"grpc": "127.0.0.1:0", "http": "127.0.0.1:0"},
                    "namespace": "bench",
                    "data_dir": str(work / app_id),
                    **extra,
                }
            )

        caller = Sidecar(config("caller", functions=[{"name": "echo-fn", "module": str(echo), "invoke": True}]))
        target = Sidecar(config("echo-app", app={"callback": f"127.0.0.1:{app_port}"}))
        for sc in (caller, target):
            await sc.start()
            sidecars.append(sc)
        assert caller.grpc is not None
        data = b"a" * 1024  # text: the echo app decodes it
        async with grpc.aio.insecure_channel(f"127.0.0.1:{caller.grpc.port}") as channel:
            stub = runtime_pb2_grpc.RuntimeStub(channel)

            async def p50(app_id: str, method: str) -> float:
                req = pb.InvokeServiceRequest(id=app_id, message=pb.CommonInvokeRequest(method=method))
                req.message.data.value = data
                for _ in range(50):
                    await stub.InvokeService(req)
                times = []
                for _ in range(n):
                    began = time.perf_counter()
                    await stub.InvokeService(req)
                    times.append(time.perf_counter() - began)
                return statistics.median(times)

            fn_p50 = await p50("echo-fn", "echo")
            app_p50 = await p50("echo-app", "echo")
        print(f"   function echo-fn (l8_on_invoke)             {_us(fn_p50)}")
        print(f"   app echo-app (Dapr SDK App OnInvoke)        {_us(app_p50)}")
    finally:
        for sc in reversed(sidecars):
            await sc.stop()
        stop(app)
        stop(nats)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=2000)
    args = parser.parse_args()
    print(f"wasmtime {engine.WASMTIME_VERSION}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}")
    cold_loads()
    await host_overhead(args.n)
    await invoke_round_trip(max(args.n // 4, 100))


if __name__ == "__main__":
    asyncio.run(main())
