"""Pub/sub benchmark: `python -m bench.pubsub [--events N]`.

Everything on loopback, started and stopped here: one nats-server (JetStream, file storage), an
l8 sidecar in this process, an app callback server (plain asyncio gRPC) in a child process, and
for the worker rows an `l8 worker --handlers pubsub` child process. Rows, each beside its
comparison measured in the same run:
- publish throughput, native and Dapr PublishEvent, beside the gRPC floor (a no-op health check
  to the same server, same concurrency);
- events/s delivered to the app, unary (OnTopicEvent) and bulk (OnBulkTopicEvent), by the
  sidecar's own pub/sub worker ("standalone": the event's hop to the app's sidecar is local),
  beside a FastStream in-process JetStream pull consumer reading the same stream;
- the same through an independent `l8 worker` (the front runs `--workers none`, every event crosses
  the bus to it), beside the standalone figure;
- publish → app latency p50/p99, one event at a time, standalone and through a worker.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc

APP_ID = "bench"
NS = "bench"
PAYLOAD = json.dumps({"order": 42, "item": "widget", "qty": 3, "note": "x" * 40}).encode()


# ---- the app: a child process counting what it gets, printing a line per finished topic ----


async def app_main(port: int, expect: dict[str, int]) -> None:
    from dapr.proto.runtime.v1 import appcallback_pb2 as ac
    from dapr.proto.runtime.v1 import appcallback_pb2_grpc as ac_grpc

    counts: dict[str, int] = {}
    first: dict[str, float] = {}
    latencies: dict[str, list[float]] = {}

    def note(topic: str, data: bytes, n: int = 1) -> None:
        now = time.time()
        if topic not in first:
            first[topic] = now
        counts[topic] = counts.get(topic, 0) + n
        if topic.endswith("latency"):
            latencies.setdefault(topic, []).append(now - json.loads(data)["t"])
        if counts[topic] == expect.get(topic):
            line: dict[str, Any] = {"topic": topic, "count": counts[topic], "first": first[topic], "last": now}
            if topic.endswith("latency"):
                line["latencies"] = latencies[topic]
            print(json.dumps(line), flush=True)

    class App(ac_grpc.AppCallbackServicer):
        async def OnTopicEvent(self, request: Any, context: Any) -> Any:
            note(request.topic, request.data)
            return ac.TopicEventResponse()

        async def OnBulkTopicEvent(self, request: Any, context: Any) -> Any:
            resp = ac.TopicEventBulkResponse()
            for entry in request.entries:
                resp.statuses.add(entry_id=entry.entry_id)
            note(request.topic, b"", len(request.entries))
            return resp

    server = grpc.aio.server()
    ac_grpc.add_AppCallbackServicer_to_server(App(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print(json.dumps({"ready": True}), flush=True)
    await server.wait_for_termination()


# ---- the bench ----


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def rate(n: int, concurrency: int, call: Any) -> float:
    """Calls per second of ``call(i)`` for i < n with ``concurrency`` in flight."""
    it = iter(range(n))

    async def worker() -> None:
        for i in it:
            await call(i)

    began = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return n / (time.perf_counter() - began)


class AppProcess:
    def __init__(self, expect: dict[str, int]) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.pubsub", "--app", str(self.port), json.dumps(expect)],
            stdout=subprocess.PIPE,
            cwd=Path(__file__).parent.parent,
        )
        self.lines: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        assert self.proc.stdout is not None
        stdout = self.proc.stdout

        def pump() -> None:
            for raw in stdout:
                loop.call_soon_threadsafe(self.lines.put_nowait, json.loads(raw))

        loop.run_in_executor(None, pump)
        ready = await asyncio.wait_for(self.lines.get(), 30)
        assert ready.get("ready")

    async def result(self, timeout: float = 60) -> dict[str, Any]:
        return await asyncio.wait_for(self.lines.get(), timeout)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def config(bus_url: str, app_port: int, subscriptions: list[dict[str, Any]], **extra: Any) -> Any:
    """The sidecar's config; ``component=`` replaces the JetStream pub/sub component."""
    from runtime.config import Config

    return Config.model_validate(raw_config(bus_url, app_port, subscriptions, **extra))


