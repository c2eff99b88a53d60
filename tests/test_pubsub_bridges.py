"""One conformance suite for the PubSub bridge protocol, run against every pub/sub bridge.

A bridge joins by adding its type to BRIDGES and a branch to ``spec_for`` (and, if it needs the
bus, to ``open_pubsub``). Servers are real (tansu for Kafka, redis-server, nats-server) and shared
by the session; every test uses topics and groups of its own.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import pytest

from bridges import registry
from bridges.errors import InvalidArgument, L8Error
from bridges.protocols import PubSub, Received, Subscription
from tests.conftest import unique
from tests.servers import Server, start_nats, start_redis, start_tansu

BRIDGES = ["kafka", "redis", "nats.jetstream"]

# Short enough that takeovers and group joins happen within a test, long enough for a loaded box.
REDIS_PROCESSING_TIMEOUT = 2.0


@dataclass
class Spec:
    """How to build one component of a pub/sub type against the session's servers."""

    type: str
    metadata: dict[str, str]
    nats_url: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def spec_for(type_: str, request: pytest.FixtureRequest) -> Spec:
    """The one per-type factory: the component metadata each bridge runs with in this suite."""
    if type_ == "kafka":
        kafka = request.getfixturevalue("kafka_server")
        # tansu takes about session_timeout/2 to (re)join a group; short values keep tests quick.
        return Spec(type_, {"brokers": kafka.url, "sessionTimeoutMs": "1000", "heartbeatIntervalMs": "100"})
    if type_ == "redis":
        redis_server = request.getfixturevalue("redis_server")
        return Spec(
            type_,
            {
                "url": f"redis://127.0.0.1:{redis_server.port}",
                "processingTimeout": f"{REDIS_PROCESSING_TIMEOUT}s",
                "redeliverInterval": "0.25s",
            },
        )
    if type_ == "nats.jetstream":
        nats_server = request.getfixturevalue("nats_server")
        # Short, so that a message a dead subscriber held comes back within a test.
        return Spec(type_, {"ackWaitSeconds": "2"}, nats_url=nats_server.url)
    raise AssertionError(f"no spec for pub/sub type {type_!r}")


def private_broker(type_: str, port: int | None = None, data_dir: Any = None) -> tuple[Server, dict[str, str]]:
    """A broker of the type's own for a test that restarts it, and the metadata pointing at it."""
    if type_ == "kafka":
        kafka = start_tansu(port)
        return kafka, {"brokers": kafka.url}
    if type_ == "redis":
        redis_server = start_redis(port)
        return redis_server, {"url": f"redis://127.0.0.1:{redis_server.port}"}
    if type_ == "nats.jetstream":
        nats_server = start_nats(data_dir, port)
        return nats_server, {}
    raise AssertionError(f"no private broker for pub/sub type {type_!r}")


async def open_pubsub(
    spec: Spec, nats_url: str | None = None, **metadata: str
) -> tuple[PubSub, Callable[[], Awaitable[None]]]:
    nc = None
    url = nats_url or spec.nats_url
    if spec.type.startswith("nats.") and url:
        import nats

        nc = await nats.connect(url, max_reconnect_attempts=-1, reconnect_time_wait=0.2)
    env = registry.BridgeEnv(nats=nc, namespace="test", app_id=unique("app"))
    pubsub: PubSub = registry.create("pubsub", spec.type, "pubsub", {**spec.metadata, **metadata}, env)
    await pubsub.start()

    async def close() -> None:
        await pubsub.stop()
        if nc is not None:
            await nc.close()

    return pubsub, close


@pytest.fixture(params=BRIDGES)
def spec(request: pytest.FixtureRequest) -> Spec:
    return spec_for(request.param, request)


Opener = Callable[..., Awaitable[PubSub]]


@pytest.fixture
async def make_pubsub(spec: Spec) -> AsyncIterator[Opener]:
    closers: list[Callable[[], Awaitable[None]]] = []

    async def make(**metadata: str) -> PubSub:
        pubsub, close = await open_pubsub(spec, **metadata)
        closers.append(close)
        return pubsub

    yield make
    for close in reversed(closers):
        await close()


