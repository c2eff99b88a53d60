"""Service invocation inside one test process: sidecars on the session's nats-server and an app
that records exactly what its AppCallback receives (a real gRPC server on the Dapr proto)."""

from __future__ import annotations

import asyncio
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from dapr.proto.common.v1 import common_pb2
from dapr.proto.runtime.v1 import appcallback_pb2_grpc

from handlers.proto import runtime_pb2 as pb
from runtime.sidecar import Sidecar
from tests.conftest import SidecarFactory, native_stub, sidecar_config, unique
from tests.servers import Server, free_port

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


class RecordingApp(appcallback_pb2_grpc.AppCallbackServicer):  # type: ignore[misc]
    def __init__(self) -> None:
        self.calls: list[tuple[Any, dict[str, Any], float | None]] = []
        self.entered = asyncio.Event()
        self.gate: asyncio.Event | None = None

    async def OnInvoke(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        self.calls.append((request, dict(context.invocation_metadata() or ()), context.time_remaining()))
        if request.method == "held" and self.gate is not None:
            self.entered.set()
            await self.gate.wait()
        await context.send_initial_metadata((("x-answered-by", "recorder"),))
        resp = common_pb2.InvokeResponse(content_type="text/csv")
        resp.data.value = b"a,b"
        return resp


@pytest.fixture
async def recording_app() -> AsyncIterator[tuple[RecordingApp, int]]:
    server = grpc.aio.server()
    app = RecordingApp()
    appcallback_pb2_grpc.add_AppCallbackServicer_to_server(app, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield app, port
    await server.stop(None)


async def pair(make_sidecar: SidecarFactory, nats_server: Server, app_port: int | None) -> tuple[Sidecar, Sidecar, str]:
    namespace = unique("ns")
    target_id = unique("target")
    target_app: dict[str, Any] = {"id": target_id}
    if app_port is not None:
        target_app["callback"] = f"127.0.0.1:{app_port}"
    target = await make_sidecar(sidecar_config(nats_server.url, {}, app=target_app, namespace=namespace))
    caller = await make_sidecar(sidecar_config(nats_server.url, {}, app_id=unique("caller"), namespace=namespace))
    return caller, target, target_id


def request(app_id: str, method: str, data: bytes = b"") -> pb.InvokeServiceRequest:
    message = pb.CommonInvokeRequest(method=method)
    message.data.value = data
    return pb.InvokeServiceRequest(id=app_id, message=message)


def http_call(port: int, method: str, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, Any, bytes]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, resp.headers, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read()


async def test_the_http_route_passes_verb_query_body_content_type_and_headers_to_the_app_and_back(
    make_sidecar: SidecarFactory, nats_server: Server, recording_app: tuple[RecordingApp, int]
) -> None:
    app, port = recording_app
    caller, _, target_id = await pair(make_sidecar, nats_server, port)
    assert caller.http is not None
    status, headers, body = await asyncio.to_thread(
        http_call,
        caller.http.port,
        "PATCH",
        f"/v1.0/invoke/{target_id}/method/orders/42?x=1&y=two",
        b"payload",
        {"content-type": "text/plain", "x-tenant": "acme", "traceparent": TRACEPARENT},
    )
    assert (status, body) == (200, b"a,b")
    assert headers["content-type"] == "text/csv"
    assert headers["x-answered-by"] == "recorder"
    [(got, metadata, _)] = app.calls
    assert got.method == "orders/42"
    assert got.data.value == b"payload"
    assert got.content_type == "text/plain"
    assert got.http_extension.verb == common_pb2.HTTPExtension.Verb.PATCH
    assert got.http_extension.querystring == "x=1&y=two"
    assert metadata["x-tenant"] == "acme"
    assert metadata["traceparent"] == TRACEPARENT
    assert metadata["dapr-caller-app-id"] == caller.config.app.id
    assert metadata["dapr-callee-app-id"] == target_id
    assert "host" not in metadata


async def test_the_callers_deadline_reaches_the_app(
    make_sidecar: SidecarFactory, nats_server: Server, recording_app: tuple[RecordingApp, int]
) -> None:
    app, port = recording_app
    caller, _, target_id = await pair(make_sidecar, nats_server, port)
    channel, stub = native_stub(caller)
    async with channel:
        await stub.InvokeService(request(target_id, "m"), timeout=20)
    [(_, _, remaining)] = app.calls
    # The 20 s the caller gave, not the 5 s l8 uses for calls that carry no deadline; gRPC's clocks
    # are coarse, so the app may read a little more than 20.
    assert remaining is not None
    assert 10 < remaining < 25


async def test_a_sidecar_without_an_app_callback_answers_no_invocations(
    make_sidecar: SidecarFactory, nats_server: Server
) -> None:
    caller, target, target_id = await pair(make_sidecar, nats_server, None)
    assert target.invocations is None
    channel, stub = native_stub(caller)
    async with channel:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.InvokeService(request(target_id, "m"), timeout=20)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert f"no sidecar of app {target_id!r} answers" in (info.value.details() or "")


async def test_an_app_that_is_down_makes_its_invocations_unavailable_saying_where_l8_looked(
    make_sidecar: SidecarFactory, nats_server: Server
) -> None:
    port = free_port()
    caller, _, target_id = await pair(make_sidecar, nats_server, port)
    channel, stub = native_stub(caller)
    async with channel:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.InvokeService(request(target_id, "m"), timeout=20)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert f"app {target_id!r} at 127.0.0.1:{port} is unavailable" in (info.value.details() or "")


async def test_stopping_the_target_sidecar_finishes_the_invocations_in_flight_and_takes_no_more(
    make_sidecar: SidecarFactory, nats_server: Server, recording_app: tuple[RecordingApp, int]
) -> None:
    app, port = recording_app
    app.gate = asyncio.Event()
    caller, target, target_id = await pair(make_sidecar, nats_server, port)
    assert target.invocations is not None and target.workers is not None
    await target.workers.serve(target.invocations)  # idempotent
    channel, stub = native_stub(caller)
    async with channel:
        in_flight = asyncio.ensure_future(stub.InvokeService(request(target_id, "held"), timeout=60))
        await app.entered.wait()
        stopping = asyncio.create_task(target.stop())
        # Once the target has left the queue group, new invocations find nobody...
        # None is lost on the way: each is answered or refused, never left to its deadline.
        deadline = time.monotonic() + 30
        while True:
            try:
                await stub.InvokeService(request(target_id, "new"), timeout=20)
            except grpc.aio.AioRpcError as exc:
                assert exc.code() == grpc.StatusCode.UNAVAILABLE, exc
                break
            assert time.monotonic() < deadline, "the stopping sidecar kept taking invocations"
            await asyncio.sleep(0.01)
        # ...while the one in flight is still answered.
        assert not in_flight.done()
        app.gate.set()
        resp = await in_flight
        assert resp.data.value == b"a,b"
        await stopping
    await target.workers.leave(target.invocations)  # idempotent


ROUNDS = 30


class EmptyApp(appcallback_pb2_grpc.AppCallbackServicer):  # type: ignore[misc]
    async def OnInvoke(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        return common_pb2.InvokeResponse()


async def test_invocations_racing_a_stopping_replica_are_answered_or_refused_never_lost(
    nats_server: Server,
) -> None:
    server = grpc.aio.server()
    appcallback_pb2_grpc.add_AppCallbackServicer_to_server(EmptyApp(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    outcomes: dict[str, int] = {}
    try:
        # Several rounds: NATS can route a request to a subscription in the instant it leaves,
        # which a plain unsubscribe or drain turns into a call that waits out its deadline.
        for _ in range(ROUNDS):
            namespace, target_id = unique("ns"), unique("target")
            app = {"id": target_id, "callback": f"127.0.0.1:{port}"}
            target = Sidecar(sidecar_config(nats_server.url, {}, app=app, namespace=namespace))
            caller = Sidecar(sidecar_config(nats_server.url, {}, app_id=unique("caller"), namespace=namespace))
            await target.start()
            await caller.start()
            channel, stub = native_stub(caller)
            async with channel:

                async def hammer(stub: Any = stub, target_id: str = target_id) -> None:
                    while True:
                        try:
                            await stub.InvokeService(request(target_id, "m"), timeout=20)
                            outcomes["OK"] = outcomes.get("OK", 0) + 1
                        except grpc.aio.AioRpcError as exc:
                            outcomes[exc.code().name] = outcomes.get(exc.code().name, 0) + 1
                            if exc.code() != grpc.StatusCode.DEADLINE_EXCEEDED:
                                return

                callers = [asyncio.create_task(hammer()) for _ in range(4)]
                while outcomes.get("OK", 0) < 20:  # the target is answering
                    await asyncio.sleep(0.01)
                await target.stop()
                await asyncio.gather(*callers)
            await caller.stop()
            outcomes["OK"] = 0
    finally:
        await server.stop(None)
    assert "DEADLINE_EXCEEDED" not in outcomes, outcomes
    assert outcomes.get("UNAVAILABLE") == 4 * ROUNDS, outcomes
