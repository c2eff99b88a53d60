"""Service invocation round trip, beside a direct gRPC call app→app to the same handler, in one run.

  l8 native   app A → sidecar A (InvokeService) → NATS → sidecar B → app B's OnInvoke, and back
  l8 HTTP     the same through Dapr's HTTP route /v1.0/invoke/{app}/method/{method} on sidecar A
  direct      app A → app B's OnInvoke over gRPC (what the call costs without a runtime)

App B is a grpc.aio AppCallback server in its own process; both sidecars are `l8 run` processes on
one nats-server started here. Each row: p50/p99 of sequential calls, then calls/s with 64 in flight
(and the p50/p99 under that load); rows take turns over 3 rounds. Loopback only; everything
started here is stopped by PID.

Usage: .venv/bin/python -m bench.invoke [--seconds 6] [--rounds 3] [--sequential 2000] [--inflight 64] [--size 64]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import yaml

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parent.parent
ON_INVOKE = "/dapr.proto.runtime.v1.AppCallback/OnInvoke"
INVOKE_SERVICE = "/spec.proto.runtime.v1.Runtime/InvokeService"
Call = Callable[[], Awaitable[Any]]


# ---- app B ----


async def serve_app(port: int) -> None:
    from dapr.proto.common.v1 import common_pb2

    async def on_invoke(request: bytes, context: Any) -> bytes:
        req = common_pb2.InvokeRequest.FromString(request)
        return common_pb2.InvokeResponse(data=req.data, content_type=req.content_type).SerializeToString()

    server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "dapr.proto.runtime.v1.AppCallback", {"OnInvoke": grpc.unary_unary_rpc_method_handler(on_invoke)}
            ),
        )
    )
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await server.stop(1)


# ---- processes ----


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_until(check: Callable[[], bool], what: str, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        with contextlib.suppress(OSError):
            if check():
                return
        time.sleep(0.02)
    raise TimeoutError(f"{what} not ready after {timeout}s")


def port_open(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=0.2):
        return True


def healthz(port: int) -> bool:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1.0/healthz/outbound", timeout=1) as r:
        return bool(r.status == 204)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def topology(work: Path) -> Iterator[dict[str, int]]:
    procs: list[subprocess.Popen[bytes]] = []
    log = open(work / "procs.log", "wb")  # noqa: SIM115 - closed below, after the children stop

    def spawn(args: list[str], cwd: Path = work) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(args, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        procs.append(proc)
        return proc

    try:
        nats_port, nats_mon = free_port(), free_port()
        nats = spawn([str(BIN / "nats-server"), "-a", "127.0.0.1", "-p", str(nats_port), "-m", str(nats_mon)])
        wait_until(lambda: port_open(nats_port), "nats-server", nats)
        app_port = free_port()
        app = spawn([sys.executable, "-m", "bench.invoke", "--serve-app", str(app_port)], ROOT)
        wait_until(lambda: port_open(app_port), "app B", app)
        ports = {"app": app_port}
        for name, app_id, extra in (("b", "bench-b", ["--app-port", str(app_port)]), ("a", "bench-a", [])):
            grpc_port, http_port = free_port(), free_port()
            cfg = work / f"{name}.yaml"
            cfg.write_text(
                yaml.safe_dump(
                    {
                        "app": {"id": app_id},
                        "namespace": "bench",
                        "bus": {"url": f"nats://127.0.0.1:{nats_port}"},
                        "server": {"grpc": f"127.0.0.1:{grpc_port}", "http": f"127.0.0.1:{http_port}"},
                        "data_dir": str(work / name),
                        "log_level": "warning",
                        "components": {},
                    }
                )
            )
            sidecar = spawn([str(BIN / "l8"), "run", "--config", str(cfg), *extra])
            wait_until(lambda p=http_port: healthz(p), f"sidecar {name}", sidecar)  # type: ignore[misc]
            ports[f"{name}_grpc"], ports[f"{name}_http"] = grpc_port, http_port
        yield ports
    finally:
        for proc in reversed(procs):
            stop(proc)
        log.close()


# ---- load ----


def pct(sorted_ms: list[float], p: float) -> float:
    return sorted_ms[min(len(sorted_ms) - 1, int(len(sorted_ms) * p))]


async def sequential(call: Call, n: int, lat: list[float]) -> None:
    for _ in range(n):
        t = time.perf_counter()
        await call()
        lat.append((time.perf_counter() - t) * 1000)


async def concurrent(call: Call, inflight: int, seconds: float, lat: list[float]) -> float:
    """Calls/s with ``inflight`` workers for ``seconds``; each call's latency goes to ``lat``."""
    end = time.perf_counter() + seconds
    done = 0

    async def worker() -> None:
        nonlocal done
        while time.perf_counter() < end:
            t = time.perf_counter()
            await call()
            lat.append((time.perf_counter() - t) * 1000)
            done += 1

    began = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(inflight)))
    return done / (time.perf_counter() - began)


