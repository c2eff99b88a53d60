"""SayHello and Lifecycle.ApplyConfiguration on the hello component, Layotto's demo."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest
from google.protobuf import any_pb2

from handlers.proto import lifecycle_pb2, lifecycle_pb2_grpc, runtime_pb2_grpc
from handlers.proto import runtime_pb2 as pb
from runtime.config import load_config
from tests.conftest import SidecarFactory, sidecar_config
from tests.servers import Server

COMPONENTS = {
    "helloworld": {"kind": "hello", "type": "helloworld"},
    "polite": {"kind": "hello", "type": "helloworld", "metadata": {"hello": "good day"}},
    "statestore": {"kind": "state", "type": "nats.kv"},
}


@pytest.fixture
async def stubs(
    nats_server: Server, make_sidecar: SidecarFactory
) -> AsyncIterator[tuple[runtime_pb2_grpc.RuntimeStub, lifecycle_pb2_grpc.LifecycleStub]]:
    sidecar = await make_sidecar(sidecar_config(nats_server.url, COMPONENTS))
    assert sidecar.grpc is not None
    async with grpc.aio.insecure_channel(f"127.0.0.1:{sidecar.grpc.port}") as channel:
        yield runtime_pb2_grpc.RuntimeStub(channel), lifecycle_pb2_grpc.LifecycleStub(channel)


def apply_request(kind: str, name: str, **metadata: str) -> lifecycle_pb2.DynamicConfiguration:
    return lifecycle_pb2.DynamicConfiguration(
        component_config=lifecycle_pb2.ComponentConfig(kind=kind, name=name, metadata=metadata)
    )


def test_the_default_config_has_layottos_helloworld_component() -> None:
    component = load_config().components["helloworld"]
    assert (component.kind, component.type) == ("hello", "helloworld")


async def test_say_hello_answers_the_greeting_for_a_name_and_echoes_the_data(
    stubs: tuple[runtime_pb2_grpc.RuntimeStub, lifecycle_pb2_grpc.LifecycleStub],
) -> None:
    runtime, _ = stubs
    assert (await runtime.SayHello(pb.SayHelloRequest(service_name="helloworld"))).hello == "greetings"
    assert (await runtime.SayHello(pb.SayHelloRequest(service_name="polite", name="Ada"))).hello == "good day, Ada"
    data = any_pb2.Any(type_url="x/bytes", value=b"\x00" * 1000)
    assert (await runtime.SayHello(pb.SayHelloRequest(service_name="helloworld", data=data))).data == data


async def test_say_hello_to_an_unknown_service_is_invalid_and_lists_the_hello_components(
    stubs: tuple[runtime_pb2_grpc.RuntimeStub, lifecycle_pb2_grpc.LifecycleStub],
) -> None:
    runtime, _ = stubs
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await runtime.SayHello(pb.SayHelloRequest(service_name="nobody"))
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "hello component 'nobody' is not configured; configured: helloworld, polite" in (info.value.details() or "")


async def test_apply_configuration_changes_the_greeting_of_that_component_only(
    stubs: tuple[runtime_pb2_grpc.RuntimeStub, lifecycle_pb2_grpc.LifecycleStub],
) -> None:
    runtime, lifecycle = stubs
    await lifecycle.ApplyConfiguration(apply_request("hellos", "helloworld", hello="hi"))  # Layotto's section name
    assert (await runtime.SayHello(pb.SayHelloRequest(service_name="helloworld", name="Bo"))).hello == "hi, Bo"
    assert (await runtime.SayHello(pb.SayHelloRequest(service_name="polite"))).hello == "good day"
    await lifecycle.ApplyConfiguration(apply_request("hello", "helloworld"))  # a full config: back to the default
    assert (await runtime.SayHello(pb.SayHelloRequest(service_name="helloworld"))).hello == "greetings"


@pytest.mark.parametrize(
    ("request_", "code", "says"),
    [
        # Other kinds are rebuilt with the new metadata (runtime/reload.py); one it cannot start with is refused.
        (
            apply_request("state", "statestore", keyPrefix="a||b"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "configuration stays",
        ),
        (apply_request("bogus", "helloworld"), grpc.StatusCode.INVALID_ARGUMENT, "is not a kind l8 knows"),
        (apply_request("hellos", "nobody"), grpc.StatusCode.INVALID_ARGUMENT, "'nobody' is not configured"),
        (apply_request("hellos", ""), grpc.StatusCode.INVALID_ARGUMENT, "name is empty"),
        (apply_request("hellos", "helloworld", colour="red"), grpc.StatusCode.INVALID_ARGUMENT, "only metadata"),
        (apply_request("hellos", "helloworld", hello="x" * 2000), grpc.StatusCode.INVALID_ARGUMENT, "at most 1024"),
    ],
    ids=["state", "kind", "unknown", "empty", "metadata", "long"],
)
async def test_a_bad_apply_configuration_says_what_is_wrong_and_changes_nothing(
    stubs: tuple[runtime_pb2_grpc.RuntimeStub, lifecycle_pb2_grpc.LifecycleStub],
    request_: lifecycle_pb2.DynamicConfiguration,
    code: grpc.StatusCode,
    says: str,
) -> None:
    runtime, lifecycle = stubs
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await lifecycle.ApplyConfiguration(request_)
    assert info.value.code() is code
    assert says in (info.value.details() or "")
    assert (await runtime.SayHello(pb.SayHelloRequest(service_name="helloworld"))).hello == "greetings"
