"""Correctness debts found in review, each on real servers: statuses of NATS direct gets, Redis
errors that are not deletes, sequencer floors past 2^53, nothing leaked by a failed start, bounded
caches, slow consumers surfaced, and Kafka's idempotent producer."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

import nats
import pytest
import redis.asyncio as aioredis

from bridges import registry
from bridges.errors import BackendUnavailable, Code, L8Error
from bridges.protocols import ConfigChange, ConfigEntry
from bridges.redis import client as redis_clients
from bridges.registry import BridgeEnv
from bus import Bus
from handlers.proto import runtime_pb2 as pb
from runtime.invoke import Invoker
from tests.conftest import SidecarFactory, native_stub, sidecar_config, unique
from tests.servers import TANSU, KafkaServer, Server, free_port, start_redis


async def until(check: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "the condition did not hold in time"
        await asyncio.sleep(0.05)


async def test_a_nats_direct_get_that_is_not_404_answers_unavailable_not_aborted(nats_server: Server) -> None:
    nc = await nats.connect(nats_server.url)
    bucket = unique("b").replace("-", "_")
    store = registry.create("state", "nats.kv", "s", {"bucket": bucket}, BridgeEnv(nc, "ns", "app"))
    await store.start()
    responder = None
    try:
        # JetStream stops answering direct gets; a responder answers them with a 408 status, as a
        # server under load does.
        info = json.loads((await nc.request(f"$JS.API.STREAM.INFO.KV_{bucket}", b"")).data)
        config = {**info["config"], "allow_direct": False}
        await nc.request(f"$JS.API.STREAM.UPDATE.KV_{bucket}", json.dumps(config).encode())

        async def busy(msg: Any) -> None:
            await nc.publish(msg.reply, b"", headers={"Status": "408", "Description": "Request Timeout"})

        responder = await nc.subscribe(f"$JS.API.DIRECT.GET.KV_{bucket}.>", cb=busy)
        with pytest.raises(BackendUnavailable) as exc:
            await store.get("k")
        assert exc.value.code is Code.UNAVAILABLE and "408" in str(exc.value)
    finally:
        if responder is not None:
            await responder.unsubscribe()
        await store.stop()
        await nc.close()


@pytest.mark.redis
async def test_a_redis_read_error_during_a_configuration_watch_is_never_reported_as_a_delete(
    redis_server: Server,
) -> None:
    url = f"redis://127.0.0.1:{redis_server.port}"
    name = unique("cfg")
    store = registry.create("configuration", "redis", name, {"url": url}, BridgeEnv(None, "ns", "app"))
    await store.start()
    admin = aioredis.Redis.from_url(url)
    changes: list[ConfigChange] = []

    async def sink(batch: list[ConfigChange]) -> None:
        changes.extend(batch)

    try:
        await store.watch(sink)
        await store.write([ConfigEntry("g||l||k", "v1")], [])
        await until(lambda: _has(changes, "g||l||k"))
        # The default user may no longer read hashes: every HGETALL fails (NOPERM), a stand-in for
        # the BUSY or LOADING a server answers for a while. A write makes the watcher read the key.
        await admin.execute_command("ACL", "SETUSER", "default", "-hgetall")
        try:
            await admin.hset(f"l8:ns:{name}:g||l||k", "content", "v1")
            await asyncio.sleep(0.5)  # let the watcher see the notification and fail its read
            with pytest.raises(L8Error):
                await store.get(["g||l||k"])
        finally:
            await admin.execute_command("ACL", "SETUSER", "default", "+hgetall")
        await store.write([ConfigEntry("g||l||other", "v2")], [])
        await until(lambda: _has(changes, "g||l||other"))
        assert [c for c in changes if c.entry is None] == [], "a failed read was reported as a delete"
        assert [e.content for e in await store.get(["g||l||k"])] == ["v1"]
    finally:
        await store.stop()
        await admin.aclose()


async def _has(changes: list[ConfigChange], key: str) -> bool:
    return any(c.key == key and c.entry is not None for c in changes)


@pytest.mark.redis
async def test_the_redis_sequencer_keeps_a_floor_above_2_to_the_53(redis_server: Server) -> None:
    url = f"redis://127.0.0.1:{redis_server.port}"
    seq = registry.create("sequencer", "redis", "seq", {"url": url}, BridgeEnv(None, "ns", "app"))
    await seq.start()
    try:
        floor = 2**53 + 1  # 9007199254740993: a double cannot hold it, so Lua arithmetic would round
        key = unique("k")
        assert await seq.reserve(key, 1, floor) == floor + 1
        assert await seq.reserve(key, 5, floor) == floor + 6
        assert await seq.reserve(key, 1, 2**62) == 2**62 + 1
    finally:
        await seq.stop()


@pytest.mark.redis
async def test_a_component_that_fails_to_start_gives_back_its_redis_connections() -> None:
    server = start_redis()
    port = server.port
    url = f"redis://127.0.0.1:{port}"
    admin = aioredis.Redis.from_url(url)
    # A managed-style Redis that refuses CONFIG SET: the configuration store fails after connecting.
    await admin.execute_command("ACL", "SETUSER", "default", "-config|set")
    try:
        from runtime.components import Components
        from runtime.config import Config
        from runtime.health import Health

        config = Config.model_validate(
            {"components": {"c": {"kind": "configuration", "type": "redis", "metadata": {"url": url}}}}
        )
        components = Components(config, BridgeEnv(None, "ns", "app"), Health())
        with pytest.raises(Exception, match="CONFIG"):
            await components.start(["configuration"])
        assert url not in redis_clients._clients

        async def only_the_admin_is_left() -> bool:
            return len((await admin.execute_command("CLIENT", "LIST")).splitlines()) == 1

        await until(only_the_admin_is_left)
        # Redis pub/sub whose server does not answer: its PING fails and the shared client goes back.
        dead = f"redis://127.0.0.1:{free_port()}"
        pubsub = registry.create("pubsub", "redis", "p", {"url": dead}, BridgeEnv(None, "ns", "app"))
        with pytest.raises(BackendUnavailable):
            await pubsub.start()
        assert dead not in redis_clients._clients
    finally:
        await admin.aclose()
        server.stop()


async def test_the_weak_sequencer_cache_and_the_invocation_subjects_stay_bounded(
    nats_server: Server, make_sidecar: SidecarFactory
) -> None:
    sidecar = await make_sidecar(
        sidecar_config(
            nats_server.url, {"sequencer": {"kind": "sequencer", "type": "nats.kv", "metadata": {"segmentSize": "2"}}}
        )
    )
    assert sidecar.grpc is not None
    sidecar.grpc.segments._max_segments = 5
    channel, stub = native_stub(sidecar)
    try:
        for i in range(12):
            await stub.GetNextId(pb.GetNextIdRequest(store_name="sequencer", key=f"k{i}"))
        assert sidecar.grpc.segments.segments == 5
        # A forgotten segment leaves a gap, never a repeat.
        first = (await stub.GetNextId(pb.GetNextIdRequest(store_name="sequencer", key="k0"))).next_id
        assert first > 1
    finally:
        await channel.close()
    assert sidecar.bus is not None
    invoker = Invoker(sidecar.bus, "ns", "me", 1.0)
    for i in range(3000):
        invoker.subject(f"app-{i}")
    assert len(invoker._subjects) <= 1024


async def test_a_slow_consumer_is_surfaced_in_the_log_and_its_count(
    nats_server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    from bus import connection

    bus = Bus([nats_server.url])
    await bus.start()
    release = asyncio.Event()

    async def stuck(msg: Any) -> None:
        await release.wait()

    subject = unique("slow")
    await bus.subscribe(subject, "", stuck)
    caplog.set_level(logging.WARNING, logger="l8.bus")
    try:
        for _ in range(connection.PENDING_MSGS + 100):
            await bus.nc.publish(subject, b"x")
        await bus.nc.flush()

        async def dropped() -> bool:
            return bus.slow_consumer_drops > 0

        await until(dropped)
        assert any("slow consumer" in r.getMessage() and subject in r.getMessage() for r in caplog.records)
    finally:
        release.set()
        await bus.stop()


async def test_the_kafka_producer_is_idempotent_by_default_and_says_how_to_turn_it_off(
    kafka_server: KafkaServer,
) -> None:
    env = BridgeEnv(None, "ns", "app")
    default = registry.create("pubsub", "kafka", "k", {"brokers": kafka_server.url}, env)
    # tansu refuses InitProducerId, which an idempotent producer needs.
    with pytest.raises(L8Error, match="enableIdempotence: false"):
        await default.start()
    await default.stop()
    plain = registry.create("pubsub", "kafka", "k", {"brokers": kafka_server.url, **TANSU}, env)
    await plain.start()
    try:
        await plain.publish(unique("t"), b"x", {})
    finally:
        await plain.stop()


async def test_the_nats_configuration_watcher_keeps_watching_after_the_bus_connection_is_opened_again(
    nats_server: Server,
) -> None:
    bus = Bus([nats_server.url])
    await bus.start()
    env = BridgeEnv(bus.nc, unique("ns"), "app", on_reopen=bus.add_reopen_listener)
    store = registry.create("configuration", "nats.kv", unique("cfg"), {}, env)
    await store.start()
    changes: list[ConfigChange] = []

    async def sink(batch: list[ConfigChange]) -> None:
        changes.extend(batch)

    try:
        await store.watch(sink)
        await store.write([ConfigEntry("g||l||before", "1")], [])
        await until(lambda: _has(changes, "g||l||before"))
        await bus.nc.publish("k" * 5000, b"")  # the server closes the connection (see test_bus.py)

        async def reopened() -> bool:
            return bus.reopened == 1 and bus.connected

        await until(reopened)

        async def written() -> bool:
            try:
                await store.write([ConfigEntry("g||l||after", "2")], [])
            except L8Error:
                return False
            return True

        await until(written)
        await until(lambda: _has(changes, "g||l||after"))
    finally:
        await store.stop()
        await bus.stop()


async def test_grpc_reporting_a_status_it_could_not_send_to_a_gone_client_is_a_debug_line_without_a_traceback(
    nats_server: Server, make_sidecar: SidecarFactory, caplog: pytest.LogCaptureFixture
) -> None:
    await make_sidecar(sidecar_config(nats_server.url, {}))
    core = logging.getLogger("grpc._cython.cygrpc")
    with caplog.at_level(logging.DEBUG):
        try:
            raise RuntimeError('Failed "execute_batch"')
        except RuntimeError:
            # What grpc.aio logs when a handler's status finds the call already gone.
            core.exception("Failed sending error status from server")
        core.error("another error of grpc's")
    gone = [r for r in caplog.records if r.getMessage().startswith("Failed sending error status")]
    assert [(r.levelno, r.exc_info) for r in gone] == [(logging.DEBUG, None)]
    assert [r.levelno for r in caplog.records if r.getMessage() == "another error of grpc's"] == [logging.ERROR]
