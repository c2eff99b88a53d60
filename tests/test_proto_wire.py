"""The native state messages are wire-compatible with Dapr's, so the Dapr front forwards bytes."""

from __future__ import annotations

from dapr.proto.common.v1 import common_pb2
from dapr.proto.runtime.v1 import lock_pb2, state_pb2

from handlers.proto import appcallback_pb2, lifecycle_pb2
from handlers.proto import runtime_pb2 as pb
from runtime.routing import string_field


def test_dapr_state_requests_read_as_native_ones() -> None:
    item = common_pb2.StateItem(key="k", value=b"v", etag=common_pb2.Etag(value="7"), metadata={"ttlInSeconds": "5"})
    item.options.concurrency = common_pb2.StateOptions.CONCURRENCY_FIRST_WRITE
    save = state_pb2.SaveStateRequest(store_name="s", states=[item])
    native = pb.SaveStateRequest.FromString(save.SerializeToString())
    assert native.store_name == "s"
    got = native.states[0]
    assert (got.key, got.value, got.etag.value, dict(got.metadata)) == ("k", b"v", "7", {"ttlInSeconds": "5"})
    assert got.options.concurrency == pb.StateOptions.CONCURRENCY_FIRST_WRITE

    get = state_pb2.GetStateRequest(store_name="s", key="k", metadata={"a": "b"})
    assert pb.GetStateRequest.FromString(get.SerializeToString()) == pb.GetStateRequest(
        store_name="s", key="k", metadata={"a": "b"}
    )

    tx = state_pb2.ExecuteStateTransactionRequest(
        storeName="s", operations=[state_pb2.TransactionalStateOperation(operationType="upsert", request=item)]
    )
    native_tx = pb.ExecuteStateTransactionRequest.FromString(tx.SerializeToString())
    assert native_tx.storeName == "s" and native_tx.operations[0].operationType == "upsert"

    bulk = state_pb2.GetBulkStateRequest(store_name="s", keys=["a", "b"], parallelism=3)
    assert list(pb.GetBulkStateRequest.FromString(bulk.SerializeToString()).keys) == ["a", "b"]

    delete = state_pb2.DeleteStateRequest(store_name="s", key="k", etag=common_pb2.Etag(value="3"))
    assert pb.DeleteStateRequest.FromString(delete.SerializeToString()).etag.value == "3"


def test_native_state_responses_read_as_dapr_ones() -> None:
    resp = pb.GetStateResponse(data=b"d", etag="9", metadata={"ttlExpireTime": "x"})
    dapr = state_pb2.GetStateResponse.FromString(resp.SerializeToString())
    assert (dapr.data, dapr.etag, dict(dapr.metadata)) == (b"d", "9", {"ttlExpireTime": "x"})
    bulk = pb.GetBulkStateResponse(items=[pb.BulkStateItem(key="k", data=b"d", etag="1", error="e")])
    item = state_pb2.GetBulkStateResponse.FromString(bulk.SerializeToString()).items[0]
    assert (item.key, item.data, item.etag, item.error) == ("k", b"d", "1", "e")


def test_dapr_lock_messages_and_statuses_are_the_native_ones_on_the_wire() -> None:
    try_lock = lock_pb2.TryLockRequest(store_name="s", resource_id="r", lock_owner="o", expiry_in_seconds=7)
    assert pb.TryLockRequest.FromString(try_lock.SerializeToString()) == pb.TryLockRequest(
        store_name="s", resource_id="r", lock_owner="o", expire=7
    )
    unlock = lock_pb2.UnlockRequest(store_name="s", resource_id="r", lock_owner="o")
    assert pb.UnlockRequest.FromString(unlock.SerializeToString()) == pb.UnlockRequest(
        store_name="s", resource_id="r", lock_owner="o"
    )
    assert lock_pb2.TryLockResponse.FromString(pb.TryLockResponse(success=True).SerializeToString()).success
    statuses = {
        pb.UnlockResponse.SUCCESS: lock_pb2.UnlockResponse.SUCCESS,
        pb.UnlockResponse.LOCK_UNEXIST: lock_pb2.UnlockResponse.LOCK_DOES_NOT_EXIST,
        pb.UnlockResponse.LOCK_BELONG_TO_OTHERS: lock_pb2.UnlockResponse.LOCK_BELONGS_TO_OTHERS,
        pb.UnlockResponse.INTERNAL_ERROR: lock_pb2.UnlockResponse.INTERNAL_ERROR,
    }
    for native, dapr in statuses.items():
        wire = pb.UnlockResponse(status=native).SerializeToString()
        assert lock_pb2.UnlockResponse.FromString(wire).status == dapr


