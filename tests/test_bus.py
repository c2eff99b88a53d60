"""The bus on a real nats-server: request/reply, headers, errors, the worker host, the supervisor."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from bridges.errors import EtagMismatch
from bus import (
    Bus,
    BusTimeout,
    BusUnreachable,
    EmbeddedNats,
    NoResponders,
    RemoteError,
    RequestContext,
    Route,
    WorkerHost,
)
from bus.codec import request_headers
from bus.subjects import request_subject
from tests.conftest import unique
from tests.process import alive
from tests.servers import Server


@pytest.fixture
async def bus(nats_server: Server) -> AsyncIterator[Bus]:
    bus = Bus([nats_server.url], name="test")
    await bus.start()
    await bus.start()  # idempotent
    yield bus
    await bus.stop()
    await bus.stop()


async def test_a_request_carries_the_app_id_of_its_subject_its_deadline_and_traceparent_to_the_handler(
    bus: Bus,
) -> None:
    ns = unique("ns")
    seen: list[tuple[str, RequestContext]] = []

    async def handler(op: str, payload: bytes, ctx: RequestContext) -> bytes:
        seen.append((op, ctx))
        return payload.upper()

    host = WorkerHost(bus, ns)
    host.add("state", "store", handler)
    await host.start()
    try:
        trace = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        msg = await bus.request(
            request_subject(ns, "state", "store", "get", "app1"), b"abc", timeout=2, headers=request_headers(2.0, trace)
        )
        assert msg.data == b"ABC"
        op, ctx = seen[0]
        assert op == "get" and ctx.app_id == "app1" and ctx.traceparent == trace
        assert 1.0 < ctx.remaining() <= 2.0
    finally:
        await host.stop()


async def test_an_error_travels_back_in_headers_with_its_code(bus: Bus) -> None:
    ns = unique("ns")

    async def handler(op: str, payload: bytes, ctx: RequestContext) -> bytes:
        raise EtagMismatch("etag mismatch for key 'k'\nsecond line")

    host = WorkerHost(bus, ns)
    host.add("state", "s", handler)
    await host.start()
    try:
        with pytest.raises(RemoteError) as info:
            await bus.request(request_subject(ns, "state", "s", "save", "app"), b"", timeout=2)
        assert info.value.code == "ABORTED"
        assert info.value.message == "etag mismatch for key 'k' second line"
    finally:
        await host.stop()


async def test_a_handler_bug_comes_back_as_internal(bus: Bus) -> None:
    ns = unique("ns")

    async def handler(op: str, payload: bytes, ctx: RequestContext) -> bytes:
        raise KeyError("boom")

    host = WorkerHost(bus, ns)
    host.add("state", "s", handler)
    await host.start()
    try:
        with pytest.raises(RemoteError) as info:
            await bus.request(request_subject(ns, "state", "s", "get", "app"), b"", timeout=2)
        assert info.value.code == "INTERNAL" and "KeyError" in info.value.message
    finally:
        await host.stop()


async def test_nobody_listening_is_no_responders_at_once(bus: Bus) -> None:
    began = time.monotonic()
    with pytest.raises(NoResponders):
        await bus.request(request_subject(unique("ns"), "state", "s", "get", "app"), b"", timeout=5)
    assert time.monotonic() - began < 2


async def test_a_slow_handler_is_cut_at_the_callers_deadline(bus: Bus) -> None:
    ns = unique("ns")
    finished: list[bool] = []

    async def handler(op: str, payload: bytes, ctx: RequestContext) -> bytes:
        await asyncio.sleep(5)
        finished.append(True)
        return b""

    host = WorkerHost(bus, ns)
    host.add("state", "s", handler)
    await host.start()
    try:
        began = time.monotonic()
        with pytest.raises((BusTimeout, RemoteError)):
            await bus.request(
                request_subject(ns, "state", "s", "get", "app"), b"", timeout=0.3, headers=request_headers(0.3)
            )
        assert time.monotonic() - began < 2
    finally:
        await host.stop()
    assert not finished, "the worker stopped working on it at the deadline"


async def test_the_worker_host_bounds_its_concurrency(bus: Bus) -> None:
    ns = unique("ns")
    running = 0
    peak = 0

    async def handler(op: str, payload: bytes, ctx: RequestContext) -> bytes:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.05)
        running -= 1
        return b"ok"

    host = WorkerHost(bus, ns, concurrency=3)
    host.add("state", "s", handler)
    await host.start()
    try:
        subject = request_subject(ns, "state", "s", "get", "app")
        replies = await asyncio.gather(*(bus.request(subject, b"", timeout=10) for _ in range(20)))
        assert all(r.data == b"ok" for r in replies)
        assert peak == 3
    finally:
        await host.stop()


async def test_stopping_the_worker_host_finishes_requests_in_flight(bus: Bus) -> None:
    ns = unique("ns")

    async def handler(op: str, payload: bytes, ctx: RequestContext) -> bytes:
        await asyncio.sleep(0.3)
        return b"done"

    host = WorkerHost(bus, ns)
    host.add("state", "s", handler)
    await host.start()
    pending = asyncio.gather(
        *(bus.request(request_subject(ns, "state", "s", "get", "app"), b"", timeout=5) for _ in range(5))
    )
    await asyncio.sleep(0.1)
    await host.stop()
    await host.stop()
    assert [r.data for r in await pending] == [b"done"] * 5


async def test_the_embedded_server_starts_healthy_and_stops_by_pid(tmp_path: Path) -> None:
    server = EmbeddedNats(tmp_path / "nats")
    await server.start()
    await server.start()
    pid = server.pid
    assert pid is not None and alive(pid)
    # It requires the credentials it generated in its data dir, readable by their owner only.
    assert server.credentials is not None
    for path in (tmp_path / "nats" / "credentials.json", tmp_path / "nats" / "users.conf"):
        assert path.stat().st_mode & 0o777 == 0o600
    assert server.credentials.password not in Path(f"/proc/{pid}/cmdline").read_text()
    stranger = Bus([server.url], start_timeout=1, connect_timeout=0.5)
    with pytest.raises(BusUnreachable):
        await stranger.start()
    bus = Bus([server.url], auth=server.credentials)
    await bus.start()
    js = bus.nc.jetstream()
    assert (await js.account_info()).streams >= 0
    await bus.stop()
    await server.stop()
    await server.stop()
    assert not alive(pid)
    assert (tmp_path / "nats" / "jetstream").is_dir()


async def test_the_embedded_server_binds_ports_of_its_choosing_and_keeps_them_when_started_again(
    tmp_path: Path,
) -> None:
    server = EmbeddedNats(tmp_path / "nats", auth=False)
    await server.start()
    try:
        first = (server.port, server.monitor_port)
        assert all(first)
        bus = Bus([server.url])
        await bus.start()
        await bus.stop()
        await server.stop()
        assert not list((tmp_path / "nats").glob("*.ports"))  # the server removes its ports file
        await server.start()
        assert (server.port, server.monitor_port) == first
    finally:
        await server.stop()


async def test_the_bus_reconnects_after_the_server_restarts(tmp_path: Path) -> None:
    from tests.servers import start_nats

    first = start_nats(tmp_path / "js")
    bus = Bus([first.url])
    await bus.start()
    ns = unique("ns")

    async def handler(op: str, payload: bytes, ctx: RequestContext) -> bytes:
        return b"pong"

    host = WorkerHost(bus, ns)
    host.add("state", "s", handler)
    await host.start()
    subject = request_subject(ns, "state", "s", "get", "app")
    try:
        assert (await bus.request(subject, b"", timeout=2)).data == b"pong"
        first.stop()
        second = start_nats(tmp_path / "js", port=first.port)
        try:
            deadline = time.monotonic() + 15
            while True:
                try:
                    assert (await bus.request(subject, b"", timeout=1)).data == b"pong"
                    break
                except Exception:
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.1)
        finally:
            await host.stop()
            await bus.stop()
            second.stop()
    finally:
        first.stop()


@pytest.mark.parametrize("local", [False, True])
async def test_local_dispatch_serves_handlers_of_this_process_without_the_server(bus: Bus, local: bool) -> None:
    ns = unique("ns")
    crossed: list[str] = []

    async def spy(msg: object) -> None:
        crossed.append(getattr(msg, "subject", ""))

    spy_sub = await bus.nc.subscribe(f"l8.{ns}.>", cb=spy)

    async def handler(op: str, payload: bytes, ctx: RequestContext) -> bytes:
        if payload == b"bad":
            raise EtagMismatch("stale")
        return ctx.app_id.encode()

    host = WorkerHost(bus, ns, local_dispatch=local)
    host.add("state", "s", handler)
    await host.start()
    subject = request_subject(ns, "state", "s", "get", "me")
    try:
        assert await bus.call(subject, b"", timeout=2, headers=request_headers(2)) == b"me"
        with pytest.raises(RemoteError) as info:
            await bus.call(subject, b"bad", timeout=2, headers=request_headers(2))
        assert info.value.code == "ABORTED"
        await bus.nc.flush()
        assert crossed == ([] if local else [subject, subject])
    finally:
        await host.stop()
        await spy_sub.unsubscribe()
    with pytest.raises(NoResponders):
        await bus.call(subject, b"", timeout=2, headers=request_headers(2))


async def test_a_worker_leaving_its_queue_group_loses_no_request(nats_server: Server) -> None:
    ns = unique("ns")

    async def handler(op: str, payload: bytes, ctx: RequestContext) -> bytes:
        return payload

    staying, leaving, client = Bus([nats_server.url]), Bus([nats_server.url]), Bus([nats_server.url])
    for bus in (staying, leaving, client):
        await bus.start()
    stays = WorkerHost(staying, ns)
    stays.add("state", "s", handler)
    await stays.start()
    subject = request_subject(ns, "state", "s", "get", "app")
    lost: list[str] = []
    try:
        for round_ in range(15):
            leaves = WorkerHost(leaving, ns)
            leaves.add("state", "s", handler)
            await leaves.start()
            stop_at = time.monotonic() + 0.3

            async def caller(n: int, round_: int, stop_at: float) -> None:
                i = 0
                while time.monotonic() < stop_at:
                    payload = f"{round_}-{n}-{i}".encode()
                    try:
                        assert (await client.request(subject, payload, timeout=3)).data == payload
                    except BusTimeout:
                        lost.append(payload.decode())
                    i += 1

            callers = asyncio.gather(*(caller(n, round_, stop_at) for n in range(4)))
            await asyncio.sleep(0.1)
            await leaves.stop()
            await callers
        assert not lost, f"requests left to their deadline while a worker left: {lost[:5]}"
    finally:
        await stays.stop()
        for bus in (staying, leaving, client):
            await bus.stop()


async def test_a_reply_too_large_for_the_bus_comes_back_as_an_error_not_a_timeout(bus: Bus) -> None:
    ns = unique("ns")

    async def handler(op: str, payload: bytes, ctx: RequestContext) -> bytes:
        return b"x" * (bus.max_payload + 1)

    host = WorkerHost(bus, ns)
    host.add("state", "s", handler)
    await host.start()
    try:
        began = time.monotonic()
        with pytest.raises(RemoteError) as info:
            await bus.request(request_subject(ns, "state", "s", "bulkget", "app"), b"", timeout=5)
        assert info.value.code == "RESOURCE_EXHAUSTED" and "the bus carries at most" in info.value.message
        assert time.monotonic() - began < 4
    finally:
        await host.stop()


async def eventually(check: Any, timeout: float = 30.0) -> Any:
    """``await check()`` until it returns without raising; its last error after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await check()
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)


