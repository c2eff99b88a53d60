"""Delivery to an HTTP app beside delivery to a gRPC app: `python -m bench.app_delivery [--events N]`.

Everything on loopback, started and stopped here: an embedded nats-server (JetStream, file
storage), l8 sidecars in this process, and two apps in child processes that count what they get:
a gRPC app serving Dapr's AppCallback (grpc.aio) and an HTTP app (aiohttp.web) that answers each
event as Dapr's HTTP apps do. The same events wait in the stream for both; rounds interleave the two
and each row reports its best round. Rows, the HTTP app beside the gRPC app from the same run:
- events/s, one event per call (OnTopicEvent / POST per CloudEvent), 64 in flight;
- events/s, bulk (OnBulkTopicEvent / one POST of Dapr's bulk envelope), 100 per call;
- publish → app latency p50 and p99, one event at a time.
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

from bench.pubsub import PAYLOAD, bulk_fill, free_port

NS = "bench-apps"


# ---- the apps: child processes counting what they get, a line per finished topic ----


class Counter:
    def __init__(self, expect: dict[str, int]) -> None:
        self.expect = expect
        self.counts: dict[str, int] = {}
        self.first: dict[str, float] = {}
        self.latencies: list[float] = []

    def note(self, topic: str, sent: float | None = None, n: int = 1) -> None:
        now = time.time()
        self.first.setdefault(topic, now)
        self.counts[topic] = self.counts.get(topic, 0) + n
        if sent is not None:
            self.latencies.append(now - sent)
        if self.counts[topic] == self.expect.get(topic):
            line: dict[str, Any] = {
                "topic": topic,
                "count": self.counts[topic],
                "first": self.first[topic],
                "last": now,
            }
            if topic.startswith("latency"):
                line["latencies"] = self.latencies
                self.latencies = []
            print(json.dumps(line), flush=True)


async def grpc_app(port: int, counter: Counter) -> None:
    import grpc
    from dapr.proto.runtime.v1 import appcallback_pb2 as ac
    from dapr.proto.runtime.v1 import appcallback_pb2_grpc as ac_grpc

    class App(ac_grpc.AppCallbackServicer):
        async def OnTopicEvent(self, request: Any, context: Any) -> Any:
            sent = json.loads(request.data).get("t") if request.topic.startswith("latency") else None
            counter.note(request.topic, sent)
            return ac.TopicEventResponse()

        async def OnBulkTopicEvent(self, request: Any, context: Any) -> Any:
            resp = ac.TopicEventBulkResponse()
            for entry in request.entries:
                resp.statuses.add(entry_id=entry.entry_id)
            counter.note(request.topic, None, len(request.entries))
            return resp

    server = grpc.aio.server()
    ac_grpc.add_AppCallbackServicer_to_server(App(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print(json.dumps({"ready": True}), flush=True)
    await server.wait_for_termination()


async def http_app(port: int, counter: Counter) -> None:
    from aiohttp import web

    success = b'{"status":"SUCCESS"}'

    async def event(request: web.Request) -> web.Response:
        body = json.loads(await request.read())
        topic = body["topic"]
        sent = body["data"].get("t") if topic.startswith("latency") else None
        counter.note(topic, sent)
        return web.Response(body=success, content_type="application/json")

    async def bulk(request: web.Request) -> web.Response:
        body = json.loads(await request.read())
        statuses = [{"entryId": e["entryId"], "status": "SUCCESS"} for e in body["entries"]]
        counter.note(body["topic"], None, len(statuses))
        return web.json_response({"statuses": statuses})

    app = web.Application()
    app.router.add_post("/events", event)
    app.router.add_post("/bulk", bulk)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    print(json.dumps({"ready": True}), flush=True)
    await asyncio.Event().wait()


class AppProcess:
    def __init__(self, protocol: str, expect: dict[str, int]) -> None:
        self.protocol = protocol
        self.port = free_port()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.app_delivery", "--app", protocol, str(self.port), json.dumps(expect)],
            stdout=subprocess.PIPE,
            cwd=Path(__file__).parent.parent,
        )
        self.lines: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        stdout = self.proc.stdout
        assert stdout is not None

        def pump() -> None:
            for raw in stdout:
                loop.call_soon_threadsafe(self.lines.put_nowait, json.loads(raw))

        loop.run_in_executor(None, pump)
        assert (await asyncio.wait_for(self.lines.get(), 30)).get("ready")

    async def result(self, timeout: float = 120) -> dict[str, Any]:
        return await asyncio.wait_for(self.lines.get(), timeout)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


# ---- the bench ----


def config(bus_url: str, app: AppProcess | None, subscriptions: list[dict[str, Any]]) -> Any:
    from runtime.config import Config

    return Config.model_validate(
        {
            "app": {
                "id": f"bench-{app.protocol}" if app else "bench-publisher",
                **({"callback": f"127.0.0.1:{app.port}", "protocol": app.protocol} if app else {}),
            },
            "namespace": NS,
            "bus": {"url": bus_url},
            "server": {"grpc": "127.0.0.1:0", "http": "127.0.0.1:0"},
            "log_level": "warning",
            "components": {"pubsub": {"kind": "pubsub", "type": "nats.jetstream"}},
            "subscriptions": subscriptions,
        }
    )


KINDS = {
    "unary": {"concurrency": 64},
    "bulk": {"concurrency": 8, "bulk": {"enabled": True, "maxMessages": 100, "maxAwaitMs": 50}},
}


async def deliver(bus_url: str, app: AppProcess, topic: str, kind: str, n: int) -> float:
    from runtime.sidecar import Sidecar

    route = {"http": "/bulk" if kind == "bulk" else "/events", "grpc": ""}[app.protocol]
    sidecar = Sidecar(config(bus_url, app, [{"pubsub": "pubsub", "topic": topic, "route": route, **KINDS[kind]}]))
    await sidecar.start()
    try:
        got = await app.result()
    finally:
        await sidecar.stop()
    assert got["topic"] == topic and got["count"] == n, got
    return n / (got["last"] - got["first"])


async def latency(bus_url: str, app: AppProcess, topic: str, count: int) -> tuple[float, float]:
    import grpc

    from handlers.proto import runtime_pb2 as pb
    from handlers.proto import runtime_pb2_grpc
    from runtime.sidecar import Sidecar

    route = "/events" if app.protocol == "http" else ""
    sidecar = Sidecar(config(bus_url, app, [{"pubsub": "pubsub", "topic": topic, "route": route, "concurrency": 1}]))
    await sidecar.start()
    try:
        assert sidecar.grpc is not None
        # Announced and delivering before the clock starts: a first event goes through at once.
        assert sidecar.metadata is not None
        while not any(r["state"] == "delivering" for r in await sidecar.metadata.subscriptions()):
            await asyncio.sleep(0.05)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{sidecar.grpc.port}") as channel:
            stub = runtime_pb2_grpc.RuntimeStub(channel)
            for _ in range(count):
                data = json.dumps({"t": time.time()}).encode()
                await stub.PublishEvent(
                    pb.PublishEventRequest(
                        pubsub_name="pubsub", topic=topic, data=data, data_content_type="application/json"
                    )
                )
                await asyncio.sleep(0.002)
            got = await app.result()
    finally:
        await sidecar.stop()
    lat = sorted(got["latencies"])
    return statistics.median(lat) * 1000, lat[int(len(lat) * 0.99) - 1] * 1000


async def main(n: int) -> None:
    import grpc

    from bus import EmbeddedNats
    from handlers.proto import runtime_pb2_grpc
    from runtime.sidecar import Sidecar

    tmp = Path(tempfile.mkdtemp(prefix="l8-bench-apps-"))
    nats = EmbeddedNats(tmp / "nats", name="bench-apps", auth=False)
    await nats.start()
    rounds, lat_n = 3, 300
    topics = [f"{kind}{r}" for r in range(rounds) for kind in KINDS]
    expect = {t: n for t in topics} | {f"latency-{p}{r}": lat_n for r in range(rounds) for p in ("http", "grpc")}
    apps = {p: AppProcess(p, expect) for p in ("http", "grpc")}
    best: dict[tuple[str, str], float] = {}
    lats: dict[str, list[tuple[float, float]]] = {"http": [], "grpc": []}
    try:
        for app in apps.values():
            await app.start()
        # Phase 1: fill the stream, with no subscribers yet. The app ids differ, so each app's
        # subscription is its own consumer group reading every event.
        publisher = Sidecar(config(nats.url, None, []))
        await publisher.start()
        assert publisher.grpc is not None
        async with grpc.aio.insecure_channel(f"127.0.0.1:{publisher.grpc.port}") as channel:
            stub = runtime_pb2_grpc.RuntimeStub(channel)
            for topic in topics:
                await bulk_fill(stub, topic, n)
        await publisher.stop()
        # Phase 2: deliver, interleaving the apps round by round.
        for r in range(rounds):
            for kind in KINDS:
                for protocol, app in apps.items():
                    got = await deliver(nats.url, app, f"{kind}{r}", kind, n)
                    best[(protocol, kind)] = max(best.get((protocol, kind), 0.0), got)
            for protocol, app in apps.items():
                lats[protocol].append(await latency(nats.url, app, f"latency-{protocol}{r}", lat_n))
    finally:
        for app in apps.values():
            app.stop()
        await nats.stop()

    rows = []
    for kind in KINDS:
        what = "one event per call, 64 in flight" if kind == "unary" else "bulk, 100 per call"
        h, g = best[("http", kind)], best[("grpc", kind)]
        rows.append((f"deliver to an HTTP app ({what})", f"{h:,.0f}/s", f"gRPC app {g:,.0f}/s = {h / g:.2f}x"))
    ph = min(lats["http"])
    pg = min(lats["grpc"])
    rows.append(
        (
            "publish → HTTP app latency (one at a time)",
            f"p50 {ph[0]:.2f} ms",
            f"gRPC app p50 {pg[0]:.2f} ms; p99 {ph[1]:.2f} vs {pg[1]:.2f} ms",
        )
    )
    width = max(len(r[0]) for r in rows)
    print(f"delivery to apps on JetStream, {n} events of {len(PAYLOAD)} B, loopback, os.cpu_count={os.cpu_count()}")
    for name, value, comparison in rows:
        print(f"  {name:<{width}}  {value:>14}   {comparison}")


def cli() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.app_delivery")
    parser.add_argument("--events", type=int, default=5000)
    parser.add_argument("--app", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.app:
        protocol, port, expect = args.app
        serve = http_app if protocol == "http" else grpc_app
        asyncio.run(serve(int(port), Counter(json.loads(expect))))
        return
    asyncio.run(main(args.events))


if __name__ == "__main__":
    cli()
