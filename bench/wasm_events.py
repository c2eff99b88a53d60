"""bench.wasm_events: functions as event targets, each l8 figure beside its comparison from one run.

Everything on loopback: one nats-server; in this process a sidecar ``P`` whose pub/sub worker
delivers every subscription (and whose handlers answer every host and SDK call), a sidecar ``F``
hosting the functions and a bare target, and an app's sidecar ``A``; the app, a Dapr SDK ``App``
(bench/orders_app.py), in a child process. Events are 1 KiB of JSON with a customer id.

1. Per event, rows taking turns for ``--rounds`` rounds (medians): each target gets ``--n`` events
   one at a time (a subscription of concurrency 1: the time per event) and ``--n`` x 3 with 32 in
   flight (events/s). The time runs from the first delivery to the last ack, read from the
   JetStream consumer. Rows:
   - floor: a bare target in F that answers SUCCESS: the delivery loop, the bus hop to the
     target's process and back, the ack;
   - a no-op function in F (``l8_on_event`` answers 0), on a lane and inline; its overhead over
     the floor is the function host's cost per event;
   - a no-op app callback: the Dapr SDK app behind A;
   - the example function (guests/, Rust): state get, state set and publish as host calls;
   - the same logic as the app's callback, through the SDK's DaprClient and A.
2. In process, no bus: the function's event route on one 1 KiB event (frame read, meta, the call on
   a lane), beside ``Function.on_event`` alone.
3. Events/s through one deployed function (the Rust example) served by ``l8 worker --wasm``, with 1
   worker and then 2 (P delivers), beside the same function in F.

Run: ``.venv/bin/python -m bench.wasm_events [--n 300] [--rounds 3]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import wasmtime

from bench.procs import child_env, free_port, spawn, stop, venv_bin, wait_port
from bench.wasm_fleet import Nats
from bus import Reply, RequestContext, Route, subjects
from handlers.proto import runtime_pb2 as pb
from handlers.proto import runtime_pb2_grpc
from handlers.pubsub_specs import Spec
from handlers.wasm import engine
from runtime.config import Config
from runtime.forward import Forwarder
from runtime.sidecar import Sidecar
from runtime.subscriptions import Announcer

REPO = Path(__file__).parent.parent
NS = "bench-events"
ORDERS = REPO / "guests" / "build" / "orders-rust.wasm"
_PRELUDE = """(import "l8" "call" (func $call (param i32 i32 i32 i32 i32) (result i64)))
  (memory (export "memory") 4)
  (func (export "l8_alloc") (param i32) (result i32) (i32.const 65536))
  (func (export "l8_on_event") (param i32 i32) (result i64) (i64.const 0))"""
NOOP_WAT = f"(module {_PRELUDE})"  # imports l8.call: its calls run on a lane
INLINE_WAT = f"(module {_PRELUDE.split(chr(10), 1)[1]})"  # imports nothing: inline on the loop
ALLOW = {"state": ["statestore"], "publish": ["pubsub/order-audited"]}
# row -> (target app id, kind); a row's topics are <row>-seq (concurrency 1) and <row>-par (32)
ROWS = {
    "floor": ("bench-probe", "a bare target in another sidecar (SUCCESS)"),
    "noop-fn": ("noop-fn", "no-op function, on a lane"),
    "inline-fn": ("inline-fn", "no-op function, inline"),
    "noop-app": ("bench-app", "no-op app callback (Dapr SDK App)"),
    "orders-fn": ("orders-fn", "example function (Rust; get, set, publish)"),
    "orders-app": ("bench-app", "same logic as an app callback (DaprClient)"),
}


def _payload(i: int) -> bytes:
    body = {"customer": f"c{i % 50}", "pad": ""}
    body["pad"] = "x" * (1024 - len(json.dumps(body)))
    return json.dumps(body).encode()


def topics(row: str) -> list[dict[str, Any]]:
    return [
        {"pubsub": "pubsub", "topic": f"{row}-seq", "concurrency": 1},
        {"pubsub": "pubsub", "topic": f"{row}-par", "concurrency": 32},
    ]


class Meter:
    """Publishes batches through P and times their delivery from the consumer's state."""

    def __init__(self, p: Sidecar) -> None:
        assert p.grpc is not None and p.bus is not None
        self._channel = grpc.aio.insecure_channel(f"127.0.0.1:{p.grpc.port}")
        self._stub = runtime_pb2_grpc.RuntimeStub(self._channel)
        self._js = p.bus.nc.jetstream()
        self._stream = f"L8_EVT_{NS}_pubsub"

    async def close(self) -> None:
        await self._channel.close()

    async def _consumer(self, app_id: str, topic: str, timeout: float = 60.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            for info in await self._js.consumers_info(self._stream):
                if info.config.description == f"l8 group {app_id} on topic {topic}":
                    return str(info.name)
            if time.monotonic() > deadline:
                raise TimeoutError(f"no consumer of {app_id} on {topic} within {timeout}s")
            await asyncio.sleep(0.05)

    async def publish(self, topic: str, n: int) -> None:
        for start in range(0, n, 200):
            req = pb.BulkPublishRequest(pubsub_name="pubsub", topic=topic)
            for i in range(start, min(n, start + 200)):
                req.entries.add(entry_id=str(i), event=_payload(i), content_type="application/json")
            resp = await self._stub.PublishBulkEvent(req, timeout=60)
            assert not resp.failed_entries, resp.failed_entries[0]

    async def run(self, app_id: str, topic: str, n: int) -> float:
        """Seconds from the first delivery of ``n`` new events to the last ack."""
        name = await self._consumer(app_id, topic)
        before = (await self._js.consumer_info(self._stream, name)).delivered.consumer_seq
        publishing = asyncio.create_task(self.publish(topic, n))
        first: float | None = None
        deadline = time.monotonic() + 600
        while True:
            info = await self._js.consumer_info(self._stream, name)
            now = time.perf_counter()
            if first is None and info.delivered.consumer_seq > before:
                first = now
            if publishing.done() and first is not None and not info.num_pending and not info.num_ack_pending:
                await publishing
                return now - first
            if time.monotonic() > deadline:
                raise TimeoutError(f"{topic}: not delivered within 600 s")
            await asyncio.sleep(0.002)


async def bare_target(f: Sidecar) -> Announcer:
    """The floor: a route at an app id's event subject answering SUCCESS, announced like an app's."""
    assert f.workers is not None and f.bus is not None
    stem = subjects.event_stem(NS, "bench-probe", "event")

    async def answer(op: str, payload: bytes, ctx: RequestContext) -> Reply:
        return Reply(b"0")

    await f.workers.serve(Route(f"{stem}.*.*", stem, answer, "bench probe", local=stem, caller_in_subject=False))
    specs = [
        Spec(app="bench-probe", pubsub="pubsub", topic=t["topic"], concurrency=t["concurrency"])
        for t in topics("floor")
    ]
    announcer = Announcer(f.config, Forwarder(f.bus, f.config), None, app_id="bench-probe", specs=specs)
    await announcer.start()
    return announcer


def _config(work: Path, nats: Nats, app_id: str, **extra: Any) -> Config:
    return Config.model_validate(
        {
            "app": {"id": app_id, **extra.pop("app", {})},
            "bus": {"url": nats.url},
            "server": {"grpc": "127.0.0.1:0", "http": "127.0.0.1:0"},
            "namespace": NS,
            "data_dir": str(work / app_id),
            "components": {
                "statestore": {"kind": "state", "type": "nats.kv"},
                "pubsub": {"kind": "pubsub", "type": "nats.jetstream"},
            },
            "log_level": "warning",
            **extra,
        }
    )


async def per_event(nats: Nats, work: Path, n: int, rounds: int) -> dict[str, float]:
    print(f"1. per event, 1 KiB: sequential (µs per event) and 32 in flight (events/s), medians of {rounds} rounds")
    noop, inline = work / "noop.wasm", work / "inline.wasm"
    noop.write_bytes(wasmtime.wat2wasm(NOOP_WAT))
    inline.write_bytes(wasmtime.wat2wasm(INLINE_WAT))
    functions = [
        {"name": "noop-fn", "module": str(noop), "subscribe": topics("noop-fn")},
        {"name": "inline-fn", "module": str(inline), "subscribe": topics("inline-fn")},
        {"name": "orders-fn", "module": str(ORDERS), "subscribe": topics("orders-fn"), "allow": ALLOW},
    ]
    app_port = free_port()
    p = Sidecar(_config(work, nats, "bench-pubsub"))
    f = Sidecar(_config(work, nats, "bench-fn-host", workers="none", functions=functions))
    a = Sidecar(_config(work, nats, "bench-app", workers="none", app={"callback": f"127.0.0.1:{app_port}"}))
    started: list[Sidecar] = []
    app: subprocess.Popen[bytes] | None = None
    announcer: Announcer | None = None
    meter: Meter | None = None
    try:
        for sidecar in (p, f, a):
            await sidecar.start()
            started.append(sidecar)
        assert a.grpc is not None and a.http is not None
        app_topics = ",".join(f"{t['topic']}:{t['concurrency']}" for r in ("noop-app", "orders-app") for t in topics(r))
        env = {**child_env(), "APP_PORT": str(app_port), "TOPICS": app_topics}
        env |= {"DAPR_GRPC_PORT": str(a.grpc.port), "DAPR_HTTP_PORT": str(a.http.port)}
        env["PYTHONPATH"] = str(REPO)
        app = subprocess.Popen([sys.executable, "-m", "bench.orders_app"], env=env, cwd=REPO)
        wait_port(app_port, app, timeout=30)
        announcer = await bare_target(f)
        meter = Meter(p)
        seq: dict[str, list[float]] = {}
        par: dict[str, list[float]] = {}
        for row, (app_id, _) in ROWS.items():  # warm up: instances, connections, consumers
            await meter.run(app_id, f"{row}-seq", 20)
            await meter.run(app_id, f"{row}-par", 64)
        for _ in range(rounds):
            for row, (app_id, _) in ROWS.items():
                seq.setdefault(row, []).append(await meter.run(app_id, f"{row}-seq", n) / (n - 1))
                par.setdefault(row, []).append(3 * n / await meter.run(app_id, f"{row}-par", 3 * n))
        med = {row: statistics.median(v) for row, v in seq.items()}
        rate = {row: statistics.median(v) for row, v in par.items()}
        print(f"   {'':46} {'per event':>12} {'over floor':>11} {'events/s':>10}")
        for row, (_, label) in ROWS.items():
            over = f"{(med[row] - med['floor']) * 1e6:8.1f} µs" if row != "floor" else ""
            print(f"   {label:46} {med[row] * 1e6:9.1f} µs {over:>11} {rate[row]:10.0f}")
        print("   target: a function's host overhead ≤ 100 µs per event on top of the bus hop (no-op rows over floor)")
        return rate
    finally:
        if meter is not None:
            await meter.close()
        if announcer is not None:
            await announcer.stop()
        if app is not None:
            stop(app)
        for sidecar in reversed(started):
            await sidecar.stop()


async def in_process(work: Path, n: int) -> None:
    from handlers.functions import Function, FunctionSpec
    from handlers.pubsub_envelope import decode
    from runtime import event_frames
    from runtime.function_events import FunctionEvents, event_meta

    print(f"2. in process, no bus: one 1 KiB event, a reused instance, median of {n}")

    class NoCalls:
        async def request(self, *args: object, **kwargs: object) -> bytes:
            raise RuntimeError("no host calls here")

        async def invoke(self, *args: object, **kwargs: object) -> bytes:
            raise RuntimeError("no host calls here")

    made: list[Function] = []
    try:
        rows: list[tuple[str, Callable[[], Awaitable[None]]]] = []
        envelope = {"id": "1", "source": "b", "type": "t", "specversion": "1.0", "datacontenttype": "application/json"}
        raw = json.dumps({**envelope, "data": json.loads(_payload(1)), "topic": "t", "pubsubname": "pubsub"}).encode()
        headers = {event_frames.HDR_TOPIC: "t"}
        event = decode(raw, {}, "pubsub", "t")
        meta = event_meta(event)
        for where, source in (("on a lane", NOOP_WAT), ("inline", INLINE_WAT)):
            fn = Function(FunctionSpec(f"noop-{where}", invoke=False, events=True), NoCalls(), cache_dir=work / "c")
            made.append(fn)
            await fn.start()
            await fn.load(bytes(wasmtime.wat2wasm(source)))
            events = FunctionEvents(fn, NS, asyncio.Semaphore(4))

            async def route(events: FunctionEvents = events) -> None:
                frame = event_frames.read("pubsub", raw, headers)
                await events.run(frame.events[0], time.monotonic() + 10)

            async def alone(fn: Function = fn) -> None:
                await fn.on_event(meta, event.data)

            rows += [(f"the function's event route (frame, meta, call), {where}", route)]
            rows += [(f"Function.on_event alone, {where}", alone)]
        times: dict[str, list[float]] = {}
        for _ in range(3):
            for label, call in rows:
                for _ in range(50):
                    await call()
                for _ in range(n):
                    began = time.perf_counter()
                    await call()
                    times.setdefault(label, []).append(time.perf_counter() - began)
        for label, _ in rows:
            print(f"   {label:62} {statistics.median(times[label]) * 1e6:8.1f} µs")
        print("   (bench.wasm row 2 has the bare wasmtime calls beneath these)")
    finally:
        for fn in made:
            await fn.stop()


async def fleet(nats: Nats, work: Path, n: int, beside: float) -> None:
    from bus.board import Board
    from runtime.registry_view import rows_of

    print(f"3. events/s through one deployed function (Rust example, 32 in flight), {n} events per row")
    l8 = venv_bin("l8")
    p = Sidecar(_config(work, nats, "bench-fleet-pubsub"))
    workers: list[tuple[subprocess.Popen[bytes], Path]] = []
    meter: Meter | None = None
    try:
        await p.start()
        assert p.bus is not None
        meter = Meter(p)
        board = Board(p.bus, f"l8_{NS}_subscriptions")
        name, topic = "fleet-fn", "fleet-par"

        def start_worker() -> None:
            log = work / f"fleet-worker-{len(workers)}.log"
            args = ["worker", "--wasm", "--bus", nats.url, "--namespace", NS, "--data-dir", str(work / "fw")]
            workers.append((spawn([l8, *args, "--log-level", "warning"], log=log), log))

        async def announced_by(count: int) -> None:
            deadline = time.monotonic() + 60
            while True:
                rows = [r for r in rows_of(await board.snapshot(">")) if r["app"] == name and r["topic"] == topic]
                if rows and len(rows[0]["instances"]) == count and rows[0]["state"] == "delivering":
                    return
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{count} workers did not announce {name} within 60 s")
                await asyncio.sleep(0.05)

        start_worker()
        deploy = [
            l8,
            "wasm",
            "deploy",
            name,
            str(ORDERS),
            "--subscribe",
            f"pubsub/{topic}",
            "--event-concurrency",
            "32",
        ]
        deploy += ["--allow-state", "statestore", "--allow-publish", "pubsub/order-audited", "--bus", nats.url]
        subprocess.run([*deploy, "--namespace", NS], check=True, capture_output=True, timeout=120)
        for count in (1, 2):
            if count == 2:
                start_worker()
            await announced_by(count)
            await meter.run(name, topic, 64)  # warm up the new worker's instances
            rate = n / await meter.run(name, topic, n)
            print(f"   {f'{count} l8 worker --wasm':46} {rate:10.0f} events/s")
        print(f"   {'beside: the same function in a sidecar (row 1)':46} {beside:10.0f} events/s")
    finally:
        if meter is not None:
            await meter.close()
        for proc, _ in workers:
            stop(proc)
        await p.stop()


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=300, help="events per sequential row and round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    subprocess.run([str(REPO / "scripts" / "build-guests")], check=True, cwd=REPO)
    print(f"wasmtime {engine.WASMTIME_VERSION}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}")
    work = Path(tempfile.mkdtemp(prefix="l8-bench-events-"))
    os.environ["XDG_CACHE_HOME"] = str(work / "cache")  # the workers' and sidecars' compile cache
    nats = Nats(work)
    try:
        rates = await per_event(nats, work, args.n, args.rounds)
        await in_process(work, 2000)
        await fleet(nats, work, 10 * args.n, rates["orders-fn"])
    finally:
        nats.stop()
        shutil.rmtree(work, ignore_errors=True)
    print(f"load at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    import uvloop

    uvloop.run(main())  # as l8 itself runs
