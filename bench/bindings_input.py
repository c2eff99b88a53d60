"""Input binding delivery beside pub/sub delivery: `python -m bench.bindings_input [--events N]`.

Everything on loopback, started and stopped here: one nats-server (JetStream, file storage), an
l8 sidecar in this process, and an app callback server (plain asyncio gRPC) in a child process
answering OnBindingEvent and OnTopicEvent. Per round, N events wait in JetStream before the
sidecar starts: N on a JetStream-backed NATS input binding's stream, N on a pub/sub topic of the
same broker; then a sidecar delivers one of them to the app and the app times the first and last
event. Rows, each the best of 3 rounds, the kinds interleaved within a round:
- events/s of the input binding (``nats`` with ``stream``, OnBindingEvent, concurrency 32);
- beside pub/sub delivery of the same broker to the same app (OnTopicEvent, concurrency 32), the
  same delivery loop with a CloudEvents envelope instead of the binding frame;
- beside FastStream's in-process JetStream pull consumer reading the binding's stream (no app, no
  bus hop): what reading the stream costs at all on this machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.pubsub import bulk_fill, faststream_rate, free_port

APP_ID = "bench"
NS = "bench"
SUBJECT = "bench.orders"
STREAM = "BENCH_ORDERS"
CONCURRENCY = 32
PAYLOAD = json.dumps({"order": 42, "item": "widget", "qty": 3, "note": "x" * 40}).encode()


# ---- the app: a child process counting what it gets, printing a line per finished round ----


async def app_main(port: int, expect: int) -> None:
    import grpc
    from dapr.proto.runtime.v1 import appcallback_pb2 as ac
    from dapr.proto.runtime.v1 import appcallback_pb2_grpc as ac_grpc

    counts: dict[str, int] = {}
    first: dict[str, float] = {}

    def note(key: str) -> None:
        now = time.time()
        first.setdefault(key, now)
        counts[key] = counts.get(key, 0) + 1
        if counts[key] == expect:
            print(json.dumps({"key": key, "count": expect, "first": first[key], "last": now}), flush=True)

    class App(ac_grpc.AppCallbackServicer):
        async def ListTopicSubscriptions(self, request: Any, context: Any) -> Any:
            return ac.ListTopicSubscriptionsResponse()

        async def ListInputBindings(self, request: Any, context: Any) -> Any:
            return ac.ListInputBindingsResponse(bindings=["orders"])

        async def OnBindingEvent(self, request: Any, context: Any) -> Any:
            note(request.data.partition(b":")[0].decode())
            return ac.BindingEventResponse()

        async def OnTopicEvent(self, request: Any, context: Any) -> Any:
            note(request.topic)
            return ac.TopicEventResponse()

    server = grpc.aio.server()
    ac_grpc.add_AppCallbackServicer_to_server(App(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print(json.dumps({"ready": True}), flush=True)
    await server.wait_for_termination()


class AppProcess:
    def __init__(self, expect: int) -> None:
        import subprocess
        import sys

        self.port = free_port()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.bindings_input", "--app", str(self.port), "--events", str(expect)],
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

    async def result(self, timeout: float = 90) -> dict[str, Any]:
        return await asyncio.wait_for(self.lines.get(), timeout)

    def stop(self) -> None:
        import subprocess

        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def config(bus_url: str, app_port: int | None, subscriptions: list[dict[str, Any]], binding: bool) -> Any:
    from runtime.config import Config

    components: dict[str, Any] = {"pubsub": {"kind": "pubsub", "type": "nats.jetstream"}}
    if binding:
        components["orders"] = {
            "kind": "bindings",
            "type": "nats",
            "metadata": {"subject": SUBJECT, "stream": STREAM, "concurrency": str(CONCURRENCY)},
        }
    app: dict[str, Any] = {"id": APP_ID}
    if app_port is not None:
        app["callback"] = f"127.0.0.1:{app_port}"
    return Config.model_validate(
        {
            "app": app,
            "namespace": NS,
            "bus": {"url": bus_url},
            "server": {"grpc": "127.0.0.1:0", "http": "127.0.0.1:0"},
            "log_level": "warning",
            "components": components,
            "subscriptions": subscriptions,
        }
    )


async def fill_binding(nc: Any, key: str, n: int) -> None:
    js = nc.jetstream()
    for start in range(0, n, 500):
        acks = [js.publish(SUBJECT, key.encode() + b":" + PAYLOAD) for _ in range(start, min(n, start + 500))]
        await asyncio.gather(*acks)


async def main(n: int) -> None:
    import grpc
    import nats as nats_client

    from bus import EmbeddedNats
    from handlers.proto import runtime_pb2_grpc
    from runtime.sidecar import Sidecar

    tmp = Path(tempfile.mkdtemp(prefix="l8-bench-bindings-"))
    server = EmbeddedNats(tmp / "nats", name="bench", auth=False)
    await server.start()
    app = AppProcess(n)
    await app.start()
    nc = await nats_client.connect(server.url)
    rounds = 3
    best: dict[str, float] = {}
    try:
        # A sidecar without the app creates the binding's stream and fills the pub/sub topics.
        filler = Sidecar(config(server.url, None, [], binding=True))
        await filler.start()
        assert filler.grpc is not None
        async with grpc.aio.insecure_channel(f"127.0.0.1:{filler.grpc.port}") as channel:
            native = runtime_pb2_grpc.RuntimeStub(channel)
            for r in range(rounds):
                await bulk_fill(native, f"topic{r}", n)
        await filler.stop()
        for r in range(rounds):
            # The binding: its durable consumer goes on where the last round left it.
            await fill_binding(nc, f"bind{r}", n)
            sidecar = Sidecar(config(server.url, app.port, [], binding=True))
            await sidecar.start()
            got = await app.result()
            await sidecar.stop()
            assert got["key"] == f"bind{r}", got
            best["binding"] = max(best.get("binding", 0.0), n / (got["last"] - got["first"]))

            sub = {"pubsub": "pubsub", "topic": f"topic{r}", "concurrency": CONCURRENCY}
            sidecar = Sidecar(config(server.url, app.port, [sub], binding=True))
            await sidecar.start()
            got = await app.result()
            await sidecar.stop()
            assert got["key"] == f"topic{r}", got
            best["pubsub"] = max(best.get("pubsub", 0.0), n / (got["last"] - got["first"]))

            # FastStream's own durable consumer reads the same round's events.
            fs = await faststream_rate(server.url, STREAM, SUBJECT, n, batch=False)
            best["faststream"] = max(best.get("faststream", 0.0), fs)
    finally:
        await nc.close()
        app.stop()
        await server.stop()

    binding, pubsub, fs = best["binding"], best["pubsub"], best["faststream"]
    rows = [
        (
            f"input binding nats+stream → OnBindingEvent (concurrency {CONCURRENCY})",
            f"{binding:,.0f}/s",
            f"pub/sub delivery → OnTopicEvent (concurrency {CONCURRENCY}) {pubsub:,.0f}/s = {binding / pubsub:.2f}x",
        ),
        (
            "",
            "",
            f"FastStream in-process pull consumer on the same stream {fs:,.0f}/s = {binding / fs:.2f}x",
        ),
    ]
    width = max(len(r[0]) for r in rows)
    print(
        f"input bindings on JetStream (file storage), {n} events of {len(PAYLOAD)} B, loopback, "
        f"os.cpu_count={os.cpu_count()}, best of {rounds} rounds"
    )
    for name, value, comparison in rows:
        print(f"  {name:<{width}}  {value:>10}   {comparison}")


def cli() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.bindings_input")
    parser.add_argument("--events", type=int, default=5000)
    parser.add_argument("--app", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    try:
        import uvloop

        loop_factory: Any = uvloop.new_event_loop
    except ImportError:
        loop_factory = None
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        if args.app:
            runner.run(app_main(args.app, args.events))
        else:
            runner.run(main(args.events))


if __name__ == "__main__":
    cli()
