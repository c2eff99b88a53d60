"""App channels: how l8 learns an app's protocol (and reports an app that speaks none), what
Layotto's AppCallback lacks, gRPC proxying through the invoke subject, and error reasons in the
``l8-reason`` bus header."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from google.protobuf import empty_pb2

from bridges.errors import InvalidArgument
from bus import Bus, RemoteError, RequestContext, WorkerHost
from bus.codec import request_headers
from bus.subjects import request_subject
from handlers.proto import appcallback_pb2 as lac
from handlers.proto import appcallback_pb2_grpc as lac_grpc
from handlers.proto import runtime_pb2 as pb
from runtime.app_channel import AppCallError, AppUnavailable, open_app
from runtime.app_detect import DetectedApp, NotDetected, grpc_flavour, wire_protocol
from runtime.app_http import HttpApp
from runtime.sidecar import Sidecar
from tests.conftest import native_stub, sidecar_config, unique
from tests.pubsub_app import AppServer, RecordingApp
from tests.servers import Server, free_port
from tests.test_app_http import FastApiApp, fastapi_app, http  # noqa: F401 - the module's app fixture


class LayottoApp(lac_grpc.AppCallbackServicer):
    """Layotto's AppCallback, as Layotto's SDKs serve it."""

    def __init__(self, topic: str) -> None:
        self.topic = topic

    async def ListTopicSubscriptions(self, request: Any, context: Any) -> Any:
        return lac.ListTopicSubscriptionsResponse(
            subscriptions=[lac.TopicSubscription(pubsub_name="pubsub", topic=self.topic)]
        )

    async def OnTopicEvent(self, request: Any, context: Any) -> Any:
        if request.topic == "missing":
            await context.abort(grpc.StatusCode.NOT_FOUND, "no such topic here")
        return lac.TopicEventResponse(status=lac.TopicEventResponse.SUCCESS)


@contextlib.asynccontextmanager
async def grpc_app(servicer: Any = None) -> AsyncIterator[str]:
    server = grpc.aio.server()
    if servicer is not None:
        lac_grpc.add_AppCallbackServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(0)


@contextlib.asynccontextmanager
async def tcp_app(answer: bytes) -> AsyncIterator[str]:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(answer)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.close()
        await server.wait_closed()


# ---- detection ----


async def test_a_dapr_grpc_app_a_layotto_app_and_a_bare_grpc_server_are_told_apart() -> None:
    dapr_app = await AppServer(RecordingApp()).start()
    try:
        assert await wire_protocol(dapr_app.address) == "h2"
        assert await grpc_flavour(dapr_app.address) == "grpc"
    finally:
        await dapr_app.stop()
    async with grpc_app(LayottoApp("t")) as address:
        assert await grpc_flavour(address) == "layotto"
        detected = DetectedApp(address)
        try:
            [sub] = await detected.list_subscriptions(timeout=5) or []
            assert (sub.pubsub, sub.topic) == ("pubsub", "t") and detected.protocol == "layotto"
        finally:
            await detected.close()
    async with grpc_app() as address:
        assert await grpc_flavour(address) == "grpc"  # only invoked: Dapr's channel, l8's default


async def test_an_http_app_is_told_apart_by_its_http_answer(fastapi_app: FastApiApp) -> None:  # noqa: F811
    assert await wire_protocol(fastapi_app.address) == "http"


async def test_an_app_that_speaks_no_protocol_l8_knows_is_reported_and_its_calls_wait(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with tcp_app(b"hello, I speak my own protocol\n") as address:
        with pytest.raises(NotDetected, match="hello, I speak"):
            await wire_protocol(address)
        detected = DetectedApp(address)
        try:
            with (
                caplog.at_level(logging.INFO, logger="l8.runtime.app"),
                pytest.raises(AppUnavailable, match="does not know yet which protocol"),
            ):
                await detected.list_subscriptions(timeout=5)
            warned = [r for r in caplog.records if r.levelno == logging.WARNING and "speaks neither" in r.message]
            assert warned and address in warned[0].message
            assert detected.protocol == ""
        finally:
            await detected.close()


async def test_an_app_not_listening_yet_is_unavailable_without_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    detected = DetectedApp(f"127.0.0.1:{free_port()}")
    try:
        with caplog.at_level(logging.INFO, logger="l8.runtime.app"), pytest.raises(AppUnavailable):
            await detected.on_event(None, "/", timeout=1, metadata=[])  # type: ignore[arg-type]
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    finally:
        await detected.close()


def test_an_unknown_app_protocol_is_refused() -> None:
    with pytest.raises(ValueError, match="not one of grpc, layotto, http"):
        open_app("127.0.0.1:1", protocol="soap")


# ---- what Layotto's AppCallback lacks ----


async def test_what_layottos_appcallback_lacks_answers_unimplemented() -> None:
    async with grpc_app(LayottoApp("t")) as address:
        app = open_app(address, protocol="layotto")
        try:
            for call in (
                app.on_invoke(b"", timeout=5, metadata=[]),
                app.on_bulk_event("pubsub", "t", "", [], timeout=5),
                app.on_binding_event("b", b"", {}, timeout=5),
            ):
                with pytest.raises(AppCallError) as caught:
                    await call
                assert caught.value.code.value == "UNIMPLEMENTED"
            assert await app.list_input_bindings(timeout=5) is None
            assert (await app.health(timeout=5))[0] is False
        finally:
            await app.close()


async def test_an_invocation_of_a_layotto_app_answers_unimplemented(nats_server: Server) -> None:
    async with grpc_app(LayottoApp("t")) as address:
        config = sidecar_config(nats_server.url, {}, app={"id": unique("lt"), "callback": address})
        sidecar = Sidecar(config)
        await sidecar.start()
        try:
            status, _, body = await http(sidecar, "POST", f"/v1.0/invoke/{config.app.id}/method/anything", b"{}")
            assert status == 501 and b"Layotto's AppCallback has no OnInvoke" in body
        finally:
            await sidecar.stop()


# ---- gRPC proxying ----


async def test_a_grpc_call_with_dapr_app_id_reaches_that_apps_own_service_and_its_status_comes_back(
    nats_server: Server,
) -> None:
    async with grpc_app(LayottoApp("proxied")) as address:
        config = sidecar_config(nats_server.url, {}, app={"id": unique("px"), "callback": address})
        sidecar = Sidecar(config)
        await sidecar.start()
        channel, _ = native_stub(sidecar)
        try:
            async with channel:
                stub = lac_grpc.AppCallbackStub(channel)
                md = (("dapr-app-id", config.app.id),)
                listed = await stub.ListTopicSubscriptions(empty_pb2.Empty(), metadata=md, timeout=30)
                assert [s.topic for s in listed.subscriptions] == ["proxied"]
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await stub.OnTopicEvent(lac.TopicEventRequest(topic="missing"), metadata=md, timeout=30)
                assert caught.value.code() == grpc.StatusCode.NOT_FOUND
                assert caught.value.details() == "no such topic here"
                # Without dapr-app-id nothing is proxied: l8 serves no AppCallback itself.
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await stub.ListTopicSubscriptions(empty_pb2.Empty(), timeout=30)
                assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
                # An app id nobody serves is UNAVAILABLE, naming it.
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await stub.ListTopicSubscriptions(empty_pb2.Empty(), metadata=(("dapr-app-id", "nobody"),))
                assert caught.value.code() == grpc.StatusCode.UNAVAILABLE and "nobody" in (caught.value.details() or "")
        finally:
            await sidecar.stop()


async def test_an_http_app_cannot_take_a_proxied_grpc_call() -> None:
    app = HttpApp("127.0.0.1:1")
    with pytest.raises(AppCallError) as caught:
        await app.call_grpc("/a.B/C", b"", timeout=1, metadata=[])
    assert caught.value.code.value == "UNIMPLEMENTED"
    await app.close()


async def test_l8s_own_rpcs_are_never_proxied(nats_server: Server) -> None:
    config = sidecar_config(nats_server.url, {"statestore": {"kind": "state", "type": "nats.kv"}})
    sidecar = Sidecar(config)
    await sidecar.start()
    channel, stub = native_stub(sidecar)
    try:
        async with channel:
            got = await stub.GetState(
                pb.GetStateRequest(store_name="statestore", key="k"), metadata=(("dapr-app-id", "other"),), timeout=30
            )
            assert got.data == b""
    finally:
        await sidecar.stop()


# ---- reasons on the bus ----


@pytest.mark.parametrize("local", [False, True])
async def test_an_errors_reason_travels_in_its_own_header_and_the_message_stays_clean(
    nats_server: Server, local: bool
) -> None:
    bus = Bus([nats_server.url], name="reason-test")
    await bus.start()
    ns = unique("ns")

    async def handler(op: str, payload: bytes, ctx: RequestContext) -> bytes:
        raise InvalidArgument("the key is bad", reason="DAPR_STATE_ILLEGAL_KEY")

    host = WorkerHost(bus, ns, local_dispatch=local)
    host.add("state", "s", handler)
    await host.start()
    try:
        with pytest.raises(RemoteError) as caught:
            await bus.call(request_subject(ns, "state", "s", "get", "me"), b"", timeout=5, headers=request_headers(5))
        assert (caught.value.code, caught.value.message) == ("INVALID_ARGUMENT", "the key is bad")
        assert caught.value.reason == "DAPR_STATE_ILLEGAL_KEY"
    finally:
        await host.stop()
        await bus.stop()