@pytest.fixture
async def pubsub(make_pubsub: Opener) -> PubSub:
    return await make_pubsub()


async def collect(
    sub: Subscription, count: int, *, settle: str | None = "ack", timeout: float = 30.0, batch: int = 100
) -> list[Received]:
    """Fetch until ``count`` messages arrived (or the deadline passed), settling each as asked."""
    got: list[Received] = []
    deadline = time.monotonic() + timeout
    while len(got) < count and time.monotonic() < deadline:
        for msg in await sub.fetch(min(batch, count - len(got)), 0.5):
            got.append(msg)
            if settle == "ack":
                await msg.ack()
    return got


def texts(messages: list[Received]) -> list[str]:
    return [m.data.decode() for m in messages]


async def test_a_published_message_arrives_with_its_data_and_headers(pubsub: PubSub) -> None:
    topic, group = unique("t"), unique("g")
    sub = await pubsub.subscribe(topic, group, max_in_flight=10)
    await pubsub.publish(topic, b"\x00hello\xff", {"content-type": "application/octet-stream", "trace": "abc"})
    [msg] = await collect(sub, 1)
    assert msg.data == b"\x00hello\xff"
    assert msg.headers == {"content-type": "application/octet-stream", "trace": "abc"}
    assert msg.topic == topic
    assert msg.attempt == 1
    await sub.close()


async def test_ten_sequenced_messages_arrive_in_order_one_at_a_time_on_an_ordered_subscription(
    pubsub: PubSub,
) -> None:
    topic, group = unique("t"), unique("g")
    for i in range(10):
        await pubsub.publish(topic, str(i).encode(), {})
    sub = await pubsub.subscribe(topic, group, max_in_flight=10, ordered=True)
    seen: list[str] = []
    deadline = time.monotonic() + 30
    while len(seen) < 10 and time.monotonic() < deadline:
        batch = await sub.fetch(10, 0.5)
        if not batch:
            continue
        assert len(batch) == 1, "an ordered subscription has one message in flight"
        assert await sub.fetch(10, 0.2) == [], "nothing more until the one in flight is settled"
        seen.append(batch[0].data.decode())
        await batch[0].ack()
    assert seen == [str(i) for i in range(10)]
    await sub.close()


async def test_a_retried_message_comes_back_with_a_higher_attempt_and_not_before_its_delay(pubsub: PubSub) -> None:
    topic, group = unique("t"), unique("g")
    sub = await pubsub.subscribe(topic, group, max_in_flight=10)
    await pubsub.publish(topic, b"again", {"k": "v"})
    [first] = await collect(sub, 1, settle=None)
    assert first.attempt == 1
    retried_at = time.monotonic()
    await first.retry(1.0)
    [second] = await collect(sub, 1, settle=None)
    assert time.monotonic() - retried_at >= 1.0
    assert (second.data, second.headers, second.attempt) == (b"again", {"k": "v"}, 2)
    await second.retry(0)
    [third] = await collect(sub, 1, settle=None)
    assert third.attempt == 3
    await third.ack()
    await sub.close()


async def test_a_retried_message_keeps_its_place_on_an_ordered_subscription(pubsub: PubSub) -> None:
    topic, group = unique("t"), unique("g")
    for i in range(3):
        await pubsub.publish(topic, str(i).encode(), {})
    sub = await pubsub.subscribe(topic, group, max_in_flight=5, ordered=True)
    [zero] = await collect(sub, 1, settle=None)
    await zero.retry(0.5)
    got = await collect(sub, 3)
    assert texts(got) == ["0", "1", "2"]
    assert got[0].attempt == 2
    await sub.close()