async def test_a_connection_the_server_closes_is_opened_again_with_its_subscriptions(nats_server: Server) -> None:
    ns = unique("ns")

    async def handler(op: str, payload: bytes, ctx: RequestContext) -> bytes:
        return payload

    bus, client = Bus([nats_server.url]), Bus([nats_server.url])
    await bus.start()
    await client.start()
    statuses: list[bool] = []
    reconnects: list[str] = []
    bus.add_status_listener(lambda connected, why: statuses.append(connected))
    bus.add_reconnect_listener(lambda: reconnects.append("again"))
    host = WorkerHost(bus, ns)
    host.add("state", "s", handler)
    await host.start()
    subject = request_subject(ns, "state", "s", "get", "me")
    try:
        assert (await client.request(subject, b"1", timeout=2)).data == b"1"
        # What a 5000-character key did before names were bounded: the server answers
        # -ERR 'Maximum Control Line Exceeded' and closes the connection, and nats-py gives up on it.
        # Sent on the driver's connection, past the bus's own check of subjects.
        await bus.nc.publish("k" * 5000, b"")

        async def served_again() -> None:
            assert bus.reopened == 1
            assert (await client.request(subject, b"2", timeout=1)).data == b"2"

        await eventually(served_again)
        assert statuses[0] is False and statuses[-1] is True
        assert reconnects == ["again"]
        assert bus.connected
        assert (await bus.request(subject, b"3", timeout=2)).data == b"3"
    finally:
        await host.stop()
        await bus.stop()
        await client.stop()


