"""State API benchmark: l8 GetState against the direct clients and the gRPC floor, in one run.

Run with ``bench/run`` (or ``.venv/bin/python -m bench.state``). Everything listens on loopback
on free ports; every server is started here and stopped by its PID before the bench exits.
See bench/README.md for what each row measures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import nats
import redis.asyncio as aioredis
import uvloop
from dapr.proto.runtime.v1 import state_pb2 as dapr_state
from nats.js.api import KeyValueConfig, StorageType

from bench import procs
from bench.load import Call, Measured, concurrent, fixed_count, paced, percentile, sequential
from bench.servicers import NOOP_METHOD, STATE_METHOD
from handlers.proto import runtime_pb2 as pb

KEY = "order-1"
VALUE = b'{"id":"order-1","qty":3,"sku":"A-1000","note":"benchmark value of about one hundred bytes.."}'
STORE = "statestore"
APP_ID = "bench"
NATIVE_METHOD = "/spec.proto.runtime.v1.Runtime/GetState"
DAPR_METHOD = "/dapr.proto.runtime.v1.Dapr/GetState"
DAPR_CPU_S_PER_1000 = 0.142  # docs.dapr.io perf: 142 mCPU at 1000 QPS for state get
TARGET_RPS_RATIO = 0.75
TARGET_P50_RATIO = 1.3
TARGET_RSS_MB = 45.0
TARGET_READY_S = 1.0
TARGET_SECURITY_COST = 0.03  # the API token and bus credentials cost at most 3 % of p50 and rps
CREDS_OFF = "bus credentials off"
TOKEN = "API token on"
API_TOKEN = "bench-token-0123456789abcdef"


@dataclass(slots=True)
class Settings:
    rounds: int  # rows are measured round-robin, so a burst of other work hits every row alike
    seq: int  # sequential calls per row per round
    seq_warmup: int  # unmeasured sequential calls before each round's
    workers: int
    duration: float  # seconds of throughput per row per round
    warmup: float  # unmeasured seconds before each round's throughput
    cpu_calls: int
    paced_rate: float
    paced_calls: int
    ready_runs: int


PROFILES = {
    "full": Settings(
        rounds=3, seq=700, seq_warmup=50, workers=64, duration=1.0, warmup=0.25, cpu_calls=3000,
        paced_rate=1000, paced_calls=2000, ready_runs=5,
    ),
    "quick": Settings(
        rounds=2, seq=150, seq_warmup=20, workers=64, duration=0.5, warmup=0.1, cpu_calls=500,
        paced_rate=1000, paced_calls=500, ready_runs=2,
    ),
}  # fmt: skip


@dataclass(slots=True)
class Cpu:
    """CPU seconds per 1000 calls of the process serving gRPC and of the servers behind it."""

    label: str
    calls: int
    seconds: float
    server: float  # l8, or the comparison servicer
    nats: float | None  # l8's embedded nats-server, or the one the NATS servicer reads
    redis: float | None  # redis-server, when it is the store
    sidecar: bool  # l8: compare server + nats (the whole sidecar) with Dapr's figure
    errors: int = 0
    first_error: str = ""


@dataclass(slots=True)
class L8Stats:
    backend: str
    local: bool  # bus.local_dispatch: requests for in-process handlers skip the nats-server round trip
    variant: str = ""  # SECURITY_OFF (the embedded bus without credentials) or TOKEN (API token on)
    ready_s: list[float] = field(default_factory=list)
    rss_l8_mb: float = 0.0
    rss_nats_mb: float = 0.0

    @property
    def label(self) -> str:
        label = f"{self.backend}, local dispatch" if self.local else self.backend
        return f"{label}, {self.variant}" if self.variant else label


@dataclass(slots=True)
class L8Process:
    proc: subprocess.Popen[bytes]
    grpc_port: int
    http_port: int
    ready_s: float
    nats_pid: int

    @property
    def pid(self) -> int:
        return self.proc.pid


class Cleanup:
    """Every child process the bench started, stopped by PID in reverse order."""

    def __init__(self) -> None:
        self._procs: list[subprocess.Popen[bytes]] = []
        self._pids: list[int] = []

    def add(self, proc: subprocess.Popen[bytes]) -> subprocess.Popen[bytes]:
        self._procs.append(proc)
        return proc

    def add_pid(self, pid: int) -> None:
        self._pids.append(pid)

    def stop(self, proc: subprocess.Popen[bytes]) -> None:
        procs.stop(proc)
        with contextlib.suppress(ValueError):
            self._procs.remove(proc)

    def all(self) -> None:
        while self._procs:
            procs.stop(self._procs.pop())
        for pid in self._pids:
            if procs.alive(pid):
                procs.kill_pid(pid)
        self._pids.clear()


# ----------------------------------------------------------------------------- servers


def start_nats(work: Path, cleanup: Cleanup) -> tuple[str, subprocess.Popen[bytes]]:
    port, mon = procs.free_port(), procs.free_port()
    args = [procs.venv_bin("nats-server"), "-a", "127.0.0.1", "-p", str(port), "-m", str(mon), "-js"]
    args += ["-sd", str(work / "nats-direct"), "-n", "bench"]
    proc = cleanup.add(procs.spawn(args, work / "nats-direct.log"))
    procs.wait_port(mon, proc)
    deadline = time.monotonic() + 15
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{mon}/healthz", timeout=1) as resp:
                if resp.status == 200:
                    break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.01)
    return f"nats://127.0.0.1:{port}", proc


def start_redis(work: Path, cleanup: Cleanup) -> tuple[str, subprocess.Popen[bytes]]:
    port = procs.free_port()
    args = ["/usr/bin/redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    proc = cleanup.add(procs.spawn(args, work / "redis.log"))
    procs.wait_port(port, proc)
    return f"redis://127.0.0.1:{port}", proc


def start_servicer(kind: str, work: Path, cleanup: Cleanup, **opts: str) -> tuple[int, subprocess.Popen[bytes]]:
    port = procs.free_port()
    args = [sys.executable, "-m", "bench.servicers", kind, "--port", str(port)]
    for key, value in opts.items():
        args += [f"--{key}", value]
    proc = cleanup.add(procs.spawn(args, work / f"servicer-{kind}.log"))
    procs.wait_port(port, proc)
    return port, proc


def l8_config(work: Path, tag: str, redis_url: str | None, local: bool, variant: str = "") -> tuple[Path, int, int]:
    grpc_port, http_port = procs.free_port(), procs.free_port()
    component: dict[str, Any] = {"kind": "state", "type": "nats.kv"}
    if redis_url is not None:
        component = {"kind": "state", "type": "redis", "metadata": {"url": redis_url}}
    config = {
        "app": {"id": APP_ID},
        "namespace": "default",
        "bus": {"url": "embedded", "local_dispatch": local},
        "server": {"grpc": f"127.0.0.1:{grpc_port}", "http": f"127.0.0.1:{http_port}"},
        "workers": "all",
        "data_dir": str(work / f"l8-{tag}"),
        "log_level": "warning",
        "components": {STORE: component},
    }
    if variant == CREDS_OFF:
        config["bus"]["embedded_auth"] = False  # type: ignore[index]
    if variant == TOKEN:
        (work / f"token-{tag}").write_text(API_TOKEN)
        config["server"]["api_token_file"] = str(work / f"token-{tag}")  # type: ignore[index]
    path = work / f"l8-{tag}.yaml"
    path.write_text(json.dumps(config, indent=2))  # JSON is YAML
    return path, grpc_port, http_port


async def _healthz(port: int) -> bool:
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return False
    try:
        writer.write(b"GET /v1.0/healthz/outbound HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        await writer.drain()
        head = await reader.read(32)
        return head.startswith(b"HTTP/1.1 204")
    except OSError:
        return False
    finally:
        writer.close()


async def start_l8(
    work: Path, tag: str, cleanup: Cleanup, redis_url: str | None = None, local: bool = False, variant: str = ""
) -> L8Process:
    """Spawn ``l8 run --config`` and time it until /v1.0/healthz/outbound answers 204."""
    config, grpc_port, http_port = l8_config(work, tag, redis_url, local, variant)
    began = time.perf_counter()
    proc = cleanup.add(procs.spawn([procs.venv_bin("l8"), "run", "--config", str(config)], work / f"l8-{tag}.log"))
    deadline = began + 30
    while not await _healthz(http_port):
        if proc.poll() is not None:
            raise RuntimeError(f"l8 exited with code {proc.returncode}; see {work / f'l8-{tag}.log'}")
        if time.perf_counter() > deadline:
            raise TimeoutError("l8 was not ready within 30 s")
        await asyncio.sleep(0.005)
    ready = time.perf_counter() - began
    nats_pids = [pid for pid in procs.children(proc.pid) if procs.comm(pid).startswith("nats-server")]
    if len(nats_pids) != 1:
        raise RuntimeError(f"expected one embedded nats-server child of l8, found {nats_pids}")
    cleanup.add_pid(nats_pids[0])
    return L8Process(proc, grpc_port, http_port, ready, nats_pids[0])


@dataclass(slots=True)
class Split:
    """A front-only sidecar (`l8 run --workers none`) and one `l8 worker --handlers state` on a shared bus."""

    front: subprocess.Popen[bytes]
    worker: subprocess.Popen[bytes]
    grpc_port: int


async def start_split(work: Path, cleanup: Cleanup, nats_url: str) -> Split:
    grpc_port, http_port = procs.free_port(), procs.free_port()
    config = {
        "app": {"id": APP_ID},
        "namespace": "split",
        "bus": {"url": nats_url},
        "server": {"grpc": f"127.0.0.1:{grpc_port}", "http": f"127.0.0.1:{http_port}"},
        "workers": "none",
        "data_dir": str(work / "l8-split"),
        "log_level": "warning",
        "components": {STORE: {"kind": "state", "type": "nats.kv"}},
    }
    path = work / "l8-split.yaml"
    path.write_text(json.dumps(config, indent=2))
    l8 = procs.venv_bin("l8")
    worker = cleanup.add(
        procs.spawn([l8, "worker", "--config", str(path), "--handlers", "state"], work / "l8-split-worker.log")
    )
    front = cleanup.add(procs.spawn([l8, "run", "--config", str(path)], work / "l8-split-front.log"))
    deadline = time.perf_counter() + 30
    while not await _healthz(http_port):
        if front.poll() is not None or worker.poll() is not None:
            raise RuntimeError(f"the split l8 exited; see {work}/l8-split-*.log")
        if time.perf_counter() > deadline:
            raise TimeoutError("the split l8 was not ready within 30 s")
        await asyncio.sleep(0.005)
    return Split(front, worker, grpc_port)


def stop_l8(l8: L8Process, cleanup: Cleanup) -> None:
    cleanup.stop(l8.proc)
    deadline = time.monotonic() + 5
    while procs.alive(l8.nats_pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    if procs.alive(l8.nats_pid):
        print(f"warning: l8's nats-server (pid {l8.nats_pid}) outlived l8; killing it", file=sys.stderr)
        procs.kill_pid(l8.nats_pid)


# ----------------------------------------------------------------------------- calls


def grpc_call(channel: grpc.aio.Channel, method: str, request: bytes, token: str | None = None) -> Call:
    stub = channel.unary_unary(method)  # no serializers: bytes in, bytes out, on every row alike
    metadata = (("dapr-api-token", token),) if token else None

    async def call() -> object:
        return await stub(request, metadata=metadata)

    return call


async def measure(targets: list[tuple[Measured, Call]], s: Settings) -> None:
    """Every row in turn, ``s.rounds`` times: sequential calls, then throughput with ``s.workers``."""
    for row, call in targets:  # one warm-up of every path before the first round
        await sequential(call, 0, 200, row)
        await concurrent(call, s.workers, 0.0, 0.5, Measured(row.name))
    for i in range(s.rounds):
        print(f"round {i + 1} of {s.rounds}", file=sys.stderr, flush=True)
        for row, call in targets:
            await sequential(call, s.seq, s.seq_warmup, row)
            await concurrent(call, s.workers, s.duration, s.warmup, row)
            print(
                f"  {row.name:<50} p50 {row.p50:6.3f} ms  p99 {row.p99:6.3f} ms  "
                f"{row.round_rps[-1]:7.0f} rps @{s.workers}",
                file=sys.stderr,
                flush=True,
            )


async def cpu_runs(
    label: str, call: Call, s: Settings, server: int, nats_pid: int | None, redis_pid: int | None, *, sidecar: bool
) -> list[Cpu]:
    """CPU of the gRPC server process and the servers behind it per 1000 calls: saturated, then paced."""
    out: list[Cpu] = []
    pids = [server, nats_pid, redis_pid]
    for mode in ("saturated", "paced"):
        before = [procs.cpu_seconds(p) if p else 0.0 for p in pids]
        if mode == "saturated":
            run = await fixed_count(call, s.workers, s.cpu_calls)
            what = f"{label}, {s.workers} in flight"
        else:
            run = await paced(call, s.paced_rate, s.paced_calls)
            what = f"{label}, paced {s.paced_rate:.0f}/s"
        after = [procs.cpu_seconds(p) if p else 0.0 for p in pids]
        per = [(a - b) * 1000 / run.calls for a, b in zip(after, before, strict=True)]
        out.append(
            Cpu(
                label=what,
                calls=run.calls,
                errors=run.errors,
                first_error=run.first_error,
                seconds=run.seconds,
                server=per[0],
                nats=per[1] if nats_pid else None,
                redis=per[2] if redis_pid else None,
                sidecar=sidecar,
            )
        )
    return out


async def save_state(channel: grpc.aio.Channel, token: str | None = None) -> None:
    save = channel.unary_unary("/spec.proto.runtime.v1.Runtime/SaveState")
    request = pb.SaveStateRequest(store_name=STORE, states=[pb.StateItem(key=KEY, value=VALUE)]).SerializeToString()
    await save(request, metadata=(("dapr-api-token", token),) if token else None)


async def check(call: Call, decode: Any) -> None:
    got = decode(await call())
    if got.data != VALUE:
        raise RuntimeError(f"GetState answered {got!r}, not the value saved")


# ----------------------------------------------------------------------------- the run


async def run(s: Settings, work: Path, cleanup: Cleanup) -> tuple[list[Measured], list[L8Stats], list[Cpu]]:
    native_req = pb.GetStateRequest(store_name=STORE, key=KEY).SerializeToString()
    dapr_req = dapr_state.GetStateRequest(store_name=STORE, key=KEY).SerializeToString()

    print("starting nats-server, redis-server and the comparison servicers", file=sys.stderr, flush=True)
    nats_url, nats_proc = start_nats(work, cleanup)
    redis_url, redis_proc = start_redis(work, cleanup)
    nc = await nats.connect(nats_url)
    # The same bucket shape as l8's nats.kv store: history 1, file storage, direct gets.
    cfg = KeyValueConfig(bucket="bench", history=1, storage=StorageType.FILE, direct=True)
    kv = await nc.jetstream().create_key_value(cfg)
    await kv.put(KEY, VALUE)
    rc = aioredis.Redis(connection_pool=aioredis.BlockingConnectionPool.from_url(redis_url, max_connections=64))
    await rc.set(KEY, VALUE)
    noop_port, noop_proc = start_servicer("noop", work, cleanup)
    snats_port, snats_proc = start_servicer("nats", work, cleanup, nats=nats_url, bucket="bench")
    sredis_port, sredis_proc = start_servicer("redis", work, cleanup, redis=redis_url)

    # Cold starts first, with nothing else busy: each on a fresh data dir; the last one stays up.
    stats: list[L8Stats] = []
    l8s: list[L8Process] = []
    setups = (
        ("NATS KV", None, False, ""),
        ("Redis", redis_url, False, ""),
        ("NATS KV", None, True, ""),
        ("Redis", redis_url, True, ""),
        # What security costs, beside the rows above: the embedded bus requires credentials by
        # default, so its "off" row is the variant; the API token is off by default.
        ("NATS KV", None, False, CREDS_OFF),
        ("NATS KV", None, True, TOKEN),
    )
    for backend, url, local, variant in setups:
        st = L8Stats(backend, local, variant)
        tag = (
            ("nats" if url is None else "redis") + ("-local" if local else "") + ("-" + variant[:3] if variant else "")
        )
        runs = 1 if local or variant else s.ready_runs if url is None else max(1, s.ready_runs // 2)
        for i in range(runs):
            print(f"l8 ({st.label}): cold start {i + 1} of {runs}", file=sys.stderr, flush=True)
            l8 = await start_l8(work, f"{tag}-{i}", cleanup, url, local, variant)
            st.ready_s.append(l8.ready_s)
            if i < runs - 1:
                stop_l8(l8, cleanup)
        await asyncio.sleep(1.0)  # idle after ready: RSS as an app would see it before its first call
        st.rss_l8_mb = procs.rss_mb(l8.pid)
        st.rss_nats_mb = procs.rss_mb(l8.nats_pid)
        stats.append(st)
        l8s.append(l8)

    async def nats_get() -> object:
        return await kv.get(KEY)

    async def redis_get() -> object:
        value = await rc.get(KEY)
        if value is None:
            raise RuntimeError("the key is missing")
        return value

    print("l8 front (--workers none) + l8 worker on the bench's nats-server", file=sys.stderr, flush=True)
    split = await start_split(work, cleanup, nats_url)
    channels = {
        port: grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        for port in (noop_port, snats_port, sredis_port, split.grpc_port, *(l8.grpc_port for l8 in l8s))
    }
    try:
        targets: list[tuple[Measured, Call]] = [
            (Measured("gRPC no-op servicer (floor)"), grpc_call(channels[noop_port], NOOP_METHOD, b"")),
            (Measured("direct NATS KV get (nats-py)"), nats_get),
            (Measured("direct Redis GET (redis.asyncio)"), redis_get),
            (Measured("gRPC servicer → NATS KV (direct)"), grpc_call(channels[snats_port], STATE_METHOD, native_req)),
            (Measured("gRPC servicer → Redis (direct)"), grpc_call(channels[sredis_port], STATE_METHOD, native_req)),
        ]
        for _row, call in targets[3:]:
            await check(call, pb.GetStateResponse.FromString)
        natives: list[Call] = []
        for st, l8 in zip(stats, l8s, strict=True):
            ch = channels[l8.grpc_port]
            token = API_TOKEN if st.variant == TOKEN else None
            await save_state(ch, token)
            native = grpc_call(ch, NATIVE_METHOD, native_req, token)
            dapr = grpc_call(ch, DAPR_METHOD, dapr_req, token)
            await check(native, pb.GetStateResponse.FromString)
            await check(dapr, dapr_state.GetStateResponse.FromString)
            where = st.backend + (", local disp." if st.local else "")
            if st.variant:
                where += {CREDS_OFF: ", no bus creds", TOKEN: ", API token"}[st.variant]
            targets.append((Measured(f"l8 GetState native API → {where}"), native))
            if not st.variant:
                targets.append((Measured(f"l8 GetState Dapr API → {where}"), dapr))
            natives.append(native)
        ch = channels[split.grpc_port]
        for attempt in range(200):  # the worker may still be joining its queue group
            try:
                await save_state(ch)
                break
            except grpc.aio.AioRpcError:
                if attempt == 199:
                    raise
                await asyncio.sleep(0.05)
        for method, what in ((NATIVE_METHOD, "native"), (DAPR_METHOD, "Dapr")):
            call = grpc_call(ch, method, native_req if what == "native" else dapr_req)
            await check(call, pb.GetStateResponse.FromString)
            targets.append((Measured(f"l8 GetState {what} API → NATS KV, front + l8 worker"), call))

        await measure(targets, s)

        print("CPU runs", file=sys.stderr, flush=True)
        cpu: list[Cpu] = []
        cpu += await cpu_runs("gRPC no-op servicer", targets[0][1], s, noop_proc.pid, None, None, sidecar=False)
        cpu += await cpu_runs(
            "servicer → NATS KV", targets[3][1], s, snats_proc.pid, nats_proc.pid, None, sidecar=False
        )
        cpu += await cpu_runs(
            "servicer → Redis", targets[4][1], s, sredis_proc.pid, None, redis_proc.pid, sidecar=False
        )
        for st, l8, native in zip(stats, l8s, natives, strict=True):
            redis_pid = redis_proc.pid if st.backend == "Redis" else None
            cpu += await cpu_runs(f"l8 native → {st.label}", native, s, l8.pid, l8.nats_pid, redis_pid, sidecar=True)
    finally:
        for ch in channels.values():
            await ch.close()
        await nc.close()
        await rc.aclose()
    for l8 in l8s:
        stop_l8(l8, cleanup)
    cleanup.stop(split.front)
    cleanup.stop(split.worker)
    return [row for row, _ in targets], stats, cpu


# ----------------------------------------------------------------------------- report


def _row_by(rows: list[Measured], prefix: str) -> Measured:
    return next(r for r in rows if r.name.startswith(prefix))


def _exact(rows: list[Measured], name: str) -> Measured:
    return next(r for r in rows if r.name == name)


def report(
    rows: list[Measured], stats: list[L8Stats], cpu: list[Cpu], s: Settings, elapsed: float, load_start: str
) -> str:
    out: list[str] = []
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    out.append(
        f"l8 State API benchmark — {now} — {procs.os_cpus()} CPUs shared by client and servers, "
        f"Python {platform.python_version()}, grpcio {grpc.__version__}, uvloop on both sides"
    )
    out.append(
        f"rows measured round-robin, {s.rounds} rounds; per row and round: {s.seq} sequential calls "
        f"(after {s.seq_warmup} unmeasured), then {s.workers} workers for {s.duration:g} s (after "
        f"{s.warmup:g} s unmeasured)"
    )
    out.append(f"p50/p99 pool every round's calls; rps @{s.workers} is the median of the rounds; value {len(VALUE)} B")
    out.append("")
    head = f"{'#':<3}{'path':<50}{'seq p50 ms':>11}{'seq p99 ms':>11}{'seq rps':>9}{f'rps @{s.workers}':>10}"
    head += f"{f'p50 @{s.workers} ms':>13}{f'p99 @{s.workers} ms':>13}{'errors':>8}"
    out.append(head)
    out.append("-" * len(head))
    for i, r in enumerate(rows, 1):
        out.append(
            f"{i:<3}{r.name:<50}{r.p50:>11.3f}{r.p99:>11.3f}{r.seq_rps:>9.0f}{r.conc_rps:>10.0f}"
            f"{percentile(r.conc_ms, 50):>13.2f}{percentile(r.conc_ms, 99):>13.2f}{r.errors:>8}"
        )
    errs = [r for r in rows if r.errors]
    for r in errs:
        out.append(f"   errors in {r.name!r}: first was {r.first_error}")
    out.append("")

    out.append("l8 process (idle RSS after ready + 1 s; ready = spawn of `l8 run` until /v1.0/healthz/outbound → 204)")
    for st in stats:
        ready = ", ".join(f"{x:.3f}" for x in st.ready_s)
        out.append(
            f"  {st.label:<24} RSS l8 {st.rss_l8_mb:5.1f} MB (+ nats-server {st.rss_nats_mb:5.1f} MB)   "
            f"ready median {statistics.median(st.ready_s):.3f} s  [{ready}]"
        )
    out.append("")
    out.append(
        f"CPU seconds per 1000 calls (utime+stime from /proc); Dapr's published sidecar figure for a state get: "
        f"{DAPR_CPU_S_PER_1000:.3f}"
    )
    out.append(
        f"  {'run':<52}{'calls':>6}{'l8/servicer':>12}{'nats-server':>12}{'redis':>7}"
        f"{'l8+nats':>9}{'l8+nats / Dapr':>16}"
    )

    def cell(v: float | None, width: int) -> str:
        return f"{v:>{width}.3f}" if v is not None else f"{'-':>{width}}"

    for c in cpu:
        whole = c.server + (c.nats or 0.0)
        out.append(
            f"  {c.label:<52}{c.calls:>6}{c.server:>12.3f}{cell(c.nats, 12)}{cell(c.redis, 7)}"
            + (f"{whole:>9.3f}{whole / DAPR_CPU_S_PER_1000:>15.1f}x" if c.sidecar else f"{'-':>9}{'-':>16}")
        )
    for c in cpu:
        if c.errors:
            out.append(f"  {c.errors} of {c.calls} calls failed in {c.label!r}; the first: {c.first_error}")
    out.append("  (l8's nats-server is its embedded bus and, for NATS KV, its store; the NATS servicer's is its store)")
    out.append("")

    out.append("targets")
    out.append(f"  {'check':<62}{'measured':>10}{'target':>10}  result")

    def line(check: str, value: float, target: float, higher_is_better: bool, fmt: str = ".2f") -> None:
        ok = value >= target if higher_is_better else value <= target
        sign = "≥" if higher_is_better else "≤"
        out.append(f"  {check:<62}{value:>10{fmt}}{sign:>5}{target:>5{fmt}}  {'PASS' if ok else 'MISS'}")

    security = (
        ("native API → NATS KV, no bus creds", "native API → NATS KV", "bus credentials on / off"),
        ("native API → NATS KV, local disp., API token", "native API → NATS KV, local disp.", "API token on / off"),
    )
    for variant, base_name, what in security:
        on_row, off_row = _row_by(rows, f"l8 GetState {variant}"), _exact(rows, f"l8 GetState {base_name}")
        if "creds" in variant:  # the variant is the "off" row here
            on_row, off_row = off_row, on_row
        line(f"{base_name}: {what}, seq p50", on_row.p50 / off_row.p50, 1 + TARGET_SECURITY_COST, False, ".3f")
        line(
            f"{base_name}: {what}, rps @{s.workers}",
            on_row.conc_rps / off_row.conc_rps,
            1 - TARGET_SECURITY_COST,
            True,
            ".3f",
        )
    for r in rows:
        if not r.name.startswith("l8 ") or ", no bus creds" in r.name or ", API token" in r.name:
            continue
        backend = "NATS KV" if "NATS KV" in r.name else "Redis"
        base = _row_by(rows, f"gRPC servicer → {backend}")
        what = r.name.removeprefix("l8 GetState ")
        line(f"{what}: rps @{s.workers} / servicer's", r.conc_rps / base.conc_rps, TARGET_RPS_RATIO, True)
        line(f"{what}: seq p50 / servicer's", r.p50 / base.p50, TARGET_P50_RATIO, False)
    for st in stats:
        if st.local or st.variant:
            continue
        line(f"{st.label}: idle RSS of the l8 process, MB", st.rss_l8_mb, TARGET_RSS_MB, False, ".1f")
        line(f"{st.label}: ready after spawn, median s", statistics.median(st.ready_s), TARGET_READY_S, False)
    out.append("")
    out.append(f"total bench time {elapsed:.0f} s; load average at start {load_start}, at end {procs.loadavg()}")
    return "\n".join(out)


@contextlib.contextmanager
def workdir(keep: bool) -> Iterator[Path]:
    if keep:
        yield Path(tempfile.mkdtemp(prefix="l8-bench-"))
        return
    with tempfile.TemporaryDirectory(prefix="l8-bench-") as tmp:
        yield Path(tmp)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/run", description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="a short smoke run; the numbers are rough")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (configs, logs) and print its path")
    parser.add_argument("--out", help="also write the report to this file")
    args = parser.parse_args(argv)
    s = PROFILES["quick" if args.quick else "full"]
    began = time.perf_counter()
    load_start = procs.loadavg()
    cleanup = Cleanup()
    with workdir(args.keep) as work:
        try:
            rows, stats, cpu = uvloop.run(run(s, work, cleanup))
        finally:
            cleanup.all()
        if args.keep:
            print(f"work dir kept: {work}", file=sys.stderr)
    text = report(rows, stats, cpu, s, time.perf_counter() - began, load_start)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