async def test_a_dropped_message_is_never_delivered_again(make_pubsub: Opener) -> None:
    pubsub = await make_pubsub()
    topic, group = unique("t"), unique("g")
    sub = await pubsub.subscribe(topic, group, max_in_flight=10)
    await pubsub.publish(topic, b"doomed", {})
    [doomed] = await collect(sub, 1, settle=None)
    await doomed.drop()
    dropped_at = time.monotonic()
    await pubsub.publish(topic, b"marker", {})
    assert texts(await collect(sub, 1)) == ["marker"]
    # Long enough for a redelivery or a takeover to have happened, were the drop not final.
    while time.monotonic() - dropped_at < REDIS_PROCESSING_TIMEOUT + 1:
        assert await sub.fetch(10, 0.5) == []
    await sub.close()
    # A new member of the group starts where the old one left off: after the dropped message.
    again = await pubsub.subscribe(topic, group, max_in_flight=10)
    await pubsub.publish(topic, b"marker 2", {})
    assert texts(await collect(again, 1)) == ["marker 2"]
    await again.close()


async def test_every_group_gets_every_message(pubsub: PubSub) -> None:
    topic = unique("t")
    a = await pubsub.subscribe(topic, unique("g"), max_in_flight=10)
    b = await pubsub.subscribe(topic, unique("g"), max_in_flight=10)
    for i in range(5):
        await pubsub.publish(topic, str(i).encode(), {})
    got_a, got_b = await asyncio.gather(collect(a, 5), collect(b, 5))
    assert sorted(texts(got_a)) == sorted(texts(got_b)) == [str(i) for i in range(5)]
    await a.close()
    await b.close()


async def test_subscribers_of_one_group_share_the_messages_and_together_see_all(make_pubsub: Opener) -> None:
    # Two partitions, so that a Kafka group has something to split; other brokers ignore it.
    pubsub = await make_pubsub(partitions="2")
    topic, group = unique("t"), unique("g")
    subs = [await pubsub.subscribe(topic, group, max_in_flight=1) for _ in range(2)]
    expected = {str(i) for i in range(30)}
    for i in range(30):
        await pubsub.publish(topic, str(i).encode(), {})
    seen: list[list[str]] = [[], []]
    deadline = time.monotonic() + 60
    # One message at a time each, taking turns, so that neither drains the topic alone.
    while set(seen[0]) | set(seen[1]) != expected and time.monotonic() < deadline:
        for i, sub in enumerate(subs):
            for msg in await sub.fetch(1, 0.5):
                seen[i].append(msg.data.decode())
                await msg.ack()
    assert set(seen[0]) | set(seen[1]) == expected
    assert seen[0] and seen[1], f"one subscriber got everything: {seen}"
    for sub in subs:
        await sub.close()


async def test_messages_a_closed_subscriber_held_go_to_another_subscriber_of_its_group(pubsub: PubSub) -> None:
    topic, group = unique("t"), unique("g")
    for i in range(3):
        await pubsub.publish(topic, str(i).encode(), {})
    first = await pubsub.subscribe(topic, group, max_in_flight=10)
    held = await collect(first, 3, settle=None)
    assert sorted(texts(held)) == ["0", "1", "2"]
    second = await pubsub.subscribe(topic, group, max_in_flight=10)
    await first.close()
    got = await collect(second, 3, timeout=60)
    assert sorted(texts(got)) == ["0", "1", "2"]
    for msg in held:
        await msg.ack()  # settling after close is harmless and changes nothing
    await second.close()


async def test_publish_batch_returns_none_per_message_and_delivers_them_all(pubsub: PubSub) -> None:
    topic, group = unique("t"), unique("g")
    sub = await pubsub.subscribe(topic, group, max_in_flight=100)
    results = await pubsub.publish_batch(topic, [(f"m{i}".encode(), {"i": str(i)}) for i in range(50)])
    assert results == [None] * 50
    got = await collect(sub, 50)
    assert sorted((m.data.decode(), m.headers["i"]) for m in got) == sorted((f"m{i}", str(i)) for i in range(50))
    await sub.close()