def raw_config(
    bus_url: str,
    app_port: int,
    subscriptions: list[dict[str, Any]],
    component: dict[str, Any] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    return {
        "app": {"id": APP_ID, "callback": f"127.0.0.1:{app_port}"},
        "namespace": NS,
        "bus": {"url": bus_url},
        "server": {"grpc": "127.0.0.1:0", "http": "127.0.0.1:0"},
        "log_level": "warning",
        "components": {"pubsub": component or {"kind": "pubsub", "type": "nats.jetstream"}},
        "subscriptions": subscriptions,
        **extra,
    }


class Worker:
    """`l8 worker --handlers pubsub` as a user starts it, ready once its log says so."""

    def __init__(self, bus_url: str, tmp: Path, component: dict[str, Any] | None = None) -> None:
        import yaml

        from bench.procs import spawn, venv_bin

        path = tmp / f"worker-{time.monotonic_ns()}.yaml"
        cfg = raw_config(bus_url, 0, [])
        del cfg["app"]
        if component is not None:
            cfg["components"] = {"pubsub": component}
        path.write_text(yaml.safe_dump({**cfg, "log_level": "info"}))
        self.log = tmp / f"worker-{time.monotonic_ns()}.log"
        args = [venv_bin("l8"), "worker", "--config", str(path), "--bus", bus_url, "--handlers", "pubsub"]
        self.proc = spawn(args, self.log)

    async def ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while "ready in" not in (self.log.read_text() if self.log.exists() else ""):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the worker did not start:\n{self.log.read_text()}")
            await asyncio.sleep(0.05)

    def stop(self) -> None:
        from bench.procs import stop

        stop(self.proc)


async def bulk_fill(stub: Any, topic: str, n: int) -> None:
    from handlers.proto import runtime_pb2 as pb

    for start in range(0, n, 500):
        entries = [
            pb.BulkPublishRequestEntry(entry_id=str(i), event=PAYLOAD, content_type="application/json")
            for i in range(start, min(n, start + 500))
        ]
        resp = await stub.PublishBulkEvent(pb.BulkPublishRequest(pubsub_name="pubsub", topic=topic, entries=entries))
        assert not resp.failed_entries, resp.failed_entries[0]


async def faststream_rate(bus_url: str, stream: str, subject: str, n: int, batch: bool) -> float:
    """FastStream's pull consumer on the same stream: 100 per fetch, a handler per message (unary)
    or one handler call per fetched list (``batch``), acked by FastStream after the handler."""
    from faststream import AckPolicy
    from faststream.nats import JStream, NatsBroker, NatsMessage, PullSub

    broker = NatsBroker(bus_url, logger=None)
    done = asyncio.Event()
    seen = {"n": 0, "first": 0.0, "last": 0.0}

    def note(k: int) -> None:
        if seen["n"] == 0:
            seen["first"] = time.perf_counter()
        seen["n"] += k
        if seen["n"] >= n and not done.is_set():
            seen["last"] = time.perf_counter()
            done.set()

    sub = broker.subscriber(
        subject,
        stream=JStream(name=stream, declare=False),
        durable=f"faststream-{subject.rpartition('.')[2]}",
        pull_sub=PullSub(batch_size=100, batch=batch),
        ack_policy=AckPolicy.ACK,
    )
    if batch:

        @sub
        async def handle_batch(body: list[Any]) -> None:
            note(len(body))
    else:

        @sub
        async def handle(msg: NatsMessage) -> None:  # annotated: a bare body would be parsed as JSON
            note(1)

    await broker.start()
    try:
        await asyncio.wait_for(done.wait(), 90)
    finally:
        await broker.stop()
    return n / (seen["last"] - seen["first"])


async def main(n: int) -> None:
    from dapr.proto.runtime.v1 import dapr_pb2_grpc
    from dapr.proto.runtime.v1 import pubsub_pb2 as dapr_pubsub
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from bridges.nats.pubsub import event_subject, topic_token
    from bus import EmbeddedNats
    from handlers.proto import runtime_pb2 as pb
    from handlers.proto import runtime_pb2_grpc
    from runtime.sidecar import Sidecar

    tmp = Path(tempfile.mkdtemp(prefix="l8-bench-pubsub-"))
    # No credentials: they cost only at connect, and this bench measures the bus itself.
    nats = EmbeddedNats(tmp / "nats", name="bench", auth=False)
    await nats.start()
    rounds = 3
    kinds_all = ("unary", "bulk", "wunary", "wbulk")
    expect = {f"{kind}{r}": n for r in range(rounds) for kind in kinds_all} | {"latency": 300, "wlatency": 300}
    app = AppProcess(expect)
    await app.start()
    rows: list[tuple[str, str, str]] = []
    try:
        # Phase 1: publish, with no subscribers yet, so the stream fills for the delivery rows.
        publisher = Sidecar(config(nats.url, app.port, []))
        await publisher.start()
        assert publisher.grpc is not None
        target = f"127.0.0.1:{publisher.grpc.port}"
        async with grpc.aio.insecure_channel(target) as channel:
            native = runtime_pb2_grpc.RuntimeStub(channel)
            dapr = dapr_pb2_grpc.DaprStub(channel)
            health = health_pb2_grpc.HealthStub(channel)
            inflight = 64
            m = max(2000, n // 4)
            floor = await rate(m, inflight, lambda i: health.Check(health_pb2.HealthCheckRequest()))
            nat = await rate(
                m,
                inflight,
                lambda i: native.PublishEvent(
                    pb.PublishEventRequest(
                        pubsub_name="pubsub", topic="pub", data=PAYLOAD, data_content_type="application/json"
                    )
                ),
            )
            dap = await rate(
                m,
                inflight,
                lambda i: dapr.PublishEvent(
                    dapr_pubsub.PublishEventRequest(
                        pubsub_name="pubsub", topic="pub", data=PAYLOAD, data_content_type="application/json"
                    )
                ),
            )
            rows += [
                ("publish, native PublishEvent (64 in flight)", f"{nat:,.0f}/s", f"gRPC floor {floor:,.0f}/s"),
                ("publish, Dapr PublishEvent (64 in flight)", f"{dap:,.0f}/s", f"gRPC floor {floor:,.0f}/s"),
            ]
            for r in range(rounds):
                for kind in kinds_all:
                    await bulk_fill(native, f"{kind}{r}", n)
        await publisher.stop()

        # Phase 2: deliver what is waiting; FastStream reads the same topic of the same stream with
        # its own durable consumer. The machine is shared, so rounds interleave the two and each
        # row reports its best round.
        stream = f"L8_EVT_{NS}_pubsub"
        best: dict[tuple[str, str], float] = {}
        kinds = {
            "unary": {"concurrency": 64},
            "bulk": {"concurrency": 8, "bulk": {"enabled": True, "maxMessages": 100, "maxAwaitMs": 50}},
        }
        for r in range(rounds):
            for kind, sub in kinds.items():
                topic = f"{kind}{r}"
                subject = event_subject(NS, "pubsub", topic_token(topic))
                fs = await faststream_rate(nats.url, stream, subject, n, kind == "bulk")
                sidecar = Sidecar(config(nats.url, app.port, [{"pubsub": "pubsub", "topic": topic, **sub}]))
                await sidecar.start()
                got = await app.result(90)
                await sidecar.stop()
                assert got["topic"] == topic and got["count"] == n, got
                l8_rate = n / (got["last"] - got["first"])
                best[("l8", kind)] = max(best.get(("l8", kind), 0.0), l8_rate)
                best[("fs", kind)] = max(best.get(("fs", kind), 0.0), fs)
        # Phase 2b: the same through an independent worker; the front has no pub/sub worker.
        worker = Worker(nats.url, tmp)
        try:
            await worker.ready()
            for r in range(rounds):
                for kind, sub in kinds.items():
                    topic = f"w{kind}{r}"
                    front = Sidecar(
                        config(nats.url, app.port, [{"pubsub": "pubsub", "topic": topic, **sub}], workers="none")
                    )
                    await front.start()
                    got = await app.result(90)
                    await front.stop()
                    assert got["topic"] == topic and got["count"] == n, got
                    best[("worker", kind)] = max(best.get(("worker", kind), 0.0), n / (got["last"] - got["first"]))
        finally:
            worker.stop()
        for kind in kinds:
            what = "OnTopicEvent, concurrency 64" if kind == "unary" else "OnBulkTopicEvent, 100 per call"
            fs_what = "PullSub 100/fetch, per message" if kind == "unary" else "PullSub 100/fetch, batch=True"
            l8_rate, fs = best[("l8", kind)], best[("fs", kind)]
            rows.append(
                (
                    f"deliver {kind}, standalone ({what})",
                    f"{l8_rate:,.0f}/s",
                    f"FastStream in-process consumer ({fs_what}) {fs:,.0f}/s = {l8_rate / fs:.2f}x",
                )
            )
        for kind in kinds:
            w = best[("worker", kind)]
            rows.append(
                (
                    f"deliver {kind}, through an l8 worker",
                    f"{w:,.0f}/s",
                    f"standalone {best[('l8', kind)]:,.0f}/s = {w / best[('l8', kind)]:.2f}x",
                )
            )

        # Phase 3: latency, one event at a time, standalone and through a worker.
        for topic, extra in (("latency", {}), ("wlatency", {"workers": "none"})):
            worker = Worker(nats.url, tmp) if extra else None
            if worker is not None:
                await worker.ready()
            sidecar = Sidecar(
                config(nats.url, app.port, [{"pubsub": "pubsub", "topic": topic, "concurrency": 1}], **extra)
            )
            await sidecar.start()
            assert sidecar.grpc is not None
            try:
                async with grpc.aio.insecure_channel(f"127.0.0.1:{sidecar.grpc.port}") as channel:
                    native = runtime_pb2_grpc.RuntimeStub(channel)
                    for _ in range(expect[topic]):
                        data = json.dumps({"t": time.time()}).encode()
                        await native.PublishEvent(
                            pb.PublishEventRequest(
                                pubsub_name="pubsub", topic=topic, data=data, data_content_type="application/json"
                            )
                        )
                        await asyncio.sleep(0.002)
                    got = await app.result(60)
            finally:
                await sidecar.stop()
                if worker is not None:
                    worker.stop()
            lat = sorted(got["latencies"])
            p50 = statistics.median(lat) * 1000
            p99 = lat[int(len(lat) * 0.99) - 1] * 1000
            where = "through an l8 worker" if extra else "standalone"
            rows.append((f"publish → app latency, {where} (one at a time)", f"p50 {p50:.2f} ms", f"p99 {p99:.2f} ms"))
    finally:
        app.stop()
        await nats.stop()

    width = max(len(r[0]) for r in rows)
    print(
        f"pub/sub on JetStream (file storage), {n} events of {len(PAYLOAD)} B, loopback, os.cpu_count={os.cpu_count()}"
    )
    from bench.procs import loadavg

    print(f"  (load average at the end: {loadavg()})")
    for name, value, comparison in rows:
        print(f"  {name:<{width}}  {value:>14}   {comparison}")


def cli() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.pubsub")
    parser.add_argument("--events", type=int, default=5000)
    parser.add_argument("--app", type=int, help=argparse.SUPPRESS)
    parser.add_argument("expect", nargs="?", help=argparse.SUPPRESS)
    args = parser.parse_args()
    try:
        import uvloop

        loop_factory: Any = uvloop.new_event_loop
    except ImportError:
        loop_factory = None
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        if args.app:
            runner.run(app_main(args.app, json.loads(args.expect)))
        else:
            runner.run(main(args.events))


if __name__ == "__main__":
    cli()