async def measure(args: argparse.Namespace, ports: dict[str, int]) -> list[tuple[str, tuple[float, ...]]]:
    import aiohttp
    from dapr.proto.common.v1 import common_pb2

    from handlers.proto import runtime_pb2 as pb

    payload = os.urandom(args.size // 2).hex().encode()[: args.size]
    message = pb.CommonInvokeRequest(method="echo", content_type="application/octet-stream")
    message.data.value = payload
    native_req = pb.InvokeServiceRequest(id="bench-b", message=message).SerializeToString()
    direct_req = common_pb2.InvokeRequest(
        method="echo", content_type="application/octet-stream", data=message.data
    ).SerializeToString()
    options = [("grpc.max_receive_message_length", 16 << 20)]
    rows: list[tuple[str, tuple[float, ...]]] = []
    async with (
        grpc.aio.insecure_channel(f"127.0.0.1:{ports['a_grpc']}", options=options) as l8_channel,
        grpc.aio.insecure_channel(f"127.0.0.1:{ports['app']}", options=options) as app_channel,
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=args.inflight)) as http,
    ):
        invoke = l8_channel.unary_unary(INVOKE_SERVICE)
        on_invoke = app_channel.unary_unary(ON_INVOKE)
        url = f"http://127.0.0.1:{ports['a_http']}/v1.0/invoke/bench-b/method/echo"
        headers = {"content-type": "application/octet-stream"}

        async def l8_native() -> None:
            resp = pb.InvokeResponse.FromString(await invoke(native_req, timeout=30))
            assert resp.data.value == payload

        async def l8_http() -> None:
            async with http.post(url, data=payload, headers=headers) as r:
                assert r.status == 200 and await r.read() == payload

        async def direct() -> None:
            resp = common_pb2.InvokeResponse.FromString(await on_invoke(direct_req, timeout=30))
            assert resp.data.value == payload

        calls = {
            "direct gRPC app→app": direct,
            "l8 native InvokeService": l8_native,
            "l8 Dapr HTTP /v1.0/invoke": l8_http,
        }
        for call in calls.values():
            for _ in range(200):  # warm up connections and code paths
                await call()
        seq: dict[str, list[float]] = {name: [] for name in calls}
        load: dict[str, list[float]] = {name: [] for name in calls}
        rates: dict[str, list[float]] = {name: [] for name in calls}
        # Rows take turns, round after round, so that a burst of load from elsewhere on the host
        # does not fall on one row only.
        for round_ in range(args.rounds):
            for name, call in calls.items():
                await sequential(call, args.sequential // args.rounds, seq[name])
                rates[name].append(await concurrent(call, args.inflight, args.seconds / args.rounds, load[name]))
            print(f"  round {round_ + 1}/{args.rounds} done", file=sys.stderr)
        for name in calls:
            seq[name].sort()
            load[name].sort()
            rows.append(
                (
                    name,
                    (
                        statistics.median(seq[name]),
                        pct(seq[name], 0.99),
                        statistics.median(rates[name]),
                        statistics.median(load[name]),
                        pct(load[name], 0.99),
                    ),
                )
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(prog="bench.invoke")
    parser.add_argument("--seconds", type=float, default=6.0, help="seconds of load per row at --inflight")
    parser.add_argument("--rounds", type=int, default=3, help="rows take turns this many times")
    parser.add_argument("--sequential", type=int, default=2000, help="sequential calls per row")
    parser.add_argument("--inflight", type=int, default=64)
    parser.add_argument("--size", type=int, default=64, help="payload bytes")
    parser.add_argument("--serve-app", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()
    if args.serve_app:
        asyncio.run(serve_app(args.serve_app))
        return
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="l8-bench-invoke-") as tmp, topology(Path(tmp)) as ports:
        rows = asyncio.run(measure(args, ports))
    print(
        f"invoke round trip, {args.size}-byte payload, {os.cpu_count()} cores shared by client, sidecars, "
        f"nats-server and app B; {args.rounds} rounds; calls/s is the median round; load average "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())} at the end"
    )
    head = f"{'path':28} {'seq p50 ms':>10} {'seq p99 ms':>10} {'calls/s @' + str(args.inflight):>13}"
    print(head + f" {'load p50 ms':>11} {'load p99 ms':>11}")
    for name, (p50, p99, rate, lp50, lp99) in rows:
        print(f"{name:28} {p50:10.3f} {p99:10.3f} {rate:13.0f} {lp50:11.2f} {lp99:11.2f}")
    base = rows[0][1]
    for name, values in rows[1:]:
        print(
            f"{name}: +{values[0] - base[0]:.3f} ms p50 over direct; "
            f"{values[2] / base[2]:.0%} of direct's calls/s at {args.inflight} in flight"
        )
    print(f"(total {time.monotonic() - began:.0f}s)")


if __name__ == "__main__":
    main()