def test_routing_reads_the_store_name_without_decoding() -> None:
    req = pb.GetStateRequest(store_name="statestore", key="k" * 300, metadata={"a": "b"})
    assert string_field(req.SerializeToString(), 1) == "statestore"
    long_name = pb.GetStateRequest(store_name="s" * 200, key="k")
    assert string_field(long_name.SerializeToString(), 1) == "s" * 200
    assert string_field(pb.GetStateRequest(key="k").SerializeToString(), 1) == ""
    reordered = pb.GetStateRequest(key="k").SerializeToString() + pb.GetStateRequest(store_name="x").SerializeToString()
    assert string_field(reordered, 1) == "x"


# The rpcs of Layotto's spec.proto.runtime.v1.Runtime (mosn/layotto f9681450) with their streaming:
# (client streams, server streams). A Layotto client calls exactly these paths.
LAYOTTO_RUNTIME_RPCS = {
    **dict.fromkeys(
        [
            "SayHello",
            "InvokeService",
            "GetConfiguration",
            "SaveConfiguration",
            "DeleteConfiguration",
            "TryLock",
            "Unlock",
            "LockKeepAlive",
            "GetNextId",
            "GetState",
            "GetBulkState",
            "SaveState",
            "DeleteState",
            "DeleteBulkState",
            "ExecuteStateTransaction",
            "PublishEvent",
            "ListFile",
            "DelFile",
            "GetFileMeta",
            "InvokeBinding",
            "GetSecret",
            "GetBulkSecret",
        ],
        (False, False),
    ),
    "SubscribeConfiguration": (True, True),
    "SubscribeTopicEvents": (True, True),
    "GetFile": (False, True),
    "PutFile": (True, False),
}


def test_the_native_service_is_layottos_runtime_with_its_rpcs_and_l8s_extension_only() -> None:
    service = pb.DESCRIPTOR.services_by_name["Runtime"]
    assert service.full_name == "spec.proto.runtime.v1.Runtime"
    rpcs = {m.name: (m.client_streaming, m.server_streaming) for m in service.methods}
    assert {name: rpcs.get(name) for name in LAYOTTO_RUNTIME_RPCS} == LAYOTTO_RUNTIME_RPCS
    assert set(rpcs) - set(LAYOTTO_RUNTIME_RPCS) == {"PublishBulkEvent"}
    assert appcallback_pb2.DESCRIPTOR.services_by_name["AppCallback"].full_name == "spec.proto.runtime.v1.AppCallback"
    lifecycle = lifecycle_pb2.DESCRIPTOR.services_by_name["Lifecycle"]
    assert [m.full_name for m in lifecycle.methods] == ["spec.proto.runtime.v1.Lifecycle.ApplyConfiguration"]


def test_layotto_field_numbers_hold_where_l8_once_differed() -> None:
    fields = {f.name: f.number for f in pb.LockKeepAliveResponse.DESCRIPTOR.fields}
    assert fields == {"status": 1}
    assert pb.LockKeepAliveResponse(status=pb.LockKeepAliveResponse.LOCK_UNEXIST).SerializeToString() == b"\x08\x01"
    tx = pb.ExecuteStateTransactionRequest(
        storeName="s", operations=[pb.TransactionalStateOperation(operationType="delete")]
    )
    assert tx.SerializeToString() == b"\x0a\x01s\x12\x08\x0a\x06delete"
    # The events of SubscribeTopicEvents are AppCallback's TopicEventRequest, metadata at 10.
    event = pb.SubscribeTopicEventsResponse(event_message=appcallback_pb2.TopicEventRequest(metadata={"k": "v"}))
    assert event.SerializeToString() == b"\x12\x08\x52\x06\x0a\x01k\x12\x01v"
