"""Service invocation: apps written with the Dapr SDK's ``App`` and their own l8 sidecars on one bus.

Each sidecar and each app is a subprocess, as users run them: ``alpha`` has one replica, ``beta``
two. The callers are the Dapr SDK (in a subprocess, over HTTP and over gRPC) and the native API.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from handlers.proto import runtime_pb2 as pb
from handlers.proto import runtime_pb2_grpc
from tests.conftest import unique
from tests.process import L8Process, start_l8
from tests.servers import Server, free_port, stop_pid, wait_port

HERE = Path(__file__).parent
APP = HERE / "apps" / "echo_app.py"
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


@dataclass
class Replica:
    app_id: str
    sidecar: L8Process
    app: subprocess.Popen[bytes]

    @property
    def pid(self) -> int:
        return self.app.pid


def start_replica(nats_server: Server, namespace: str, app_id: str) -> Replica:
    app_port = free_port()
    config = {"app": {"id": app_id}, "namespace": namespace, "bus": {"url": nats_server.url}, "components": {}}
    # The sidecar comes first and reaches its app lazily, as when l8 starts before the app.
    sidecar = start_l8(config, "--app-port", str(app_port))
    env = {
        **os.environ,
        "APP_ID": app_id,
        "APP_PORT": str(app_port),
        "DAPR_HTTP_PORT": str(sidecar.http_port),
        "DAPR_GRPC_PORT": str(sidecar.grpc_port),
        "DAPR_HEALTH_TIMEOUT": "20",
    }
    with open(sidecar.cwd / "app.log", "wb") as log:
        app = subprocess.Popen([sys.executable, str(APP)], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_port(app_port, timeout=30, proc=app)
    except BaseException:
        stop_pid(app)
        sidecar.stop()
        raise
    return Replica(app_id, sidecar, app)


@dataclass
class Apps:
    namespace: str
    alpha: Replica
    betas: list[Replica]

    @property
    def beta(self) -> str:
        return self.betas[0].app_id


@pytest.fixture(scope="module")
def apps(nats_server: Server) -> Iterator[Apps]:
    namespace = unique("ns")
    alpha_id, beta_id = unique("alpha"), unique("beta")
    started: list[Replica] = []
    try:
        started.append(start_replica(nats_server, namespace, alpha_id))
        started.extend(start_replica(nats_server, namespace, beta_id) for _ in range(2))
        yield Apps(namespace, started[0], started[1:])
    finally:
        for replica in started:
            stop_pid(replica.app)
            assert replica.sidecar.stop() == 0, replica.sidecar.log()


def dapr_invoke(sidecar: L8Process, calls: list[dict[str, Any]], protocol: str = "http") -> list[dict[str, Any]]:
    env = {
        **os.environ,
        "DAPR_GRPC_PORT": str(sidecar.grpc_port),
        "DAPR_HTTP_PORT": str(sidecar.http_port),
        "DAPR_HEALTH_TIMEOUT": "20",
        "DAPR_API_METHOD_INVOCATION_PROTOCOL": protocol,
    }
    out = subprocess.run(
        [sys.executable, str(HERE / "dapr_invoke_client.py"), json.dumps(calls)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    line = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULTS ")][-1]
    results: list[dict[str, Any]] = json.loads(line.removeprefix("RESULTS "))
    return results


def native(sidecar: L8Process) -> tuple[grpc.aio.Channel, runtime_pb2_grpc.RuntimeStub]:
    # grpc.aio, as the in-process tests use: sync and aio gRPC in one process do not mix well.
    channel = grpc.aio.insecure_channel(sidecar.grpc_address)
    return channel, runtime_pb2_grpc.RuntimeStub(channel)


def invoke_request(app_id: str, method: str, data: bytes = b"", content_type: str = "") -> pb.InvokeServiceRequest:
    message = pb.CommonInvokeRequest(method=method, content_type=content_type)
    message.data.value = data
    return pb.InvokeServiceRequest(id=app_id, message=message)


async def expect_code(code: grpc.StatusCode, fn: Any, *args: Any, **kwargs: Any) -> str:
    kwargs.setdefault("timeout", 30)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await fn(*args, **kwargs)
    assert info.value.code() == code, (info.value.code(), info.value.details())
    return info.value.details() or ""


def http(sidecar: L8Process, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None) -> Any:
    req = urllib.request.Request(
        f"http://127.0.0.1:{sidecar.http_port}{path}", data=body or None, method=method, headers=headers or {}
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, resp.headers, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read()


def test_two_apps_call_each_other_with_dapr_sdk_invoke_method_over_http(apps: Apps) -> None:
    alpha = apps.alpha.app_id
    results = dapr_invoke(
        apps.alpha.sidecar,
        [
            {
                "app": apps.beta,
                "method": "echo",
                "data": "hello",
                "content_type": "text/plain",
                "metadata": [["x-order", "42"]],
            },
            {"app": apps.beta, "method": "relay", "data": json.dumps({"app": alpha, "method": "echo", "data": "back"})},
            {"app": apps.beta, "method": "echo", "data": "posted", "verb": "POST", "query": [["q", "1"]]},
        ],
    )
    assert all(r["ok"] for r in results), results
    echoed = json.loads(results[0]["text"])
    assert echoed["app"] == apps.beta
    assert echoed["data"] == "hello"
    assert echoed["content_type"] == "text/plain"
    assert results[0]["content_type"] == "application/json"
    assert echoed["metadata"]["dapr-caller-app-id"] == [alpha]
    assert echoed["metadata"]["dapr-callee-app-id"] == [apps.beta]
    assert echoed["metadata"]["x-order"] == ["42"]  # a header of the HTTP call

    relayed = json.loads(results[1]["text"])
    assert relayed["via"] == apps.beta
    assert relayed["answer"]["app"] == alpha
    assert relayed["answer"]["data"] == "back"
    assert relayed["answer"]["metadata"]["dapr-caller-app-id"] == [apps.beta]
    assert json.loads(results[2]["text"])["data"] == "posted"


def test_two_apps_call_each_other_with_dapr_sdk_invoke_method_over_grpc(apps: Apps) -> None:
    alpha = apps.alpha.app_id
    relay = {"app": alpha, "method": "echo", "data": "back", "protocol": "grpc"}
    results = dapr_invoke(
        apps.alpha.sidecar,
        [
            {
                "app": apps.beta,
                "method": "echo",
                "data": "hello",
                "content_type": "text/plain",
                "metadata": [["x-order", "43"]],
            },
            {"app": apps.beta, "method": "relay", "data": json.dumps(relay)},
        ],
        protocol="grpc",
    )
    assert all(r["ok"] for r in results), results
    echoed = json.loads(results[0]["text"])
    assert (echoed["app"], echoed["data"], echoed["content_type"]) == (apps.beta, "hello", "text/plain")
    assert echoed["metadata"]["dapr-caller-app-id"] == [alpha]
    assert echoed["metadata"]["x-order"] == ["43"]  # gRPC metadata of the call
    assert results[0]["content_type"] == "application/json"
    relayed = json.loads(results[1]["text"])
    assert (relayed["via"], relayed["protocol"]) == (apps.beta, "grpc")
    assert relayed["answer"]["app"] == alpha
    assert relayed["answer"]["metadata"]["dapr-caller-app-id"] == [apps.beta]


def test_app_errors_come_back_with_their_code_and_message_through_the_dapr_sdk(apps: Apps) -> None:
    ghost = unique("ghost")
    calls = [
        {"app": apps.beta, "method": "fail", "data": "kaput"},
        {"app": apps.beta, "method": "no-such-method"},
        {"app": ghost, "method": "echo"},
    ]
    over_http = dapr_invoke(apps.alpha.sidecar, calls)
    assert [r.get("status") for r in over_http] == [500, 501, 503], over_http
    assert "boom: kaput" in over_http[0]["message"]
    assert "no-such-method" in over_http[1]["message"]
    assert ghost in over_http[2]["message"]

    over_grpc = dapr_invoke(apps.alpha.sidecar, calls, protocol="grpc")
    assert [r.get("code") for r in over_grpc] == ["UNKNOWN", "UNIMPLEMENTED", "UNAVAILABLE"], over_grpc
    assert "boom: kaput" in over_grpc[0]["message"]
    assert f"no sidecar of app {ghost!r} answers" in over_grpc[2]["message"]


async def test_native_invoke_service_reaches_the_app_with_caller_id_traceparent_and_metadata(apps: Apps) -> None:
    channel, stub = native(apps.alpha.sidecar)
    async with channel:
        call = stub.InvokeService(
            invoke_request(apps.beta, "echo", b'{"n": 1}', "application/json"),
            metadata=(("traceparent", TRACEPARENT), ("x-tenant", "acme"), ("x-blob-bin", b"\x00\x01")),
            timeout=30,
        )
        resp = await call
        answered = await call.initial_metadata()
    assert resp.content_type == "application/json"
    echoed = json.loads(resp.data.value)
    assert echoed["data"] == '{"n": 1}'
    assert echoed["content_type"] == "application/json"
    meta = echoed["metadata"]
    assert meta["dapr-caller-app-id"] == [apps.alpha.app_id]
    assert meta["traceparent"] == [TRACEPARENT]
    assert meta["x-tenant"] == ["acme"]
    assert meta["x-blob-bin"] == ["0001"]
    assert ("x-echo-app", apps.beta) in tuple(answered)


async def test_dapr_invoke_service_and_native_invoke_service_carry_the_same_bytes(apps: Apps) -> None:
    from dapr.proto.common.v1 import common_pb2
    from dapr.proto.runtime.v1 import dapr_pb2_grpc, invoke_pb2

    request = invoke_pb2.InvokeServiceRequest(
        id=apps.beta, message=common_pb2.InvokeRequest(method="echo", content_type="text/plain")
    )
    request.message.data.value = b"from dapr"
    native_request = invoke_request(apps.beta, "echo", b"from dapr", "text/plain")
    assert request.SerializeToString() == native_request.SerializeToString()
    # The verbs of the HTTP extension and the response have the same numbers in both protos.
    assert dict(pb.HTTPExtension.Verb.items()) == dict(common_pb2.HTTPExtension.Verb.items())
    ext = pb.HTTPExtension(verb=pb.HTTPExtension.PATCH, querystring="a=1")
    assert common_pb2.HTTPExtension.FromString(ext.SerializeToString()).querystring == "a=1"
    answer = common_pb2.InvokeResponse(content_type="text/csv")
    answer.data.value = b"a,b"
    assert pb.InvokeResponse.FromString(answer.SerializeToString()) == pb.InvokeResponse(
        data=answer.data, content_type="text/csv"
    )
    async with grpc.aio.insecure_channel(apps.alpha.sidecar.grpc_address) as channel:
        resp = await dapr_pb2_grpc.DaprStub(channel).InvokeService(request, timeout=30)
    assert isinstance(resp, common_pb2.InvokeResponse)
    assert json.loads(resp.data.value)["data"] == "from dapr"


async def test_replicas_of_one_app_share_the_invocations(apps: Apps) -> None:
    expected = {r.pid for r in apps.betas}
    seen: set[int] = set()
    channel, stub = native(apps.alpha.sidecar)
    async with channel:
        for _ in range(200):
            resp = await stub.InvokeService(invoke_request(apps.beta, "echo"), timeout=30)
            seen.add(json.loads(resp.data.value)["pid"])
            if seen == expected:
                break
    assert seen == expected


async def test_app_errors_come_back_with_their_code_and_message_through_the_native_api(apps: Apps) -> None:
    channel, stub = native(apps.alpha.sidecar)
    async with channel:
        message = await expect_code(
            grpc.StatusCode.UNKNOWN, stub.InvokeService, invoke_request(apps.beta, "fail", b"x")
        )
        assert "boom: x" in message
        await expect_code(grpc.StatusCode.UNIMPLEMENTED, stub.InvokeService, invoke_request(apps.beta, "no-such"))
        # An app answering with no data is a success with empty data.
        assert await stub.InvokeService(invoke_request(apps.beta, "empty"), timeout=30) == pb.InvokeResponse()


async def test_a_slow_app_fails_with_deadline_exceeded_at_the_callers_deadline(apps: Apps) -> None:
    channel, stub = native(apps.alpha.sidecar)
    async with channel:
        began = time.monotonic()
        await expect_code(
            grpc.StatusCode.DEADLINE_EXCEEDED,
            stub.InvokeService,
            invoke_request(apps.beta, "slow", b"60"),
            timeout=1.0,
        )
        # Far below the app's 60 s: the caller's deadline ended the call, not the app.
        assert time.monotonic() - began < 30
        # The replicas still answer.
        answer = await stub.InvokeService(invoke_request(apps.beta, "echo"), timeout=30)
        assert answer.content_type == "application/json"


async def test_invoking_an_app_with_no_running_replica_is_unavailable_naming_the_app(apps: Apps) -> None:
    ghost = unique("ghost")
    channel, stub = native(apps.alpha.sidecar)
    async with channel:
        message = await expect_code(grpc.StatusCode.UNAVAILABLE, stub.InvokeService, invoke_request(ghost, "echo"))
    assert f"app {ghost!r}" in message
    status, _, body = http(apps.alpha.sidecar, "GET", f"/v1.0/invoke/{ghost}/method/echo")
    assert status == 503
    assert ghost in json.loads(body)["message"]


async def test_bad_invocations_are_invalid_argument_saying_what_is_wrong(apps: Apps) -> None:
    channel, stub = native(apps.alpha.sidecar)
    async with channel:
        message = await expect_code(grpc.StatusCode.INVALID_ARGUMENT, stub.InvokeService, invoke_request("", "echo"))
        assert "app id is empty" in message
        message = await expect_code(grpc.StatusCode.INVALID_ARGUMENT, stub.InvokeService, invoke_request(apps.beta, ""))
        assert "method name is empty" in message
        message = await expect_code(grpc.StatusCode.INVALID_ARGUMENT, stub.InvokeService, invoke_request("a.*", "echo"))
        assert "'a.*'" in message
        raw = channel.unary_unary("/spec.proto.runtime.v1.Runtime/InvokeService")
        message = await expect_code(grpc.StatusCode.INVALID_ARGUMENT, raw, b"\x0a\x05ab", timeout=30)
        assert "not a valid InvokeServiceRequest" in message
    for path, what in [
        ("/v1.0/invoke//method/echo", "app id is empty"),
        (f"/v1.0/invoke/{apps.beta}/method/", "method name is empty"),
        (f"/v1.0/invoke/{apps.beta}/echo", "is not /v1.0/invoke/"),
    ]:
        status, _, body = http(apps.alpha.sidecar, "POST", path, b"{}")
        assert status == 400, (path, body)
        assert what in json.loads(body)["message"]


async def test_the_sidecar_of_an_app_stops_cleanly_with_invocations_configured(nats_server: Server) -> None:
    replica = start_replica(nats_server, unique("ns"), unique("solo"))
    try:
        channel, stub = native(replica.sidecar)
        async with channel:
            resp = await stub.InvokeService(invoke_request(replica.app_id, "echo", b"self"), timeout=30)
        assert json.loads(resp.data.value)["data"] == "self"
    finally:
        stop_pid(replica.app)
        assert replica.sidecar.stop(signal.SIGINT) == 0, replica.sidecar.log()
