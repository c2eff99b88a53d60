"""Pub/sub bridges beside their raw drivers: publish-batch and fetch+ack throughput, same run.

Starts tansu (Kafka API, in memory) and redis-server on free loopback ports, stops them by PID.
Each figure is measured twice in turn, l8's bridge and the raw driver doing the same work:

- publish: N messages of SIZE bytes in batches of BATCH (bridge ``publish_batch`` vs aiokafka
  ``send()`` futures gathered / a non-transactional pipeline of ``XADD``),
- fetch+ack: the same N read back by a new group and settled one by one (bridge ``fetch`` + ``ack``
  vs aiokafka ``getmany`` + ``commit`` per batch / ``XREADGROUP`` + ``XACK`` per batch);
- delivered to an app through an independent ``l8 worker --handlers pubsub`` (a front-only sidecar
  in this process, the app a child process as in bench/pubsub.py), unary (OnTopicEvent, 64 at once)
  and bulk (OnBulkTopicEvent, 100 per call), beside the raw driver's consume rate above.

Run: ``.venv/bin/python -m bench.pubsub_bridges [--messages N]``.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from bridges import registry
from bridges.protocols import PubSub
from tests.servers import running, start_redis, start_tansu

SIZE = 100
BATCH = 500


def name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


async def timed(work: Callable[[], Awaitable[int]]) -> float:
    start = time.perf_counter()
    count = await work()
    return count / (time.perf_counter() - start)


async def bridge_publish(pubsub: PubSub, topic: str, n: int) -> int:
    payload = b"x" * SIZE
    for start in range(0, n, BATCH):
        results = await pubsub.publish_batch(topic, [(payload, {"i": str(i)}) for i in range(start, start + BATCH)])
        assert all(r is None for r in results), results
    return n


async def bridge_consume(pubsub: PubSub, topic: str, n: int) -> float:
    sub = await pubsub.subscribe(topic, name("g"), max_in_flight=2 * BATCH)
    first = await sub.fetch(BATCH, 30)  # the group join is not part of the figure
    start = time.perf_counter()
    for m in first:
        await m.ack()
    got = len(first)
    while got < n:
        batch = await sub.fetch(BATCH, 5)
        if not batch:
            raise RuntimeError(f"bridge fetch stalled at {got}/{n}")
        for m in batch:
            await m.ack()
        got += len(batch)
    rate = (got - len(first)) / (time.perf_counter() - start)
    await sub.close()
    return rate


async def kafka_raw_publish(producer: AIOKafkaProducer, topic: str, n: int) -> int:
    payload = b"x" * SIZE
    for start in range(0, n, BATCH):
        futures = [
            await producer.send(topic, payload, headers=[("i", str(i).encode())]) for i in range(start, start + BATCH)
        ]
        await asyncio.gather(*futures)
    return n


async def kafka_raw_consume(brokers: str, topic: str, n: int) -> float:
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=brokers,
        group_id=name("g"),
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        session_timeout_ms=1000,
        heartbeat_interval_ms=100,
    )
    await consumer.start()
    try:
        got = 0
        start = 0.0
        while got < n:
            batches = await consumer.getmany(timeout_ms=5000, max_records=BATCH)
            if not batches:
                raise RuntimeError(f"raw consumer stalled at {got}/{n}")
            if not start:
                start = time.perf_counter()
                first = sum(len(r) for r in batches.values())
            got += sum(len(r) for r in batches.values())
            await consumer.commit({tp: records[-1].offset + 1 for tp, records in batches.items()})
        return (got - first) / (time.perf_counter() - start)
    finally:
        await consumer.stop()


async def redis_raw_publish(r: Any, topic: str, n: int) -> int:
    payload = b"x" * SIZE
    for start in range(0, n, BATCH):
        pipe = r.pipeline(transaction=False)
        for i in range(start, start + BATCH):
            pipe.xadd(topic, {"data": payload, "headers": f'{{"i":"{i}"}}'})
        await pipe.execute()
    return n


async def redis_raw_consume(r: Any, topic: str, n: int) -> float:
    group = name("g")
    await r.xgroup_create(topic, group, id="0", mkstream=True)
    got = 0
    start = time.perf_counter()
    while got < n:
        found = await r.xreadgroup(group, "c", {topic: ">"}, count=BATCH, block=5000)
        if not found:
            raise RuntimeError(f"raw consumer stalled at {got}/{n}")
        ids = [msg_id for msg_id, _ in found[0][1]]
        await r.xack(topic, group, *ids)
        got += len(ids)
    return got / (time.perf_counter() - start)


def row(what: str, l8: list[float], raw: list[float], raw_name: str) -> None:
    # The median of the rounds: the box is shared, so single rounds swing widely.
    a, b = sorted(l8)[len(l8) // 2], sorted(raw)[len(raw) // 2]
    print(f"  {what:<14} l8 {a:>9,.0f} msg/s   {raw_name:<26} {b:>9,.0f} msg/s   ratio {a / b:.2f}")


ROUNDS = 3


async def bench_kafka(n: int) -> None:
    with running(start_tansu()) as server:
        env = registry.BridgeEnv(nats=None, namespace="bench", app_id="bench")
        meta = {
            "brokers": server.url,
            "sessionTimeoutMs": "1000",
            "heartbeatIntervalMs": "100",
            "enableIdempotence": "false",
        }
        pubsub: PubSub = registry.create("pubsub", "kafka", "pubsub", meta, env)
        await pubsub.start()
        producer = AIOKafkaProducer(bootstrap_servers=server.url, acks="all", enable_idempotence=False)
        await producer.start()
        try:
            print(f"kafka (tansu 0.6, aiokafka, {n} messages of {SIZE} B, batches of {BATCH}, median of {ROUNDS})")
            pubs: tuple[list[float], list[float]] = ([], [])
            subs: tuple[list[float], list[float]] = ([], [])
            for _ in range(ROUNDS):
                ours, theirs = name("l8"), name("raw")
                await pubsub.publish(ours, b"warm", {})  # topic creation and metadata are not measured
                await producer.send_and_wait(theirs, b"warm")
                pubs[0].append(await timed(lambda: bridge_publish(pubsub, ours, n)))  # noqa: B023
                pubs[1].append(await timed(lambda: kafka_raw_publish(producer, theirs, n)))  # noqa: B023
                subs[0].append(await bridge_consume(pubsub, ours, n + 1))
                subs[1].append(await kafka_raw_consume(server.url, theirs, n + 1))
            row("publish batch", *pubs, "aiokafka send() gathered")
            row("fetch + ack", *subs, "aiokafka getmany+commit")
            component = {"kind": "pubsub", "type": "kafka", "metadata": meta}
            delivery_rows(await Through(component).rates(pubsub, n), subs[1], "aiokafka getmany+commit")
        finally:
            await producer.stop()
            await pubsub.stop()


async def bench_redis(n: int) -> None:
    with running(start_redis()) as server:
        url = f"redis://127.0.0.1:{server.port}"
        env = registry.BridgeEnv(nats=None, namespace="bench", app_id="bench")
        pubsub: PubSub = registry.create("pubsub", "redis", "pubsub", {"url": url}, env)
        await pubsub.start()
        raw = aioredis.Redis.from_url(url)
        try:
            print(f"redis streams ({n} messages of {SIZE} B, batches of {BATCH}, median of {ROUNDS})")
            pubs: tuple[list[float], list[float]] = ([], [])
            subs: tuple[list[float], list[float]] = ([], [])
            for _ in range(ROUNDS):
                ours, theirs = name("l8"), name("raw")
                pubs[0].append(await timed(lambda: bridge_publish(pubsub, ours, n)))  # noqa: B023
                pubs[1].append(await timed(lambda: redis_raw_publish(raw, theirs, n)))  # noqa: B023
                subs[0].append(await bridge_consume(pubsub, ours, n))
                subs[1].append(await redis_raw_consume(raw, theirs, n))
            row("publish batch", *pubs, "redis-py XADD pipeline")
            row("fetch + ack", *subs, "redis-py XREADGROUP+XACK")
            component = {"kind": "pubsub", "type": "redis", "metadata": {"url": url}}
            delivery_rows(await Through(component).rates(pubsub, n), subs[1], "redis-py XREADGROUP+XACK")
        finally:
            await raw.aclose()
            await pubsub.stop()


class Through:
    """A bus, an app and an ``l8 worker`` for one broker's delivery rows."""

    def __init__(self, component: dict[str, Any]) -> None:
        self.component = component
        self.tmp = Path(tempfile.mkdtemp(prefix="l8-bench-bridges-"))

    async def rates(self, pubsub: PubSub, n: int) -> dict[str, float]:
        from bench.pubsub import PAYLOAD, AppProcess, Worker, config
        from bus import EmbeddedNats
        from handlers.pubsub_envelope import wrap
        from runtime.sidecar import Sidecar

        kinds = {
            "unary": {"concurrency": 64},
            "bulk": {"concurrency": 8, "bulk": {"enabled": True, "maxMessages": 100, "maxAwaitMs": 50}},
        }
        topics = {kind: name(kind) for kind in kinds}
        for topic in topics.values():
            out = wrap("pubsub", 1 << 20, topic, PAYLOAD, "application/json", {}, _Caller(), "bench")
            for start in range(0, n, BATCH):
                results = await pubsub.publish_batch(topic, [(out.data, out.headers)] * min(BATCH, n - start))
                assert all(r is None for r in results), results
        nats = EmbeddedNats(self.tmp / "nats", name="bench", auth=False)
        await nats.start()
        app = AppProcess(dict.fromkeys(topics.values(), n))
        await app.start()
        worker = Worker(nats.url, self.tmp, self.component)
        found: dict[str, float] = {}
        try:
            await worker.ready()
            for kind, sub in kinds.items():
                subs = [{"pubsub": "pubsub", "topic": topics[kind], **sub}]
                front = Sidecar(config(nats.url, app.port, subs, component=self.component, workers="none"))
                await front.start()
                got = await app.result(120)
                await front.stop()
                found[kind] = n / (got["last"] - got["first"])
        finally:
            worker.stop()
            app.stop()
            await nats.stop()
        return found


class _Caller:
    app_id = "bench"
    traceparent = None


def delivery_rows(found: dict[str, float], raw: list[float], raw_name: str) -> None:
    b = sorted(raw)[len(raw) // 2]
    for kind, rate in found.items():
        what = f"via worker, {kind}"
        print(f"  {what:<22} l8 {rate:>9,.0f} ev/s   {raw_name:<26} {b:>9,.0f} msg/s   ratio {rate / b:.2f}")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--messages", type=int, default=20_000)
    args = parser.parse_args()
    n = args.messages - args.messages % BATCH or BATCH
    await bench_kafka(n)
    await bench_redis(n)


if __name__ == "__main__":
    try:
        import uvloop

        uvloop.run(main())
    except ImportError:
        asyncio.run(main())
