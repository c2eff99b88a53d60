"""One request never takes l8 out of service: oversized names and keys, bytes that are no message,
out-of-range numbers all answer INVALID_ARGUMENT with a short message, and l8 keeps serving."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from handlers import limits
from handlers.proto import runtime_pb2 as pb
from runtime.sidecar import Sidecar
from tests.conftest import native_stub, sidecar_config
from tests.servers import Server

HUGE = "k" * 5000  # past nats-server's 4 KiB control line once it is in a subject
COMPONENTS = {
    "statestore": {"kind": "state", "type": "nats.kv"},
    "lockstore": {"kind": "lock", "type": "nats.kv"},
    "sequencer": {"kind": "sequencer", "type": "nats.kv"},
    "configstore": {"kind": "configuration", "type": "nats.kv"},
    "pubsub": {"kind": "pubsub", "type": "nats.jetstream"},
}


@pytest.fixture(scope="module", params=[True, False], ids=["local dispatch", "through the bus"])
async def sidecar(request: pytest.FixtureRequest, nats_server: Server) -> AsyncIterator[Sidecar]:
    config = sidecar_config(nats_server.url, COMPONENTS, bus={"url": nats_server.url, "local_dispatch": request.param})
    sidecar = Sidecar(config)
    await sidecar.start()
    yield sidecar
    await sidecar.stop()


@pytest.fixture
async def stub(sidecar: Sidecar) -> AsyncIterator[Any]:
    channel, stub = native_stub(sidecar)
    yield stub
    await channel.close()


async def refused(call: Any, *needles: str) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT, info.value.details()
    details = info.value.details() or ""
    assert len(details) < 400, f"the error echoes the input: {len(details)} characters"
    for needle in needles:
        assert needle in details
    return details


async def still_serves(sidecar: Sidecar, stub: Any) -> None:
    await stub.SaveState(pb.SaveStateRequest(store_name="statestore", states=[pb.StateItem(key="ok", value=b"1")]))
    assert (await stub.GetState(pb.GetStateRequest(store_name="statestore", key="ok"))).data == b"1"
    assert sidecar.bus is not None and sidecar.bus.connected and sidecar.bus.reopened == 0
    assert sidecar.health.ready


async def test_oversized_keys_names_topics_and_app_ids_answer_invalid_argument_and_l8_keeps_serving(
    sidecar: Sidecar, stub: Any
) -> None:
    weak, strong = pb.SequencerOptions(increment=pb.SequencerOptions.WEAK), pb.SequencerOptions(increment=1)
    calls = [
        stub.GetState(pb.GetStateRequest(store_name="statestore", key=HUGE)),
        stub.SaveState(pb.SaveStateRequest(store_name="statestore", states=[pb.StateItem(key=HUGE, value=b"x")])),
        stub.DeleteState(pb.DeleteStateRequest(store_name="statestore", key=HUGE)),
        stub.GetBulkState(pb.GetBulkStateRequest(store_name="statestore", keys=["a", HUGE])),
        stub.GetState(pb.GetStateRequest(store_name=HUGE, key="a")),
        stub.TryLock(pb.TryLockRequest(store_name="lockstore", resource_id=HUGE, lock_owner="o", expire=5)),
        stub.TryLock(pb.TryLockRequest(store_name="lockstore", resource_id="r", lock_owner=HUGE, expire=5)),
        stub.Unlock(pb.UnlockRequest(store_name="lockstore", resource_id=HUGE, lock_owner="o")),
        stub.GetNextId(pb.GetNextIdRequest(store_name="sequencer", key=HUGE, options=weak)),
        stub.GetNextId(pb.GetNextIdRequest(store_name="sequencer", key=HUGE, options=strong)),
        stub.PublishEvent(pb.PublishEventRequest(pubsub_name="pubsub", topic=HUGE, data=b"{}")),
        stub.GetConfiguration(pb.GetConfigurationRequest(store_name="configstore", keys=[HUGE])),
        stub.GetConfiguration(pb.GetConfigurationRequest(store_name="configstore", group=HUGE)),
        stub.SaveConfiguration(
            pb.SaveConfigurationRequest(store_name="configstore", items=[pb.ConfigurationItem(key=HUGE, content="c")])
        ),
    ]
    for call in calls:
        await refused(call)
        await still_serves(sidecar, stub)
    invoke = pb.InvokeServiceRequest(id=HUGE, message=pb.CommonInvokeRequest(method="m"))
    await refused(stub.InvokeService(invoke), "at most 128")
    await still_serves(sidecar, stub)


async def test_out_of_range_numbers_and_counts_answer_invalid_argument(sidecar: Sidecar, stub: Any) -> None:
    for ttl in ("99999999999999999999", str(limits.TTL_SECONDS + 1), "0", "1.5", "--5"):
        item = pb.StateItem(key="t", value=b"x", metadata={"ttlInSeconds": ttl})
        await refused(stub.SaveState(pb.SaveStateRequest(store_name="statestore", states=[item])), "ttlInSeconds")
        publish = pb.PublishEventRequest(pubsub_name="pubsub", topic="t", data=b"{}", metadata={"ttlInSeconds": ttl})
        await refused(stub.PublishEvent(publish), "ttlInSeconds")
    assert (await stub.GetState(pb.GetStateRequest(store_name="statestore", key="t"))).data == b""
    tags = {f"t{i}": "v" for i in range(limits.MAP_ENTRIES + 1)}
    item = pb.ConfigurationItem(key="c", content="v", tags=tags)
    await refused(stub.SaveConfiguration(pb.SaveConfigurationRequest(store_name="configstore", items=[item])), "tags")
    many = [f"k{i}" for i in range(limits.BULK + 1)]
    await refused(stub.GetBulkState(pb.GetBulkStateRequest(store_name="statestore", keys=many)), "keys")
    expire = pb.TryLockRequest(
        store_name="lockstore", resource_id="r", lock_owner="o", expire=limits.LOCK_EXPIRE_SECONDS + 1
    )
    await refused(stub.TryLock(expire), "expire")
    await still_serves(sidecar, stub)


# store_name "statestore" (field 1), then bytes that are no valid message
GARBAGE = {
    "truncated": b"\x0a\x0astatestore\x12\x20ab",
    "bad wire type": b"\x0a\x0astatestore\x17\x01",
    "not UTF-8": b"\x0a\x0astatestore\x12\x02\xff\xfe",
}
RPCS = ["GetState", "SaveState", "DeleteState", "GetBulkState", "DeleteBulkState", "ExecuteStateTransaction"]


@pytest.mark.parametrize("garbage", sorted(GARBAGE))
async def test_bytes_that_are_no_message_after_a_valid_store_name_answer_invalid_argument_logged_once_at_debug(
    sidecar: Sidecar, stub: Any, garbage: str, caplog: pytest.LogCaptureFixture
) -> None:
    assert sidecar.grpc is not None
    caplog.set_level(logging.DEBUG, logger="l8")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{sidecar.grpc.port}") as channel:
        for rpc in RPCS:
            call = channel.unary_unary(f"/spec.proto.runtime.v1.Runtime/{rpc}")(GARBAGE[garbage])
            await refused(call)
    loud = [r for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info]
    assert not loud, [r.getMessage() for r in loud]
    await still_serves(sidecar, stub)


def test_the_readme_lists_every_limit_of_the_table_with_its_value() -> None:
    from pathlib import Path

    readme = (Path(__file__).parent.parent / "README.md").read_text()
    for name, (value, unit, _what) in limits.TABLE.items():
        assert f"| `{name}` | {value} {unit} |" in readme, name
