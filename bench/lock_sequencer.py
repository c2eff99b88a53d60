"""Lock and Sequencer throughput through l8, each figure beside the direct backend operation.

Run: ``.venv/bin/python -m bench.lock_sequencer`` (about a minute). It starts its own nats-server
and redis-server on free loopback ports and one ``l8 run`` subprocess on that bus (lock and
sequencer components on both backends), measures, and stops them all by PID.

Rows:
- TryLock+Unlock pairs/s, 1 client and 16 clients (each its own resource), through l8's native
  API beside the same pair straight on the backend (NATS KV create with a TTL + delete with the
  revision; Redis SET NX PX + the owner-checked Lua delete).
- GetNextId ids/s on one key with 1 and with 100 concurrent callers, WEAK and STRONG, beside the
  direct operation: a KV compare-and-set loop (get + update with the revision) on NATS, INCR on
  Redis.
- The gRPC floor: a Python grpc.aio server (its own process, uvloop) that answers GetNextId with a
  constant, measured with the same client; no l8 rpc can be faster than this on the same machine.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

import grpc
import nats
import nats.js.errors
import redis.asyncio as aioredis
import uvloop
from nats.js.api import KeyValueConfig, StorageType

from bridges.redis.lock import _UNLOCK
from handlers.proto import runtime_pb2 as pb
from handlers.proto import runtime_pb2_grpc
from tests.process import start_l8
from tests.servers import free_port, start_nats, start_redis, stop_pid, wait_port

ROUNDS = 3  # l8 and direct alternate; the median round of each stands, so a burst of other load moves one only
DURATION = float(os.environ.get("BENCH_SECONDS", "0.8"))  # per round
Call = Callable[[], Awaitable[Any]]


async def rate(make_call: Callable[[int], Call], workers: int, duration: float = DURATION) -> float:
    """Calls per second with ``workers`` closed loops; a short warm-up first."""
    calls = [make_call(i) for i in range(workers)]
    await asyncio.gather(*(c() for c in calls))
    done = 0
    end = time.perf_counter() + duration

    async def loop(call: Call) -> None:
        nonlocal done
        while time.perf_counter() < end:
            await call()
            done += 1

    began = time.perf_counter()
    await asyncio.gather(*(loop(c) for c in calls))
    return done / (time.perf_counter() - began)


async def compare(name: str, l8: Callable[[int], Call], direct: Callable[[int], Call], workers: int, unit: str) -> None:
    l8_rates, direct_rates = [], []
    for _ in range(ROUNDS):
        l8_rates.append(await rate(l8, workers))
        direct_rates.append(await rate(direct, workers))
    row(name, statistics.median(l8_rates), statistics.median(direct_rates), unit)


def row(name: str, l8: float, direct: float, unit: str) -> None:
    print(f"  {name:<44} l8 {l8:>9,.0f} {unit:<8} direct {direct:>9,.0f} {unit:<8} l8/direct {l8 / direct:5.2f}")
    sys.stdout.flush()


async def bench(nats_url: str, redis_url: str, grpc_address: str) -> None:
    channel = grpc.aio.insecure_channel(grpc_address)
    stub = runtime_pb2_grpc.RuntimeStub(channel)
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    kv = await js.create_key_value(KeyValueConfig(bucket="bench_direct", history=1, storage=StorageType.FILE))
    r = aioredis.Redis.from_url(redis_url, max_connections=128)
    unlock_script = r.register_script(_UNLOCK)
    run = uuid.uuid4().hex[:6]

    print("TryLock+Unlock pairs/s")
    for store, backend in (("lockstore", "nats.kv"), ("lockredis", "redis")):
        for workers in (1, 16):

            def via_l8(i: int, store: str = store, workers: int = workers) -> Call:
                res, me = f"l-{run}-{workers}-{i}", uuid.uuid4().hex

                async def call() -> None:
                    got = await stub.TryLock(
                        pb.TryLockRequest(store_name=store, resource_id=res, lock_owner=me, expire=30)
                    )
                    assert got.success
                    await stub.Unlock(pb.UnlockRequest(store_name=store, resource_id=res, lock_owner=me))

                return call

            def direct(i: int, backend: str = backend, workers: int = workers) -> Call:
                res, me = f"d-{run}-{workers}-{i}", uuid.uuid4().hex

                async def nats_pair() -> None:
                    try:
                        rev = await kv.create(res, me.encode(), msg_ttl=30)
                    except nats.js.errors.KeyWrongLastSequenceError:
                        raise AssertionError("held") from None
                    await kv.delete(res, last=rev)

                async def redis_pair() -> None:
                    assert await r.set(res, me, nx=True, px=30_000)
                    await unlock_script(keys=[res], args=[me])

                return nats_pair if backend == "nats.kv" else redis_pair

            await compare(f"{backend}, {workers} client(s)", via_l8, direct, workers, "pairs/s")

    print("GetNextId ids/s, one key")
    for store, backend in (("sequencer", "nats.kv"), ("seqredis", "redis")):
        for workers in (1, 100):
            for mode, label in ((pb.SequencerOptions.WEAK, "WEAK"), (pb.SequencerOptions.STRONG, "STRONG")):
                req = pb.GetNextIdRequest(
                    store_name=store,
                    key=f"k-{run}-{workers}-{label}",
                    options=pb.SequencerOptions(increment=mode),  # type: ignore[arg-type]
                )

                def via_l8(i: int, req: pb.GetNextIdRequest = req) -> Call:
                    async def call() -> None:
                        await stub.GetNextId(req)

                    return call

                direct = direct_ids(backend, kv, r, f"s-{run}-{workers}")
                await compare(f"{backend} {label}, {workers} caller(s)", via_l8, direct, workers, "ids/s")
    await channel.close()
    await r.aclose()
    await js.delete_key_value("bench_direct")
    await nc.close()


def direct_ids(backend: str, kv: Any, r: Any, key: str) -> Callable[[int], Call]:
    """The backend's own next-id: a KV get + compare-and-set loop on NATS, INCR on Redis."""

    def make(i: int) -> Call:
        async def nats_cas() -> None:
            while True:
                try:
                    entry = await kv.get(key)
                except nats.js.errors.KeyNotFoundError:
                    try:
                        await kv.create(key, b"1")
                        return
                    except nats.js.errors.KeyWrongLastSequenceError:
                        continue
                try:
                    await kv.update(key, str(int(entry.value) + 1).encode(), last=entry.revision)
                    return
                except nats.js.errors.KeyWrongLastSequenceError:
                    continue

        async def incr() -> None:
            await r.incr(key)

        return nats_cas if backend == "nats.kv" else incr

    return make


