"""What subscribes on its own reaches the bus again after the server closed the connection and the bus
opened it anew: the JetStream pub/sub bridge's fetch inboxes and the notice board's watches (which
report as removed what went meanwhile). And the pub/sub bridges' probes: ping passes while the
broker serves and fails once it is gone."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from bridges import registry
from bridges.errors import L8Error
from bridges.registry import BridgeEnv
from bus import Bus
from bus.board import Board
from tests.conftest import unique
from tests.servers import TANSU, Server, start_nats, start_tansu


async def until(check: Any, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if asyncio.iscoroutine(found):
            found = await found
        if found:
            return
        assert time.monotonic() < deadline, f"{what}: not within {timeout}s"
        await asyncio.sleep(0.05)


async def close_by_the_server(bus: Bus) -> None:
    """What a subject too long for the server did before names were bounded: nats-server answers
    -ERR 'Maximum Control Line Exceeded' and closes the connection (see test_bus.py)."""
    before = bus.reopened
    await bus.nc.publish("k" * 5000, b"")
    await until(lambda: bus.reopened == before + 1 and bus.connected, "the bus opened again")


async def test_the_jetstream_bridge_fetches_again_after_the_bus_connection_is_opened_anew(nats_server: Server) -> None:
    bus = Bus([nats_server.url])
    await bus.start()
    env = BridgeEnv(bus.nc, unique("ns"), "app", on_reopen=bus.add_reopen_listener)
    pubsub = registry.create("pubsub", "nats.jetstream", unique("ps"), {}, env)
    await pubsub.start()
    try:
        sub = await pubsub.subscribe("orders", "group", max_in_flight=8)
        await pubsub.publish("orders", b"before", {})
        got = await sub.fetch(1, 5)
        assert [m.data for m in got] == [b"before"]
        await got[0].ack()
        await close_by_the_server(bus)

        async def published() -> bool:
            try:
                await pubsub.publish("orders", b"after", {})
            except L8Error:
                return False
            return True

        await until(published, "a publish after the reopen")
        found: list[bytes] = []

        async def fetched() -> bool:
            for m in await sub.fetch(1, 1):
                found.append(m.data)
                await m.ack()
            return b"after" in found

        await until(fetched, "the event published after the reopen")
        await pubsub.ping()
    finally:
        await pubsub.stop()
        await bus.stop()


async def test_a_board_watch_watches_again_after_a_reopen_and_reports_what_went_meanwhile(nats_server: Server) -> None:
    bus, other = Bus([nats_server.url]), Bus([nats_server.url])
    await bus.start()
    await other.start()
    bucket = f"l8_{unique('ns')}_subscriptions"
    board, other_board = Board(bus, bucket, lease=60), Board(other, bucket, lease=60)
    seen: dict[str, bytes | None] = {}
    removed: list[str] = []

    def sink(key: str, value: bytes | None) -> None:
        seen[key] = value
        if value is None:
            removed.append(key)

    try:
        await board.post("a", b"1")
        await board.post("b", b"2")
        watch = await board.watch(">", sink)
        await until(lambda: seen == {"a": b"1", "b": b"2"}, "the notices")
        # The watch's consumer is gone, as when the server closed the connection: what changes now
        # reaches it only once it watches again.
        await watch._sub.unsubscribe()
        await other_board.remove("b")
        await other_board.post("c", b"3")
        await close_by_the_server(bus)
        await until(lambda: seen == {"a": b"1", "b": None, "c": b"3"}, f"the notices after the reopen: {seen}")
        assert removed == ["b"]
        await other_board.post("d", b"4")
        await until(lambda: seen.get("d") == b"4", "a notice after the reopen")
        await watch.stop()
    finally:
        await bus.stop()
        await other.stop()


async def test_the_jetstream_pubsub_ping_fails_once_its_server_is_gone() -> None:
    server = start_nats()
    bus = Bus([server.url])
    try:
        await bus.start()
        env = BridgeEnv(bus.nc, unique("ns"), "app", on_reopen=bus.add_reopen_listener)
        pubsub = registry.create("pubsub", "nats.jetstream", unique("ps"), {"timeoutSeconds": "1"}, env)
        await pubsub.start()
        await pubsub.ping()
        server.kill()
        with pytest.raises((L8Error, TimeoutError)):
            async with asyncio.timeout(10):
                await pubsub.ping()
        await pubsub.stop()
    finally:
        server.stop()
        await bus.stop()


async def test_the_kafka_pubsub_ping_passes_while_the_broker_serves_and_fails_once_it_is_gone() -> None:
    broker = start_tansu()
    env = BridgeEnv(None, unique("ns"), "app")
    pubsub = registry.create("pubsub", "kafka", unique("ps"), {"brokers": broker.url, **TANSU}, env)
    try:
        await pubsub.start()
        await pubsub.ping()
        broker.kill()
        # The health monitor bounds a probe by health.timeout; here a generous bound, the same way.
        with pytest.raises((L8Error, TimeoutError)):
            async with asyncio.timeout(20):
                await pubsub.ping()
    finally:
        await pubsub.stop()
        broker.stop()
