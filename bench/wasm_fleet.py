"""bench.wasm, the parts on a real bus (one nats-server for both):

3. invoke round trip through the bus (native InvokeService, 1 KiB) of a function served by another
   sidecar, beside an app's OnInvoke (a Dapr SDK ``App``, tests/apps/echo_app.py) behind its
   sidecar, and of a function in the caller's own sidecar (local dispatch, no bus hop);
4. from ``l8 wasm deploy`` to every ``l8 worker --wasm`` serving it (2 workers), per guest: a new
   module with the workers on the deploy command's host (they load what its check compiled into
   the host's cache), a new module with the workers on another host (one compiles, the other
   waits for it and loads it), and the same module again; beside it the deploy command alone
   (spawn to exit: interpreter start, the module's check, the Object Store and KV puts).

A worker logs ``function NAME serves`` once its queue subscription is live; the bench polls the
workers' logs every 2 ms for that line.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import grpc
import wasmtime

from bench.procs import child_env, free_port, spawn, stop, venv_bin, wait_port
from bus import Bus
from handlers.proto import runtime_pb2 as pb
from handlers.proto import runtime_pb2_grpc
from runtime import fleet
from runtime.config import Config
from runtime.sidecar import Sidecar

REPO = Path(__file__).parent.parent
NAMESPACE = "bench"


def _us(seconds: float) -> str:
    return f"{seconds * 1e6:8.1f} µs"


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:7.0f} ms"


class Nats:
    """A nats-server with JetStream on free ports, in ``work``; stopped by PID."""

    def __init__(self, work: Path) -> None:
        self.port, mon = free_port(), free_port()
        args = [venv_bin("nats-server"), "-a", "127.0.0.1", "-p", str(self.port), "-m", str(mon), "-js"]
        self.proc = spawn([*args, "-sd", str(work / "nats")])
        wait_port(self.port, self.proc)
        self.url = f"nats://127.0.0.1:{self.port}"

    def stop(self) -> None:
        stop(self.proc)


async def invoke_round_trip(nats: Nats, work: Path, echo_wat: str, n: int) -> None:
    print(f"3. invoke round trip, native InvokeService, 1 KiB, sequential p50 of {n}")
    app_port = free_port()
    env = {**os.environ, "APP_PORT": str(app_port), "APP_ID": "echo-app", "PYTHONPATH": str(REPO)}
    app = subprocess.Popen([sys.executable, str(REPO / "tests" / "apps" / "echo_app.py")], env=env)
    sidecars: list[Sidecar] = []
    try:
        wait_port(app_port, app, timeout=30)
        echo = work / "echo.wasm"
        echo.write_bytes(wasmtime.wat2wasm(echo_wat))

        def config(app_id: str, **extra: object) -> Config:
            return Config.model_validate(
                {
                    "app": {"id": app_id, **extra.pop("app", {})},  # type: ignore[dict-item]
                    "bus": {"url": nats.url},
                    "server": {"grpc": "127.0.0.1:0", "http": "127.0.0.1:0"},
                    "namespace": NAMESPACE,
                    "data_dir": str(work / app_id),
                    **extra,
                }
            )

        def function(name: str) -> list[dict[str, object]]:
            return [{"name": name, "module": str(echo), "invoke": True}]

        caller = Sidecar(config("caller", functions=function("local-fn")))
        for sc in (
            caller,
            Sidecar(config("fn-host", functions=function("echo-fn"))),
            Sidecar(config("echo-app", app={"callback": f"127.0.0.1:{app_port}"})),
        ):
            await sc.start()
            sidecars.append(sc)
        assert caller.grpc is not None
        data = b"a" * 1024  # text: the echo app decodes it
        async with grpc.aio.insecure_channel(f"127.0.0.1:{caller.grpc.port}") as channel:
            stub = runtime_pb2_grpc.RuntimeStub(channel)

            async def p50s(app_id: str) -> list[float]:
                req = pb.InvokeServiceRequest(id=app_id, message=pb.CommonInvokeRequest(method="echo"))
                req.message.data.value = data
                for _ in range(50):
                    await stub.InvokeService(req)
                times = []
                for _ in range(n):
                    began = time.perf_counter()
                    await stub.InvokeService(req)
                    times.append(time.perf_counter() - began)
                return times

            rows: dict[str, list[float]] = {}
            for _ in range(3):  # rows take turns, so a burst of other work hits each of them
                for target in ("echo-fn", "echo-app", "local-fn"):
                    rows.setdefault(target, []).extend(await p50s(target))
        print(f"   {'function echo-fn in another sidecar (l8_on_invoke)':52} {_us(statistics.median(rows['echo-fn']))}")
        print(
            f"   {'app echo-app behind its sidecar (Dapr SDK OnInvoke)':52} {_us(statistics.median(rows['echo-app']))}"
        )
        print(f"   {'function local-fn in the caller sidecar (local)':52} {_us(statistics.median(rows['local-fn']))}")
    finally:
        for sc in reversed(sidecars):
            await sc.stop()
        stop(app)


# (row, the workers' namespace, what their serve lines say): "1 host" workers share the deploy
# command's compile cache, "2 hosts" workers share one of their own (as on another host).
_DEPLOYS = (
    ("new, 1 host", NAMESPACE, ("cached", "cached")),
    ("new, 2 hosts", f"{NAMESPACE}-b", ("cached", "compiled")),
    ("cached", NAMESPACE, ("cached", "cached")),
)


async def deploy_to_serving(nats: Nats, work: Path, guests: tuple[str, ...], rounds: int = 3) -> None:
    print(f"4. l8 wasm deploy → every worker serving it, 2 l8 worker --wasm, median of {rounds} rounds")
    l8 = venv_bin("l8")
    cli = work / "cli"
    cli.mkdir(parents=True, exist_ok=True)
    host_cache, other_cache = work / "host-cache", work / "other-host-cache"
    env = {**child_env(), "XDG_CACHE_HOME": str(host_cache)}  # the host's shared cache, in the bench's dir
    groups: dict[str, list[tuple[subprocess.Popen[bytes], Path]]] = {}
    bus = Bus([nats.url], name="l8-bench-wasm")
    await bus.start()
    try:
        for ns, cache in ((NAMESPACE, None), (f"{NAMESPACE}-b", other_cache)):
            for i in range(2):
                log = work / f"worker-{ns}-{i}.log"
                args = ["worker", "--wasm", "--bus", nats.url, "--namespace", ns, "--data-dir", str(work / f"w{ns}{i}")]
                args += ["--wasm-cache", str(cache)] if cache is not None else []
                groups.setdefault(ns, []).append((spawn([l8, *args, "--log-level", "info"], log=log, env=env), log))
        await _wait_lines([log for g in groups.values() for _, log in g], "l8 worker serves deployed", timeout=60)
        print(f"   {'guest':6} {'':13} {'deploy command':>14} {'deploy → all serve':>19} {'its exit → all serve':>21}")
        for guest in guests:
            wasm = REPO / "guests" / "build" / f"orders-{guest}.wasm"
            for kind, ns, says in _DEPLOYS:
                spans: dict[str, list[float]] = {}
                for r in range(rounds):
                    if kind.startswith("new"):
                        for cache in (host_cache, other_cache):
                            shutil.rmtree(cache, ignore_errors=True)
                    name = f"{guest}-{kind.replace(' ', '').replace(',', '-')}-{r}"
                    measured = await _deploy_once(l8, nats, cli, env, ns, name, wasm, groups[ns], says)
                    for key, value in zip(("command", "all", "after"), measured, strict=True):
                        spans.setdefault(key, []).append(value)
                    await fleet.remove(bus, ns, name)  # so workers do not pile up functions
                med = {k: statistics.median(v) for k, v in spans.items()}
                print(f"   {guest:6} {kind:13} {_ms(med['command']):>14} {_ms(med['all']):>19} {_ms(med['after']):>21}")
        print("   target: every worker serves a deploy within 2 s")
    finally:
        await bus.stop()
        for group in groups.values():
            for proc, _ in group:
                stop(proc)


async def _deploy_once(
    l8: str,
    nats: Nats,
    cli: Path,
    env: dict[str, str],
    ns: str,
    name: str,
    wasm: Path,
    workers: list[tuple[subprocess.Popen[bytes], Path]],
    says: tuple[str, ...],
) -> tuple[float, float, float]:
    """(deploy command, deploy spawn → all serve, deploy exit → all serve) in seconds; the last is
    negative when every worker served before the command exited."""
    line = f"function {name} serves"
    began = time.perf_counter()
    deploy = subprocess.Popen(
        [l8, "wasm", "deploy", name, str(wasm), "--invoke", "--bus", nats.url, "--namespace", ns],
        cwd=cli,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    served: dict[Path, float] = {}
    exited: float | None = None
    while len(served) < len(workers) or exited is None:
        if time.perf_counter() > began + 60:
            deploy.kill()
            raise TimeoutError(f"{name}: not served by every worker within 60 s")
        if exited is None and deploy.poll() is not None:
            exited = time.perf_counter()
            if deploy.returncode != 0:
                err = deploy.stderr.read().decode() if deploy.stderr else ""
                raise RuntimeError(f"l8 wasm deploy {name} failed: {err}")
        for _, log in workers:
            if log not in served and line in log.read_text(errors="replace"):
                served[log] = time.perf_counter()
        await asyncio.sleep(0.002)
    if deploy.stderr is not None:
        deploy.stderr.close()
    kinds = []
    for _, log in workers:
        tail = log.read_text(errors="replace").split(line, 1)[1].split("\n", 1)[0]
        kinds.append(tail.rsplit("(", 1)[-1].rstrip(")"))
    if sorted(kinds) != sorted(says):
        raise RuntimeError(f"{name}: the workers served it {kinds}, not {list(says)}")
    last = max(served.values())
    return exited - began, last - began, last - exited


async def _wait_lines(logs: list[Path], text: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not all(log.exists() and text in log.read_text(errors="replace") for log in logs):
        if time.monotonic() > deadline:
            raise TimeoutError(f"the workers did not log {text!r} within {timeout} s")
        await asyncio.sleep(0.01)
