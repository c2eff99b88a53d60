"""InvokeBinding (NATS request) beside a direct NATS request, and GetSecret beside GetState.

Run: ``.venv/bin/python -m bench.secrets_bindings`` (about 30 s). It starts a nats-server, a NATS
responder in this process (it answers ``bench.echo`` with the request's bytes) and one ``l8 run``
on that bus with a ``nats`` binding to ``bench.echo``, an ``env`` secret store and a ``nats.kv``
state store, measures, and stops them by PID.

Rows, each the median of 3 rounds, l8 and its comparison alternating within a round:
- InvokeBinding ``request`` through l8's native API (64-byte payload) beside nats-py's
  ``request`` to the same subject and responder from this process: p50 of sequential calls, and
  calls/s with 16 in flight.
- The gRPC floor: a grpc.aio servicer in its own process (uvloop) answering InvokeBinding with the
  request's data, called by the same client: no l8 rpc can beat it on this machine.
- GetSecret beside GetState (a 64-byte value) through the same l8 and client: calls/s,
  sequential and with 64 in flight.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

import grpc
import nats
import uvloop

from bus.sync import server_has_seen
from handlers.proto import runtime_pb2 as pb
from handlers.proto import runtime_pb2_grpc
from tests.process import start_l8
from tests.servers import env_with, free_port, start_nats, stop_pid, wait_port

ROUNDS = 3
DURATION = float(os.environ.get("BENCH_SECONDS", "1.0"))
SEQUENTIAL = 400
Call = Callable[[], Awaitable[Any]]

# Answers InvokeBinding with the request's data (field 2 of the request is field 1 of the reply).
_FLOOR_SERVER = """
import sys, grpc, uvloop
from handlers.proto import runtime_pb2 as pb
async def main():
    async def answer(request, context):
        return pb.InvokeBindingResponse(data=pb.InvokeBindingRequest.FromString(request).data).SerializeToString()
    server = grpc.aio.server()
    handlers = {"InvokeBinding": grpc.unary_unary_rpc_method_handler(answer)}
    service = pb.DESCRIPTOR.services_by_name["Runtime"].full_name
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, handlers),))
    server.add_insecure_port("127.0.0.1:" + sys.argv[1])
    await server.start()
    await server.wait_for_termination()