async def test_an_oversize_message_is_refused_and_the_rest_of_a_batch_still_goes(pubsub: PubSub) -> None:
    topic, group = unique("t"), unique("g")
    big = b"x" * (pubsub.limits.max_message_bytes + 1)
    with pytest.raises(InvalidArgument, match="exceeds"):
        await pubsub.publish(topic, big, {})
    results = await pubsub.publish_batch(topic, [(b"a", {}), (big, {}), (b"b", {})])
    assert results[0] is None and results[2] is None
    assert results[1] is not None and "exceeds" in results[1]
    sub = await pubsub.subscribe(topic, group, max_in_flight=10)
    assert sorted(texts(await collect(sub, 2))) == ["a", "b"]
    assert await sub.fetch(10, 0.5) == []
    await sub.close()


async def test_an_expired_message_is_not_delivered(pubsub: PubSub) -> None:
    topic, group = unique("t"), unique("g")
    await pubsub.publish(topic, b"stale", {}, ttl=1)
    await pubsub.publish(topic, b"fresh", {}, ttl=3600)
    expired_at = time.time() + 1
    while time.time() <= expired_at:
        await asyncio.sleep(0.1)
    await pubsub.publish(topic, b"last", {})
    sub = await pubsub.subscribe(topic, group, max_in_flight=10)
    got = await collect(sub, 2)
    assert texts(got) == ["fresh", "last"]
    assert await sub.fetch(10, 0.5) == []
    await sub.close()


async def test_a_message_is_not_lost_when_its_subscriber_process_dies(spec: Spec, pubsub: PubSub) -> None:
    topic, group = unique("t"), unique("g")
    for i in range(5):
        await pubsub.publish(topic, str(i).encode(), {})
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.pubsub_subscriber", json.dumps(asdict(spec)), topic, group, "5"],
        stdout=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 60)
        assert line.strip() == b"holding 5"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    sub = await pubsub.subscribe(topic, group, max_in_flight=10)
    got = await collect(sub, 5, timeout=60)
    assert sorted(texts(got)) == [str(i) for i in range(5)]
    await sub.close()


async def test_bad_subscribe_arguments_are_refused(pubsub: PubSub) -> None:
    with pytest.raises(InvalidArgument, match="topic"):
        await pubsub.subscribe("", "g", max_in_flight=1)
    with pytest.raises(InvalidArgument, match="max_in_flight"):
        await pubsub.subscribe(unique("t"), unique("g"), max_in_flight=0)
    with pytest.raises(InvalidArgument, match="topic"):
        await pubsub.publish("", b"x", {})


async def test_a_subscription_keeps_working_after_the_broker_restarts(spec: Spec) -> None:
    # Both test brokers keep nothing across a restart (a Kafka consumer's position then points past
    # a log that is gone, which a real Kafka never does), so nothing is consumed before it. What must
    # survive is the bridge: publish reconnects, and the subscription made before the restart rejoins
    # and receives what is published after it.
    server, where = private_broker(spec.type)
    closers: list[Callable[[], Awaitable[None]]] = []
    try:
        nats_url = server.url if spec.type.startswith("nats.") else None
        pubsub, close = await open_pubsub(spec, nats_url, **where)
        closers.append(close)
        topic, group = unique("t"), unique("g")
        sub = await pubsub.subscribe(topic, group, max_in_flight=10)
        assert await sub.fetch(10, 0.5) == []
        server.stop()
        server, _ = private_broker(spec.type, server.port, server.data_dir)
        deadline = time.monotonic() + 60
        while True:
            try:
                await pubsub.publish(topic, b"after", {})
                break
            except L8Error:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.2)
        got: list[Received] = []
        while not got and time.monotonic() < deadline:
            try:
                got = await collect(sub, 1, timeout=1)
            except L8Error:
                await asyncio.sleep(0.2)
        assert texts(got) == ["after"]
        await sub.close()
    finally:
        for close in closers:
            await close()
        server.stop()


async def test_closing_a_subscription_ends_a_fetch_that_is_waiting(pubsub: PubSub) -> None:
    sub = await pubsub.subscribe(unique("t"), unique("g"), max_in_flight=10)
    waiting = asyncio.create_task(sub.fetch(10, 600))
    await asyncio.sleep(0)  # let the fetch start waiting
    await sub.close()
    assert await asyncio.wait_for(waiting, 60) == []
    await sub.close()  # closing again is harmless
