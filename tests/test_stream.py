"""Streams beside a request (bus/stream.py) on a real nats-server, over the bus and within one
process (local dispatch): the same window, order, errors and cancels either way."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import pytest

from bus import Bus, NoResponders, RemoteError, RequestContext, StreamBroken, WorkerHost
from bus.codec import request_headers
from bus.stream import DOWNLOAD, UPLOAD, Opened, Stream, open_stream, serve_streams
from bus.subjects import request_subject
from tests.conftest import unique
from tests.servers import Server

WINDOW = 4


@dataclass
class Seen:
    consumed: int = 0
    messages: list[bytes] = field(default_factory=list)
    errors: list[BaseException] = field(default_factory=list)
    go: asyncio.Event = field(default_factory=asyncio.Event)


StreamOp = Callable[[bytes, Stream, RequestContext], Awaitable[bytes]]


@dataclass
class Rig:
    bus: Bus
    ns: str
    local: bool

    def subject(self, op: str) -> str:
        return request_subject(self.ns, "file", "store", op, "app")

    async def open(self, op: str, direction: str, body: bytes = b"", timeout: float = 30.0) -> Opened:
        return await open_stream(
            self.bus,
            self.subject(op),
            body,
            direction=direction,
            timeout=timeout,
            headers=request_headers(timeout, None),
            window=WINDOW,
        )


@pytest.fixture(params=["bus", "local"])
async def rig(request: pytest.FixtureRequest, nats_server: Server) -> AsyncIterator[Callable[..., Awaitable[Rig]]]:
    """Serves the given stream ops on a worker host; ``local`` serves them by local dispatch."""
    local = request.param == "local"
    buses: list[Bus] = []
    hosts: list[WorkerHost] = []

    async def make(ops: dict[str, StreamOp], idle: float = 60.0) -> Rig:
        bus = Bus([nats_server.url], name="stream-test")
        await bus.start()
        buses.append(bus)
        ns = unique("ns")

        async def unary(op: str, payload: bytes, ctx: RequestContext) -> bytes:
            return b"unary:" + payload

        host = WorkerHost(bus, ns, local_dispatch=local)
        host.add("file", "store", serve_streams(bus, unary, ops, idle=idle))
        await host.start()
        hosts.append(host)
        return Rig(bus, ns, local)

    yield make
    for host in hosts:
        await host.stop()
    for bus in buses:
        await bus.stop()


async def test_an_upload_arrives_whole_in_order_and_the_sender_keeps_within_the_window(
    rig: Callable[..., Awaitable[Rig]],
) -> None:
    seen = Seen()

    async def put(body: bytes, stream: Stream, ctx: RequestContext) -> bytes:
        async for message in stream:
            seen.consumed += 1
            seen.messages.append(message)
            await asyncio.sleep(0)  # a slow writer: the caller must wait for credit
        return b"stored " + body

    r = await rig({"put": put})
    opened = await r.open("put", UPLOAD, b"name")
    try:
        for i in range(200):
            await opened.send(f"m{i}".encode())
            assert i + 1 - seen.consumed <= WINDOW, "more pieces in flight than the window"
        assert await opened.result() == b"stored name"
    finally:
        await opened.close()
    assert seen.messages == [f"m{i}".encode() for i in range(200)]


async def test_a_download_waits_for_a_slow_reader_and_ends_after_the_last_message(
    rig: Callable[..., Awaitable[Rig]],
) -> None:
    sent: list[int] = []

    async def get(body: bytes, stream: Stream, ctx: RequestContext) -> bytes:
        for i in range(int(body)):
            await stream.send(str(i).encode())
            sent.append(i)
        return b"done"

    r = await rig({"get": get})
    opened = await r.open("get", DOWNLOAD, b"100")
    got: list[int] = []
    try:
        async for message in opened:
            got.append(int(message))
            assert len(sent) - len(got) <= WINDOW, "the handler ran ahead of the reader's credit"
            await asyncio.sleep(0)
        assert await opened.result() == b"done"
    finally:
        await opened.close()
    assert got == list(range(100))


async def test_a_message_larger_than_a_piece_is_joined_again(rig: Callable[..., Awaitable[Rig]]) -> None:
    big = bytes(range(256)) * 8192  # 2 MiB: several pieces, more than the window

    async def echo(body: bytes, stream: Stream, ctx: RequestContext) -> bytes:
        await stream.send(big)
        await stream.send(b"")
        return b""

    r = await rig({"get": echo})
    opened = await r.open("get", DOWNLOAD)
    try:
        assert [m async for m in opened] == [big, b""]
        await opened.result()
    finally:
        await opened.close()


async def test_the_handlers_error_stops_the_sender_with_the_handlers_code(rig: Callable[..., Awaitable[Rig]]) -> None:
    from bridges.errors import InvalidArgument

    async def put(body: bytes, stream: Stream, ctx: RequestContext) -> bytes:
        async for message in stream:
            if message == b"bad":
                raise InvalidArgument("message 'bad' is not allowed")
        return b""

    r = await rig({"put": put})
    opened = await r.open("put", UPLOAD)
    try:
        with pytest.raises(RemoteError) as info:
            await opened.send(b"bad")
            for _ in range(100):  # the error arrives while the caller keeps sending
                await opened.send(b"more")
            await opened.result()
        assert info.value.code == "INVALID_ARGUMENT"
        assert "'bad' is not allowed" in info.value.message
    finally:
        await opened.close()


async def test_a_caller_that_gives_up_stops_the_handler_at_its_next_read(rig: Callable[..., Awaitable[Rig]]) -> None:
    seen = Seen()

    async def put(body: bytes, stream: Stream, ctx: RequestContext) -> bytes:
        try:
            async for _ in stream:
                seen.consumed += 1
                seen.go.set()
        except BaseException as exc:
            seen.errors.append(exc)
            raise
        return b""

    r = await rig({"put": put})
    opened = await r.open("put", UPLOAD)
    try:
        await opened.send(b"first")
        await seen.go.wait()
        await opened.cancel("the client went away")
    finally:
        await opened.close()
    assert len(seen.errors) == 1
    assert isinstance(seen.errors[0], StreamBroken)
    assert seen.errors[0].code == "CANCELLED" and "went away" in seen.errors[0].message


async def test_a_silent_caller_times_the_handler_out(rig: Callable[..., Awaitable[Rig]]) -> None:
    async def put(body: bytes, stream: Stream, ctx: RequestContext) -> bytes:
        async for _ in stream:
            pass
        return b""

    r = await rig({"put": put}, idle=0.3)
    opened = await r.open("put", UPLOAD)
    try:
        with pytest.raises(RemoteError) as info:
            await opened.wait_reply()
        assert info.value.code == "DEADLINE_EXCEEDED"
        assert "sent nothing" in info.value.message
    finally:
        await opened.close()


async def test_other_ops_go_to_the_unary_handler(rig: Callable[..., Awaitable[Rig]]) -> None:
    r = await rig({})
    reply = await r.bus.call(r.subject("list"), b"x", timeout=5, headers=request_headers(5, None))
    assert reply == b"unary:x"


async def test_a_stream_nobody_serves_fails_at_once_with_no_responders(nats_server: Server) -> None:
    bus = Bus([nats_server.url], name="stream-test")
    await bus.start()
    try:
        with pytest.raises(NoResponders):
            await open_stream(
                bus,
                request_subject(unique("ns"), "file", "store", "put", "app"),
                b"",
                direction=UPLOAD,
                timeout=30,
                headers=request_headers(30, None),
            )
    finally:
        await bus.stop()


async def test_a_caller_whose_worker_is_gone_fails_at_the_next_probe_not_after_the_idle_time(
    nats_server: Server,
) -> None:
    worker_bus, caller_bus = Bus([nats_server.url], name="worker"), Bus([nats_server.url], name="caller")
    await worker_bus.start()
    await caller_bus.start()
    ns = unique("ns")
    stuck = asyncio.Event()

    async def get(body: bytes, stream: Stream, ctx: RequestContext) -> bytes:
        await stream.send(b"first")
        await stuck.wait()
        return b""

    async def unary(op: str, payload: bytes, ctx: RequestContext) -> bytes:
        return b""

    host = WorkerHost(worker_bus, ns)
    host.add("file", "store", serve_streams(worker_bus, unary, {"get": get}))
    await host.start()
    try:
        opened = await open_stream(
            caller_bus,
            request_subject(ns, "file", "store", "get", "app"),
            b"",
            direction=DOWNLOAD,
            timeout=600,
            headers=request_headers(600, None),
            idle=600,
        )
        try:
            assert await opened.stream.receive() == b"first"
            await worker_bus.nc.close()  # the worker's connection drops, as when its process is killed
            with pytest.raises(StreamBroken) as info:
                await opened.stream.receive()
            assert info.value.code == "UNAVAILABLE" and "gone" in info.value.message
        finally:
            await opened.close(grace=0)
    finally:
        stuck.set()
        await host.stop(timeout=1)
        await caller_bus.stop()
        await worker_bus.stop()


async def test_an_opening_request_that_names_a_subject_other_than_an_inbox_is_refused(nats_server: Server) -> None:
    bus = Bus([nats_server.url], name="stream-test")
    await bus.start()
    ns = unique("ns")

    async def get(body: bytes, stream: Stream, ctx: RequestContext) -> bytes:
        raise AssertionError("never served")

    async def unary(op: str, payload: bytes, ctx: RequestContext) -> bytes:
        return b""

    host = WorkerHost(bus, ns)
    host.add("file", "store", serve_streams(bus, unary, {"get": get}))
    await host.start()
    spy = await bus.nc.subscribe(f"l8.{ns}.state.>")
    try:
        for payload in (b"l8-stream/1 n l8." + ns.encode() + b".state.s.save d 4\n", b"not a stream", b""):
            with pytest.raises(RemoteError) as info:
                await bus.request(request_subject(ns, "file", "store", "get", "app"), payload, timeout=5)
            assert info.value.code == "INVALID_ARGUMENT"
        await bus.nc.flush()
        assert spy.pending_msgs == 0, "the worker published nothing where the payload pointed"
    finally:
        await spy.unsubscribe()
        await host.stop()
        await bus.stop()