uvloop.run(main())
"""


async def rate(call: Call, workers: int, duration: float = DURATION) -> float:
    await asyncio.gather(*(call() for _ in range(workers)))
    done = 0
    end = time.perf_counter() + duration

    async def loop() -> None:
        nonlocal done
        while time.perf_counter() < end:
            await call()
            done += 1

    began = time.perf_counter()
    await asyncio.gather(*(loop() for _ in range(workers)))
    return done / (time.perf_counter() - began)


async def p50_ms(call: Call, n: int = SEQUENTIAL) -> float:
    for _ in range(20):
        await call()
    took = []
    for _ in range(n):
        began = time.perf_counter()
        await call()
        took.append(time.perf_counter() - began)
    return statistics.median(took) * 1000


def line(name: str, l8: float, other: float, other_name: str, unit: str, lower_is_better: bool = False) -> None:
    ratio = other / l8 if lower_is_better else l8 / other
    print(f"  {name:<38} l8 {l8:>9,.2f} {unit:<8} {other_name} {other:>9,.2f} {unit:<8} ratio {ratio:5.2f}")


async def bench(nats_url: str, grpc_address: str, floor_address: str) -> None:
    nc = await nats.connect(nats_url)

    async def echo(msg: Any) -> None:
        await msg.respond(msg.data)

    await nc.subscribe("bench.echo", cb=echo)
    await server_has_seen(nc)
    client = await nats.connect(nats_url)
    channel = grpc.aio.insecure_channel(grpc_address)
    stub = runtime_pb2_grpc.RuntimeStub(channel)
    floor_channel = grpc.aio.insecure_channel(floor_address)
    floor_stub = runtime_pb2_grpc.RuntimeStub(floor_channel)
    payload = os.urandom(64)
    await stub.SaveState(pb.SaveStateRequest(store_name="statestore", states=[pb.StateItem(key="k", value=payload)]))
    binding = pb.InvokeBindingRequest(name="echo", operation="request", data=payload)
    secret = pb.GetSecretRequest(store_name="secretstore", key="BENCH_SECRET_TOKEN")
    state = pb.GetStateRequest(store_name="statestore", key="k")

    async def via_l8() -> None:
        reply = await stub.InvokeBinding(binding)
        assert reply.data == payload

    async def direct() -> None:
        reply = await client.request("bench.echo", payload, timeout=5)
        assert reply.data == payload

    async def floor() -> None:
        reply = await floor_stub.InvokeBinding(binding)
        assert reply.data == payload

    async def get_secret() -> None:
        await stub.GetSecret(secret)

    async def get_state() -> None:
        await stub.GetState(state)

    results: dict[str, list[float]] = {}
    for _ in range(ROUNDS):
        for key, fn in (
            ("bind p50", lambda: p50_ms(via_l8)),
            ("direct p50", lambda: p50_ms(direct)),
            ("bind 16", lambda: rate(via_l8, 16)),
            ("direct 16", lambda: rate(direct, 16)),
            ("floor p50", lambda: p50_ms(floor)),
            ("floor 16", lambda: rate(floor, 16)),
            ("secret 1", lambda: rate(get_secret, 1)),
            ("state 1", lambda: rate(get_state, 1)),
            ("secret 64", lambda: rate(get_secret, 64)),
            ("state 64", lambda: rate(get_state, 64)),
        ):
            results.setdefault(key, []).append(await fn())
    m = {k: statistics.median(v) for k, v in results.items()}
    print(f"InvokeBinding (nats request, 64 B) beside a direct NATS request (median of {ROUNDS})")
    line("sequential p50", m["bind p50"], m["direct p50"], "direct", "ms", lower_is_better=True)
    line("16 in flight", m["bind 16"], m["direct 16"], "direct", "calls/s")
    line("sequential p50, beside the gRPC floor", m["bind p50"], m["floor p50"], "floor", "ms", lower_is_better=True)
    line("16 in flight, beside the gRPC floor", m["bind 16"], m["floor 16"], "floor", "calls/s")
    print(f"GetSecret beside GetState (nats.kv), same l8 (median of {ROUNDS})")
    line("sequential", m["secret 1"], m["state 1"], "GetState", "calls/s")
    line("64 in flight", m["secret 64"], m["state 64"], "GetState", "calls/s")
    await channel.close()
    await floor_channel.close()
    await client.close()
    await nc.close()


async def main() -> None:
    print("load average at start: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
    work = Path(tempfile.mkdtemp(prefix="l8-bench-sb-"))
    server = start_nats(work / "nats")
    config = {
        "app": {"id": "bench-sb"},
        "bus": {"url": server.url},
        "components": {
            "statestore": {"kind": "state", "type": "nats.kv"},
            "secretstore": {"kind": "secrets", "type": "env", "metadata": {"prefixes": "BENCH_SECRET_"}},
            "echo": {"kind": "bindings", "type": "nats", "metadata": {"subject": "bench.echo"}},
        },
    }
    l8 = start_l8(config, cwd=work, env=env_with(BENCH_SECRET_TOKEN="t" * 32))
    floor_port = free_port()
    floor_server = subprocess.Popen([sys.executable, "-c", _FLOOR_SERVER, str(floor_port)])
    try:
        wait_port(floor_port, proc=floor_server)
        await bench(server.url, l8.grpc_address, f"127.0.0.1:{floor_port}")
    finally:
        stop_pid(floor_server)
        l8.stop()
        server.stop()
        print("load average at end: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))


if __name__ == "__main__":
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    uvloop.run(main())