async def test_a_route_a_worker_host_serves_is_found_at_once_by_a_request_from_another_connection(
    bus: Bus, nats_server: Server
) -> None:
    # nats-py's flush() can see its PONG before the server has the SUB (bus/sync.py); a plain
    # flush let about one request in twelve find no responders here.
    ns = unique("ns")

    async def handler(op: str, payload: bytes, ctx: RequestContext) -> bytes:
        return payload

    client = Bus([nats_server.url])
    await client.start()
    host = WorkerHost(bus, ns)
    await host.start()
    try:
        for n in range(300):
            await host.serve(Route(request_subject(ns, "state", f"s{n}", "get", "me"), "q", handler, f"s{n}"))
            subject = request_subject(ns, "state", f"s{n}", "get", "me")
            assert (await client.request(subject, b"%d" % n, timeout=2)).data == b"%d" % n
    finally:
        await host.stop()
        await client.stop()


@contextlib.asynccontextmanager
async def echo_elsewhere(url: str) -> AsyncIterator[str]:
    """A subject answered, with the request's payload, by a worker host on a connection of its own."""
    ns = unique("ns")

    async def handler(op: str, payload: bytes, ctx: RequestContext) -> bytes:
        return payload

    other = Bus([url])
    await other.start()
    host = WorkerHost(other, ns)
    host.add("state", "s", handler)
    await host.start()
    try:
        yield request_subject(ns, "state", "s", "get", "me")
    finally:
        await host.stop()
        await other.stop()


