"""Tracing as an operator turns it on: `l8 run` with the standard OTEL_* variables (or config),
exporting to a real OTLP receiver over gRPC and HTTP; one trace follows a published event through
the bus, the pub/sub worker and the sidecar to the app's callback."""

from __future__ import annotations

import asyncio
import os
import secrets
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from handlers.proto import runtime_pb2 as pb
from handlers.proto import runtime_pb2_grpc
from tests.conftest import unique
from tests.otlp_receiver import Receiver, Span
from tests.process import L8Process, start_l8
from tests.pubsub_app import AppServer, RecordingApp
from tests.servers import Server


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    found = Receiver().start()
    yield found
    found.stop()


def otel_env(receiver: Receiver, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env.update(
        OTEL_SDK_DISABLED="false",
        OTEL_TRACES_EXPORTER="otlp",
        OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{receiver.grpc_port}",
        OTEL_BSP_SCHEDULE_DELAY="100",
        **extra,
    )
    return env


def traceparent() -> tuple[str, str, str]:
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return f"00-{trace_id}-{span_id}-01", trace_id, span_id


def by_name(spans: list[Span]) -> dict[str, Span]:
    return {s.name: s for s in spans}


def assert_one_tree(spans: list[Span], root_parent: str) -> None:
    """Every span's parent is another span of the trace, except the root's, which is the caller's."""
    ids = {s.span_id for s in spans}
    roots = [s for s in spans if s.parent_id not in ids]
    assert [r.parent_id for r in roots] == [root_parent], [(s.name, s.parent_id) for s in roots]


async def test_one_trace_spans_publish_delivery_and_the_app_callback_over_otlp_grpc(
    nats_server: Server, receiver: Receiver, tmp_path: Path
) -> None:
    app = RecordingApp()
    server = await AppServer(app).start()
    service = unique("traced")
    config = {
        "app": {"id": service, "callback": server.address},
        "namespace": unique("ns"),
        "bus": {"url": nats_server.url},
        "components": {"pubsub": {"kind": "pubsub", "type": "nats.jetstream"}},
        "subscriptions": [{"pubsub": "pubsub", "topic": "orders"}],
    }
    l8: L8Process = await asyncio.to_thread(start_l8, config, cwd=tmp_path, env=otel_env(receiver))
    try:
        header, trace_id, caller_span = traceparent()
        async with grpc.aio.insecure_channel(l8.grpc_address) as channel:
            stub = runtime_pb2_grpc.RuntimeStub(channel)
            await stub.PublishEvent(
                pb.PublishEventRequest(pubsub_name="pubsub", topic="orders", data=b'{"n": 1}',
                                       data_content_type="application/json"),
                metadata=(("traceparent", header),),
            )  # fmt: skip
        got = (await app.wait_for(lambda d: len(d) >= 1))[0]
        # The app's callback carries the trace on, as a child of l8's span of the call to it.
        assert got.metadata["traceparent"].split("-")[1] == trace_id
        wanted = {
            "/spec.proto.runtime.v1.Runtime/PublishEvent": "server",
            "pubsub/pubsub/publish": "client",
            "pubsub/orders": "consumer",
            "/dapr.proto.runtime.v1.AppCallback/OnTopicEvent": "client",
        }
        spans = await asyncio.to_thread(
            receiver.wait_for,
            lambda s: set(wanted) | {"events/pubsub/orders"} <= {x.name for x in s if x.trace_id == trace_id},
        )
        trace = [s for s in spans if s.trace_id == trace_id]
        named = by_name(trace)
        for name, kind in wanted.items():
            assert named[name].kind == kind, name
            assert named[name].service == service
        # The worker's SERVER span of the publish, and the sidecar's of the event.
        servers = [s for s in trace if s.name == "pubsub/pubsub/publish" and s.kind == "server"]
        assert len(servers) == 1
        assert named["events/pubsub/orders"].kind == "server"
        assert_one_tree(trace, caller_span)
        assert named["/spec.proto.runtime.v1.Runtime/PublishEvent"].parent_id == caller_span
        assert (
            got.metadata["traceparent"].split("-")[2]
            == named["/dapr.proto.runtime.v1.AppCallback/OnTopicEvent"].span_id
        )
        consumer = named["pubsub/orders"]
        assert consumer.attributes["messaging.destination.name"] == "orders"
        assert consumer.attributes["l8.outcome"] == "success"
        assert named["/dapr.proto.runtime.v1.AppCallback/OnTopicEvent"].attributes["l8.app_status"] == 0
    finally:
        await asyncio.to_thread(l8.stop)
        await server.stop()
    assert "Traceback" not in l8.log()


def http_get(url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_config_turns_tracing_on_over_otlp_http_for_http_calls_and_streams(
    nats_server: Server, receiver: Receiver, tmp_path: Path
) -> None:
    service = unique("traced-http")
    config = {
        "app": {"id": service},
        "namespace": unique("ns"),
        "bus": {"url": nats_server.url},
        "components": {
            "statestore": {"kind": "state", "type": "nats.kv"},
            "files": {"kind": "file", "type": "local.dir", "metadata": {"root": str(tmp_path / "files")}},
        },
        "tracing": {"enabled": True, "sampling": 1.0, "protocol": "http/protobuf",
                    "endpoint": f"http://127.0.0.1:{receiver.http_port}"},
    }  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")} | {"OTEL_BSP_SCHEDULE_DELAY": "100"}
    l8 = start_l8(config, cwd=tmp_path, env=env)
    try:
        header, trace_id, caller_span = traceparent()
        status, _ = http_get(f"http://127.0.0.1:{l8.http_port}/v1.0/state/statestore/k1", {"traceparent": header})
        assert status == 204
        # A stream (PutFile, GetFile) with tracing on works, and is a span of its own.
        stream_header, stream_trace, _ = traceparent()
        with grpc.insecure_channel(l8.grpc_address) as channel:
            stub = runtime_pb2_grpc.RuntimeStub(channel)
            traced = (("traceparent", stream_header),)
            stub.PutFile(iter([pb.PutFileRequest(store_name="files", name="a.txt", data=b"hello")]), metadata=traced)
            replies = stub.GetFile(pb.GetFileRequest(store_name="files", name="a.txt"), metadata=traced)
            got = b"".join(r.data for r in replies)
        assert got == b"hello"
        wanted = {"GET /v1.0/state/{store}/{key}", "state/statestore/get"}
        spans = receiver.wait_for(lambda s: wanted <= {x.name for x in s if x.trace_id == trace_id})
        trace = [s for s in spans if s.trace_id == trace_id]
        assert {(s.name, s.kind) for s in trace} == {
            ("GET /v1.0/state/{store}/{key}", "server"),
            ("state/statestore/get", "client"),
            ("state/statestore/get", "server"),
        }
        assert_one_tree(trace, caller_span)
        root = by_name(trace)["GET /v1.0/state/{store}/{key}"]
        assert root.attributes["http.route"] == "/v1.0/state/{store}/{key}"
        assert root.attributes["http.response.status_code"] == 204
        streams = receiver.wait_for(
            lambda s: (
                {"/spec.proto.runtime.v1.Runtime/PutFile", "/spec.proto.runtime.v1.Runtime/GetFile"}
                <= {x.name for x in s if x.trace_id == stream_trace}
            )
        )
        assert all(s.service == service for s in streams if s.trace_id == stream_trace)
        assert receiver.requests["http"] > 0
    finally:
        l8.stop()
    assert "Traceback" not in l8.log()


def test_tracing_is_off_by_default_and_a_zero_sampling_keeps_only_callers_sampled_traces(
    nats_server: Server, receiver: Receiver, tmp_path: Path
) -> None:
    base = {"namespace": unique("ns"), "bus": {"url": nats_server.url},
            "components": {"statestore": {"kind": "state", "type": "nats.kv"}}}  # fmt: skip
    quiet = unique("untraced")
    (tmp_path / "off").mkdir()
    (tmp_path / "on").mkdir()
    # The OTEL_* variables point at the receiver, but OTEL_SDK_DISABLED is not "false": off.
    env = otel_env(receiver)
    del env["OTEL_SDK_DISABLED"]
    off = start_l8({**base, "app": {"id": quiet}}, cwd=tmp_path / "off", env=env)
    sampled = unique("sampled")
    on = start_l8(
        {**base, "app": {"id": sampled}, "tracing": {"sampling": 0.0}}, cwd=tmp_path / "on", env=otel_env(receiver)
    )
    try:
        header, trace_id, _ = traceparent()
        for l8 in (off, on):
            assert (
                http_get(f"http://127.0.0.1:{l8.http_port}/v1.0/state/statestore/k", {"traceparent": header})[0] == 204
            )
            # No traceparent: a trace that starts in l8, sampled out at 0.0.
            assert http_get(f"http://127.0.0.1:{l8.http_port}/v1.0/state/statestore/k")[0] == 204
            assert http_get(f"http://127.0.0.1:{l8.http_port}/metrics")[0] == 404  # metrics are off too
        spans = receiver.wait_for(lambda s: any(x.service == sampled and x.trace_id == trace_id for x in s))
        # By the time the sampled sidecar's spans arrived, the other would have sent its own.
        receiver.wait_for(lambda s: len([x for x in s if x.service == sampled]) >= 3)
        spans = receiver.spans
        assert not [s for s in spans if s.service == quiet]
        assert {s.trace_id for s in spans if s.service == sampled} == {trace_id}
    finally:
        off.stop()
        on.stop()


def test_a_functions_host_calls_carry_the_trace_of_its_invocation(
    nats_server: Server, receiver: Receiver, tmp_path: Path
) -> None:
    from tests import wasm_modules

    module = wasm_modules.build_guests()["wat"]
    config = {
        "app": {"id": unique("fn-traced")},
        "namespace": unique("ns"),
        "bus": {"url": nats_server.url},
        "components": {"statestore": {"kind": "state", "type": "nats.kv"}},
        "functions": [{"name": "orders-fn", "module": str(module), "invoke": True, "allow": {"state": ["statestore"]}}],
    }
    l8 = start_l8(config, cwd=tmp_path, env=otel_env(receiver))
    try:
        header, trace_id, caller_span = traceparent()
        url = f"http://127.0.0.1:{l8.http_port}/v1.0/invoke/orders-fn/method/count"
        request = urllib.request.Request(url, data=b"customer-1", method="POST", headers={"traceparent": header})
        with urllib.request.urlopen(request, timeout=30) as r:
            assert r.status == 200
        wanted = {"CallLocal/orders-fn", "function/orders-fn", "state/statestore/get"}
        spans = receiver.wait_for(lambda s: wanted <= {x.name for x in s if x.trace_id == trace_id})
        trace = [s for s in spans if s.trace_id == trace_id]
        # The host call's bus hop (CLIENT) is a child of the function's span, its worker's a child of that.
        named = {(s.name, s.kind): s for s in trace}
        function = named[("function/orders-fn", "server")]
        assert named[("state/statestore/get", "client")].parent_id == function.span_id
        assert named[("state/statestore/get", "server")].parent_id == named[("state/statestore/get", "client")].span_id
        assert_one_tree(trace, caller_span)
    finally:
        l8.stop()
    assert "Traceback" not in l8.log()