# A server that answers every GetNextId with the same bytes: the cost of a Python gRPC call alone.
_FLOOR_SERVER = """
import asyncio, sys, grpc, uvloop
async def main():
    reply = bytes([8, 1])
    async def answer(request, context):
        return reply
    server = grpc.aio.server()
    handlers = {"GetNextId": grpc.unary_unary_rpc_method_handler(answer)}
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("spec.proto.runtime.v1.Runtime", handlers),))
    server.add_insecure_port("127.0.0.1:" + sys.argv[1])
    await server.start()
    await server.wait_for_termination()
uvloop.run(main())
"""


async def floor(address: str) -> None:
    channel = grpc.aio.insecure_channel(address)
    stub = runtime_pb2_grpc.RuntimeStub(channel)
    req = pb.GetNextIdRequest(store_name="sequencer", key="k")

    def make(i: int) -> Call:
        async def call() -> None:
            await stub.GetNextId(req)

        return call

    print("gRPC floor (no-op servicer answering GetNextId)")
    for workers in (1, 100):
        rates = [await rate(make, workers) for _ in range(ROUNDS)]
        print(f"  {workers} caller(s){'':<33} {statistics.median(rates):>12,.0f} calls/s")
    await channel.close()


def main() -> None:
    nats_server, redis_server = start_nats(), start_redis()
    redis_url = f"redis://127.0.0.1:{redis_server.port}"
    config = {
        "app": {"id": "bench"},
        "bus": {"url": nats_server.url},
        "log_level": "warning",
        "components": {
            "lockstore": {"kind": "lock", "type": "nats.kv"},
            "lockredis": {"kind": "lock", "type": "redis", "metadata": {"url": redis_url}},
            "sequencer": {"kind": "sequencer", "type": "nats.kv"},
            "seqredis": {"kind": "sequencer", "type": "redis", "metadata": {"url": redis_url}},
        },
    }
    floor_port = free_port()
    floor_server = subprocess.Popen([sys.executable, "-c", _FLOOR_SERVER, str(floor_port)])
    wait_port(floor_port, proc=floor_server)
    l8 = start_l8(config)
    began = time.monotonic()
    try:
        print(
            f"l8 at {l8.grpc_address} (one `l8 run` process, workers in process), uvloop on both sides, "
            f"bus {nats_server.url}; {ROUNDS} rounds of {DURATION}s per row, medians"
        )
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:  # as l8 itself runs
            runner.run(bench(nats_server.url, redis_url, l8.grpc_address))
            runner.run(floor(f"127.0.0.1:{floor_port}"))
    finally:
        stop_pid(floor_server)
        l8.stop()
        nats_server.stop()
        redis_server.stop()
    print(f"done in {time.monotonic() - began:.0f}s")


if __name__ == "__main__":
    main()