async def cancel_while_waiting(wait: Callable[[], Awaitable[None]], times: int) -> None:
    """Start ``wait()`` and cancel it once its PING is out, ``times`` times."""
    for _ in range(times):
        waiting = asyncio.ensure_future(wait())
        for _turn in range(3):  # loop turns for the wait (and a task it starts) to send its PING
            await asyncio.sleep(0)
        waiting.cancel()
        await asyncio.gather(waiting, return_exceptions=True)


async def test_a_wait_for_the_server_cancelled_midway_leaves_the_connection_reading(
    bus: Bus, nats_server: Server
) -> None:
    # nats-py keeps a cancelled flush's future among its PONG waiters; the PONG's set_result on it
    # raised in the read loop, which stopped reading for good while the connection looked up.
    from bus.sync import server_has_seen

    async with echo_elsewhere(nats_server.url) as subject:
        await cancel_while_waiting(lambda: server_has_seen(bus.nc), 20)
        assert (await bus.request(subject, b"still reading", timeout=5)).data == b"still reading"


async def test_a_connection_that_stopped_reading_is_opened_again_by_its_unanswered_pings(nats_server: Server) -> None:
    bus = Bus([nats_server.url], ping_interval=0.5)
    await bus.start()
    statuses: list[bool] = []
    bus.add_status_listener(lambda connected, why: statuses.append(connected))
    try:
        async with echo_elsewhere(nats_server.url) as subject:
            # The one way known to stop nats-py's read loop (bus/sync.py), on the driver directly.
            await cancel_while_waiting(bus.nc.flush, 3)

            async def answered() -> None:
                assert (await bus.request(subject, b"back", timeout=1)).data == b"back"

            await eventually(answered)
            assert False in statuses and statuses[-1] is True
    finally:
        await bus.stop()


async def test_the_bus_refuses_a_subject_too_long_for_the_server_and_stays_connected(bus: Bus) -> None:
    from bus.errors import InvalidSubject

    with pytest.raises(InvalidSubject):
        await bus.publish("k" * 5000, b"")
    with pytest.raises(InvalidSubject):
        await bus.request("k" * 5000, b"", timeout=1)
    await bus.nc.flush()
    assert bus.connected and bus.reopened == 0


async def test_an_unreachable_bus_fails_start_within_its_timeout_naming_the_url_without_secrets() -> None:
    from bus.errors import BusUnreachable
    from tests.servers import free_port

    port = free_port()
    bus = Bus([f"nats://me:s3cret@127.0.0.1:{port}"], start_timeout=0.5, connect_timeout=0.2)
    with pytest.raises(BusUnreachable) as info:
        await bus.start()
    assert f"nats://***@127.0.0.1:{port}" in str(info.value)
    assert "s3cret" not in str(info.value)
    await bus.stop()


async def test_a_route_that_replaced_another_under_one_local_key_keeps_it_when_the_old_one_leaves(bus: Bus) -> None:

    ns = unique("ns")
    crossed: list[str] = []

    async def spy(msg: object) -> None:
        crossed.append(getattr(msg, "subject", ""))

    spy_sub = await bus.nc.subscribe(f"l8.{ns}.>", cb=spy)

    def answer(text: bytes) -> Any:
        async def handler(op: str, payload: bytes, ctx: RequestContext) -> bytes:
            return text

        return handler

    host = WorkerHost(bus, ns, local_dispatch=True)
    await host.start()
    stem = f"l8.{ns}.app.fn"
    old = await host.serve(Route(f"{stem}.invoke.*", f"{stem}.invoke", answer(b"old"), "old", local=stem))
    new = await host.serve(Route(f"{stem}.invoke.*", f"{stem}.invoke", answer(b"new"), "new", local=stem))
    try:
        await host.leave(old)
        subject = f"{stem}.invoke.me"
        assert await bus.call(subject, b"", timeout=2, headers=request_headers(2)) == b"new"
        await bus.nc.flush()
        assert subject not in crossed, "the call went over the server instead of staying in process"
    finally:
        await host.leave(new)
        await host.stop()
        await spy_sub.unsubscribe()
