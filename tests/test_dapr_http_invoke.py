"""Dapr's HTTP invoke route: the method normalised as daprd does before it reaches the app, and a
reply that is a packed protobuf message answered as ``application/x-protobuf``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from dapr.proto.common.v1 import common_pb2
from dapr.proto.runtime.v1 import appcallback_pb2_grpc
from google.protobuf import any_pb2

from runtime.sidecar import Sidecar
from tests.conftest import sidecar_config, unique
from tests.http_client import request
from tests.servers import Server


class App(appcallback_pb2_grpc.AppCallbackServicer):  # type: ignore[misc]
    def __init__(self) -> None:
        self.methods: list[str] = []

    async def OnInvoke(self, req: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        self.methods.append(req.method)
        resp = common_pb2.InvokeResponse()
        if req.method == "proto":
            resp.data.Pack(common_pb2.StateItem(key="packed", value=b"v"))
        else:
            resp.content_type = "text/plain"
            resp.data.value = req.method.encode()
        return resp


@pytest.fixture(scope="module")
async def env(nats_server: Server) -> AsyncIterator[tuple[Sidecar, App]]:
    server = grpc.aio.server()
    app = App()
    appcallback_pb2_grpc.add_AppCallbackServicer_to_server(app, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    app_id = unique("target")
    sidecar = Sidecar(sidecar_config(nats_server.url, {}, app={"id": app_id, "callback": f"127.0.0.1:{port}"}))
    await sidecar.start()
    yield sidecar, app
    await sidecar.stop()
    await server.stop(None)


async def call(sidecar: Sidecar, method_path: str, verb: str = "POST") -> Any:
    assert sidecar.http is not None
    return await request(sidecar.http.port, verb, f"/v1.0/invoke/{sidecar.config.app.id}/method/{method_path}", "x")


@pytest.mark.parametrize(
    ("sent", "app_sees"),
    [
        ("orders/42", "orders/42"),
        ("a/../b", "b"),
        ("../../etc/passwd", "etc/passwd"),
        ("a/./b//c/", "a/b/c/"),
        ("a%2F..%2Fb", "b"),
        ("dir%2Ffile", "dir/file"),
        ("%2E%2E/x", "x"),
    ],
)
async def test_the_method_is_decoded_and_cleaned_before_it_reaches_the_app(
    env: tuple[Sidecar, App], sent: str, app_sees: str
) -> None:
    sidecar, app = env
    answer = await call(sidecar, sent)
    assert answer.status == 200, answer.body
    assert app.methods[-1] == app_sees and answer.body == app_sees.encode()


@pytest.mark.parametrize(
    "sent", ["a%00b", "a%0Db", "a%0Ab", "a%23b", "a%3Fb", "%2E%2E"], ids=["nul", "cr", "lf", "hash", "query", "dots"]
)
async def test_a_method_with_control_characters_or_url_syntax_never_reaches_the_app(
    env: tuple[Sidecar, App], sent: str
) -> None:
    sidecar, app = env
    before = len(app.methods)
    answer = await call(sidecar, sent)
    assert answer.status == 400 and answer.json()["errorCode"] in ("ERR_MALFORMED_REQUEST", "ERR_DIRECT_INVOKE")
    assert len(app.methods) == before


async def test_a_packed_protobuf_reply_answers_application_x_protobuf(env: tuple[Sidecar, App]) -> None:
    sidecar, _ = env
    answer = await call(sidecar, "proto", "GET")
    assert answer.status == 200 and answer.headers["content-type"] == "application/x-protobuf"
    packed = any_pb2.Any.FromString(answer.body)
    item = common_pb2.StateItem()
    assert packed.Unpack(item) and item.key == "packed"
