"""Output bindings (native and Dapr InvokeBinding): one suite of the API's rules over every binding,
then what each binding does, against real servers: nats-server, tansu (Kafka API), redis-server, an
HTTP server, a directory."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import nats
import pytest
from aiohttp import web
from dapr.proto.runtime.v1 import binding_pb2 as dapr_binding
from dapr.proto.runtime.v1 import dapr_pb2_grpc

from bus.sync import server_has_seen
from handlers.proto import runtime_pb2 as pb
from handlers.proto import runtime_pb2_grpc
from runtime.components import ComponentError
from runtime.sidecar import Sidecar
from tests.conftest import SidecarFactory, native_stub, sidecar_config
from tests.servers import TANSU, KafkaServer, Server, free_port

BINDINGS = ["nats", "kafka", "http", "redis", "local.dir"]
OPERATIONS = {
    "nats": "publish, request, create",
    "kafka": "create",
    "http": "get, post, put, delete, create",
    "redis": "set, get, delete, create",
    "local.dir": "create, get, list, delete",
}


@dataclass
class Seen:
    """What the HTTP server was asked."""

    requests: list[dict[str, Any]] = field(default_factory=list)
    stall: asyncio.Event = field(default_factory=asyncio.Event)


@pytest.fixture(scope="module")
async def http_server() -> AsyncIterator[tuple[str, Seen]]:
    seen = Seen()

    async def handle(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        seen.requests.append(
            {"method": request.method, "path": request.path_qs, "headers": dict(request.headers), "body": body}
        )
        if "/status/" in request.path:
            return web.Response(status=int(request.path.rsplit("/", 1)[1]), text="upstream says no " * 20)
        if request.path.endswith("/slow"):
            await seen.stall.wait()
        if request.path.endswith("/big"):
            return web.Response(body=b"x" * 5000)
        return web.Response(body=b"echo:" + body, headers={"X-Reply": "yes"}, content_type="application/octet-stream")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    yield f"http://127.0.0.1:{port}", seen
    seen.stall.set()
    await runner.cleanup()


def binding_component(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path, http: tuple[str, Seen] | None, **metadata: str
) -> dict[str, Any]:
    meta: dict[str, str] = {}
    if kind == "nats":
        meta["subject"] = f"bind.{uuid.uuid4().hex[:8]}"
    elif kind == "kafka":
        kafka: KafkaServer = request.getfixturevalue("kafka_server")
        meta.update(brokers=kafka.url, publishTopic=f"bind-{uuid.uuid4().hex[:8]}", **TANSU)
    elif kind == "http":
        assert http is not None
        meta["url"] = http[0]
    elif kind == "redis":
        redis: Server = request.getfixturevalue("redis_server")
        meta["url"] = f"redis://127.0.0.1:{redis.port}"
    else:
        meta["root"] = str(tmp_path / "bound")
    meta.update(metadata)
    return {"kind": "bindings", "type": kind, "metadata": meta}


async def sidecar_with(
    make_sidecar: SidecarFactory, nats_server: Server, components: dict[str, Any]
) -> tuple[Sidecar, grpc.aio.Channel, runtime_pb2_grpc.RuntimeStub]:
    sidecar = await make_sidecar(sidecar_config(nats_server.url, components))
    channel, stub = native_stub(sidecar)
    return sidecar, channel, stub


async def error_of(call: Any) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    return info.value.code(), info.value.details() or ""


def invoke(name: str, operation: str, data: bytes = b"", **metadata: str) -> pb.InvokeBindingRequest:
    return pb.InvokeBindingRequest(name=name, operation=operation, data=data, metadata=metadata)


# ---- the API's rules, over every binding ----


@pytest.mark.parametrize("kind", BINDINGS)
async def test_an_unknown_or_empty_operation_is_invalid_argument_listing_the_supported_ones(
    kind: str,
    request: pytest.FixtureRequest,
    nats_server: Server,
    make_sidecar: SidecarFactory,
    tmp_path: Path,
    http_server: tuple[str, Seen],
) -> None:
    _, channel, stub = await sidecar_with(
        make_sidecar, nats_server, {"out": binding_component(kind, request, tmp_path, http_server)}
    )
    async with channel:
        for operation in ("explode", ""):
            code, message = await error_of(stub.InvokeBinding(invoke("out", operation)))
            assert code is grpc.StatusCode.INVALID_ARGUMENT
            assert f"supports: {OPERATIONS[kind]}" in message, message
        code, message = await error_of(
            stub.InvokeBinding(invoke("out", OPERATIONS[kind].split(",")[0], **{f"k{i}": "v" for i in range(70)}))
        )
        assert code is grpc.StatusCode.INVALID_ARGUMENT and "at most 64" in message
        for name in ("", "elsewhere"):
            code, message = await error_of(stub.InvokeBinding(invoke(name, "create")))
            assert code is grpc.StatusCode.INVALID_ARGUMENT and "configured: out" in message
        first = OPERATIONS[kind].split(",")[0]
        code, message = await error_of(stub.InvokeBinding(invoke("out", first, b"x" * (2 << 20))))
        assert code is grpc.StatusCode.INVALID_ARGUMENT and "the bus carries at most" in message


# ---- NATS ----


async def test_nats_publish_sends_data_and_metadata_as_headers(
    nats_server: Server, make_sidecar: SidecarFactory, tmp_path: Path
) -> None:
    component = {"kind": "bindings", "type": "nats", "metadata": {"subject": "orders.created"}}
    _, channel, stub = await sidecar_with(make_sidecar, nats_server, {"out": component})
    nc = await nats.connect(nats_server.url)
    try:
        sub = await nc.subscribe("orders.created")
        await server_has_seen(nc)
        async with channel:
            reply = await stub.InvokeBinding(invoke("out", "publish", b'{"id": 7}', source="test"))
            assert reply.data == b""
            msg = await sub.next_msg(timeout=10)
            assert msg.data == b'{"id": 7}' and msg.headers == {"source": "test"}
    finally:
        await nc.close()


async def test_nats_request_answers_the_reply_and_its_headers(
    nats_server: Server, make_sidecar: SidecarFactory
) -> None:
    component = {"kind": "bindings", "type": "nats", "metadata": {"subject": "quote.price", "timeoutSeconds": "10"}}
    _, channel, stub = await sidecar_with(make_sidecar, nats_server, {"out": component})
    nc = await nats.connect(nats_server.url)

    async def respond(msg: Any) -> None:
        await nc.publish(msg.reply, b"price:" + msg.data, headers={"currency": "EUR"})

    async with channel:
        try:
            await nc.subscribe("quote.price", cb=respond)
            await server_has_seen(nc)
            reply = await stub.InvokeBinding(invoke("out", "request", b"ABC"))
            assert reply.data == b"price:ABC" and dict(reply.metadata) == {"currency": "EUR"}
        finally:
            await nc.close()
        code, message = await error_of(stub.InvokeBinding(invoke("out", "request")))
        assert code is grpc.StatusCode.UNAVAILABLE and "nobody answers" in message


async def test_nats_subjects_of_l8_itself_are_refused_on_the_bus_but_not_on_a_server_of_their_own(
    nats_server: Server, make_sidecar: SidecarFactory
) -> None:
    for subject in ("l8.default.state.statestore.save", "$JS.API.STREAM.DELETE.X", "_INBOX.abc"):
        component = {"kind": "bindings", "type": "nats", "metadata": {"subject": subject}}
        with pytest.raises(ComponentError, match="l8's own on the bus"):
            await sidecar_with(make_sidecar, nats_server, {"out": component})
    own = {"kind": "bindings", "type": "nats", "metadata": {"subject": "l8.elsewhere", "url": nats_server.url}}
    _, channel, stub = await sidecar_with(make_sidecar, nats_server, {"out": own})
    async with channel:
        await stub.InvokeBinding(invoke("out", "publish", b"fine"))


# ---- Kafka ----


async def test_kafka_create_produces_the_message_with_its_metadata_as_headers(
    kafka_server: KafkaServer, nats_server: Server, make_sidecar: SidecarFactory
) -> None:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    topic = f"bind-{uuid.uuid4().hex[:8]}"
    component = {
        "kind": "bindings",
        "type": "kafka",
        "metadata": {"brokers": kafka_server.url, "publishTopic": topic, **TANSU},
    }
    _, channel, stub = await sidecar_with(make_sidecar, nats_server, {"out": component})
    async with channel:
        await stub.InvokeBinding(invoke("out", "create", b"hello kafka", source="l8"))
    consumer = AIOKafkaConsumer(bootstrap_servers=kafka_server.url, enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign([TopicPartition(topic, 0)])
        await consumer.seek_to_beginning()
        batch = await consumer.getmany(timeout_ms=10_000)
        records = [r for rs in batch.values() for r in rs]
        assert [r.value for r in records] == [b"hello kafka"]
        assert ("source", b"l8") in list(records[0].headers)
    finally:
        await consumer.stop()


# ---- HTTP ----


@pytest.fixture
async def http_binding(
    nats_server: Server, make_sidecar: SidecarFactory, http_server: tuple[str, Seen]
) -> AsyncIterator[tuple[runtime_pb2_grpc.RuntimeStub, Seen]]:
    components = {
        "web": {"kind": "bindings", "type": "http", "metadata": {"url": http_server[0] + "/api"}},
        "lenient": {
            "kind": "bindings",
            "type": "http",
            "metadata": {"url": http_server[0], "errorIfNot2XX": "false", "maxResponseBytes": "1000"},
        },
        "hasty": {"kind": "bindings", "type": "http", "metadata": {"url": http_server[0], "timeoutSeconds": "0.5"}},
    }
    _, channel, stub = await sidecar_with(make_sidecar, nats_server, components)
    async with channel:
        yield stub, http_server[1]


@pytest.mark.parametrize("operation", ["get", "post", "put", "delete"])
async def test_http_verbs_send_the_path_and_headers_from_metadata(
    http_binding: tuple[runtime_pb2_grpc.RuntimeStub, Seen], operation: str
) -> None:
    stub, seen = http_binding
    reply = await stub.InvokeBinding(
        invoke("web", operation, b"payload", path="/orders/7?full=1", **{"X-Trace": "t1", "Content-Type": "text/plain"})
    )
    asked = seen.requests[-1]
    assert asked["method"] == operation.upper() and asked["path"] == "/api/orders/7?full=1"
    assert asked["headers"]["X-Trace"] == "t1" and asked["body"] == b"payload"
    assert reply.data == b"echo:payload"
    assert reply.metadata["statusCode"] == "200" and reply.metadata["X-Reply"] == "yes"


async def test_http_refuses_paths_and_headers_that_would_leave_or_reframe_the_request(
    http_binding: tuple[runtime_pb2_grpc.RuntimeStub, Seen],
) -> None:
    stub, seen = http_binding
    before = len(seen.requests)
    for metadata in (
        {"path": "http://evil.example/x"},
        {"path": "/../../etc"},
        {"path": "/a\r\nX-Injected: 1"},
        {"Host": "evil.example"},
        {"Content-Length": "1"},
        {"bad header": "v"},
        {"X-Ok": "line\r\nbreak"},
    ):
        code, _ = await error_of(stub.InvokeBinding(invoke("web", "get", **metadata)))
        assert code is grpc.StatusCode.INVALID_ARGUMENT, metadata
    assert len(seen.requests) == before, "nothing was sent"


async def test_http_statuses_map_to_errors_unless_error_if_not_2xx_is_off(
    http_binding: tuple[runtime_pb2_grpc.RuntimeStub, Seen],
) -> None:
    stub, _ = http_binding
    code, message = await error_of(stub.InvokeBinding(invoke("web", "get", path="/status/404")))
    assert code is grpc.StatusCode.FAILED_PRECONDITION and "answered 404" in message and len(message) < 300
    code, _ = await error_of(stub.InvokeBinding(invoke("web", "post", path="/status/503")))
    assert code is grpc.StatusCode.UNAVAILABLE
    reply = await stub.InvokeBinding(invoke("lenient", "get", path="/status/404"))
    assert reply.metadata["statusCode"] == "404"


async def test_http_calls_time_out_and_big_replies_are_refused(
    http_binding: tuple[runtime_pb2_grpc.RuntimeStub, Seen],
) -> None:
    stub, _ = http_binding
    code, message = await error_of(stub.InvokeBinding(invoke("hasty", "get", path="/slow")))
    assert code is grpc.StatusCode.DEADLINE_EXCEEDED and "no answer" in message
    code, _ = await error_of(stub.InvokeBinding(invoke("web", "get", path="/slow"), timeout=1.0))
    assert code is grpc.StatusCode.DEADLINE_EXCEEDED, "the caller's deadline bounds the call too"
    code, message = await error_of(stub.InvokeBinding(invoke("lenient", "get", path="/big")))
    assert code is grpc.StatusCode.RESOURCE_EXHAUSTED and "over 1000 bytes" in message


async def test_an_http_url_from_a_secret_never_shows_in_errors(
    nats_server: Server, make_sidecar: SidecarFactory, tmp_path: Path
) -> None:
    secret_url = f"http://127.0.0.1:{free_port()}/hook-Tok3n-abcdef"  # nothing listens there
    (tmp_path / "s.json").write_text(json.dumps({"hook": secret_url}))
    components = {
        "vault": {"kind": "secrets", "type": "local.file", "metadata": {"secretsFile": str(tmp_path / "s.json")}},
        "hook": {"kind": "bindings", "type": "http", "metadata": {"url": {"secretRef": "hook"}}},
    }
    _, channel, stub = await sidecar_with(make_sidecar, nats_server, components)
    async with channel:
        code, message = await error_of(stub.InvokeBinding(invoke("hook", "post", b"x")))
        assert code is grpc.StatusCode.UNAVAILABLE and "Tok3n" not in message


# ---- Redis ----


@pytest.mark.redis
async def test_redis_sets_gets_and_deletes_one_key_with_an_optional_ttl(
    redis_server: Server, nats_server: Server, make_sidecar: SidecarFactory
) -> None:
    import redis.asyncio as aioredis

    component = {"kind": "bindings", "type": "redis", "metadata": {"url": f"redis://127.0.0.1:{redis_server.port}"}}
    _, channel, stub = await sidecar_with(make_sidecar, nats_server, {"kv": component})
    key = f"bind-{uuid.uuid4().hex[:8]}"
    direct = aioredis.from_url(f"redis://127.0.0.1:{redis_server.port}")
    try:
        async with channel:
            await stub.InvokeBinding(invoke("kv", "set", b"v1", key=key, ttlInSeconds="100"))
            assert (await stub.InvokeBinding(invoke("kv", "get", key=key))).data == b"v1"
            assert 0 < await direct.ttl(key) <= 100
            await stub.InvokeBinding(invoke("kv", "delete", key=key))
            assert (await stub.InvokeBinding(invoke("kv", "get", key=key))).data == b""
            for metadata in ({}, {"key": key, "ttlInSeconds": "soon"}):
                code, _ = await error_of(stub.InvokeBinding(invoke("kv", "set", b"v", **metadata)))
                assert code is grpc.StatusCode.INVALID_ARGUMENT
            assert await direct.get(key) is None, "a refused set wrote nothing"
    finally:
        await direct.aclose()


# ---- local directory ----


async def test_a_local_directory_creates_gets_lists_and_deletes_files(
    nats_server: Server, make_sidecar: SidecarFactory, tmp_path: Path
) -> None:
    root = tmp_path / "bound"
    component = {"kind": "bindings", "type": "local.dir", "metadata": {"root": str(root), "maxResponseBytes": "100"}}
    _, channel, stub = await sidecar_with(make_sidecar, nats_server, {"disk": component})
    async with channel:
        await stub.InvokeBinding(invoke("disk", "create", b"one", fileName="a/one.txt"))
        made = await stub.InvokeBinding(invoke("disk", "create", b"two"))
        generated = made.metadata["fileName"]
        assert (root / generated).read_bytes() == b"two"
        assert (await stub.InvokeBinding(invoke("disk", "get", fileName="a/one.txt"))).data == b"one"
        assert json.loads((await stub.InvokeBinding(invoke("disk", "list"))).data) == sorted(["a/one.txt", generated])
        assert json.loads((await stub.InvokeBinding(invoke("disk", "list", fileName="a"))).data) == ["a/one.txt"]
        await stub.InvokeBinding(invoke("disk", "delete", fileName="a/one.txt"))
        code, _ = await error_of(stub.InvokeBinding(invoke("disk", "get", fileName="a/one.txt")))
        assert code is grpc.StatusCode.NOT_FOUND
        for name in ("/etc/passwd", "../up", ".l8-tmp/x"):
            code, _ = await error_of(stub.InvokeBinding(invoke("disk", "create", b"x", fileName=name)))
            assert code is grpc.StatusCode.INVALID_ARGUMENT, name
        await stub.InvokeBinding(invoke("disk", "create", b"y" * 101, fileName="big"))
        code, _ = await error_of(stub.InvokeBinding(invoke("disk", "get", fileName="big")))
        assert code is grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_dapr_invoke_binding_answers_as_the_native_rpc(
    nats_server: Server, make_sidecar: SidecarFactory, tmp_path: Path
) -> None:
    component = {"kind": "bindings", "type": "local.dir", "metadata": {"root": str(tmp_path / "d")}}
    sidecar, channel, _ = await sidecar_with(make_sidecar, nats_server, {"disk": component})
    await channel.close()
    assert sidecar.grpc is not None
    async with grpc.aio.insecure_channel(f"127.0.0.1:{sidecar.grpc.port}") as dapr_channel:
        dapr = dapr_pb2_grpc.DaprStub(dapr_channel)
        reply = await dapr.InvokeBinding(
            dapr_binding.InvokeBindingRequest(name="disk", operation="create", data=b"d", metadata={"fileName": "f"})
        )
        assert dict(reply.metadata) == {"fileName": "f"}
        got = await dapr.InvokeBinding(
            dapr_binding.InvokeBindingRequest(name="disk", operation="get", metadata={"fileName": "f"})
        )
        assert got.data == b"d"
