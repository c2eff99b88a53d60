"""The Dapr front: ``dapr.proto.runtime.v1.Dapr``, so Dapr SDKs work against l8 unchanged.

The state, lock and invocation messages of the native API are wire-compatible with Dapr's
(tests/test_proto_wire.py), so translating such a Dapr request into the native one is the identity
on its bytes and the front forwards them as they came. Rpcs l8 does not serve are not registered,
and gRPC answers them UNIMPLEMENTED, which is what the SDK expects of a sidecar that lacks them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import grpc

from bridges.errors import Code
from runtime import native
from runtime.forward import Forwarder, FrontError, abort, forwarding_handler, parse
from runtime.metadata import Metadata

SERVICE = "dapr.proto.runtime.v1.Dapr"

# Dapr's state rpcs carry the same names and bytes as the native ones.
ROUTES: dict[str, tuple[str, str]] = {
    name: native.ROUTES[name]
    for name in ("GetState", "GetBulkState", "SaveState", "DeleteState", "DeleteBulkState", "ExecuteStateTransaction")
}
# Dapr's lock messages have the native fields, numbers and enum values (expiry_in_seconds is the
# native expire, LOCK_DOES_NOT_EXIST is LOCK_UNEXIST): the bytes go through as they came.
ROUTES.update(TryLockAlpha1=native.ROUTES["TryLock"], UnlockAlpha1=native.ROUTES["Unlock"])
# Dapr's publish messages are wire-compatible with the native ones too.
ROUTES["PublishEvent"] = native.ROUTES["PublishEvent"]
ROUTES["BulkPublishEvent"] = native.ROUTES["PublishBulkEvent"]
ROUTES["BulkPublishEventAlpha1"] = native.ROUTES["PublishBulkEvent"]
# So are the secret and binding messages: same fields, numbers and types.
ROUTES.update({name: native.ROUTES[name] for name in ("GetSecret", "GetBulkSecret", "InvokeBinding")})


async def metadata_response(metadata: Metadata) -> Any:
    # Imported on first use: the Dapr message set is large and only these rpcs need it.
    from dapr.proto.runtime.v1 import metadata_pb2

    described = await metadata.describe()
    resp = metadata_pb2.GetMetadataResponse(id=described["id"], runtime_version=described["runtimeVersion"])
    for comp in described["components"]:
        resp.registered_components.add(
            name=comp["name"], type=comp["type"], version=comp["version"], capabilities=comp["capabilities"]
        )
    resp.extended_metadata.update(described["extended"])
    kinds = {
        "DECLARATIVE": metadata_pb2.DECLARATIVE,
        "PROGRAMMATIC": metadata_pb2.PROGRAMMATIC,
        "STREAMING": metadata_pb2.STREAMING,
    }
    for spec in described["subscriptions"]:
        sub = resp.subscriptions.add(
            pubsub_name=spec["pubsubname"],
            topic=spec["topic"],
            dead_letter_topic=spec["deadLetterTopic"],
            type=kinds.get(spec["type"], metadata_pb2.UNKNOWN),
        )
        # l8's delivery state of the subscription, where Dapr's message has room for it.
        sub.metadata["l8.state"] = spec["state"]
        if spec["reason"]:
            sub.metadata["l8.reason"] = spec["reason"]
        for rule in spec["rules"]:
            sub.rules.rules.add(match=rule["match"], path=rule["path"])
    connection = described["appConnectionProperties"]
    resp.app_connection_properties.protocol = connection["protocol"]
    resp.app_connection_properties.max_concurrency = connection["maxConcurrency"]
    resp.app_connection_properties.port = connection.get("port", 0)
    resp.app_connection_properties.channel_address = connection.get("channelAddress", "")
    return resp


def dapr_service(
    forwarder: Forwarder,
    metadata: Metadata,
    special: Mapping[str, grpc.RpcMethodHandler] | None = None,
    shutdown: Callable[[], None] | None = None,
) -> grpc.GenericRpcHandler:
    """``special`` holds the rpcs not forwarded as they came to a component's worker."""

    async def get_metadata(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        data: bytes = (await metadata_response(metadata)).SerializeToString()
        return data

    async def set_metadata(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        from dapr.proto.runtime.v1 import metadata_pb2

        req = await parse(metadata_pb2.SetMetadataRequest, request, context)
        try:
            metadata.set(req.key, req.value)
        except FrontError as exc:
            await abort(context, exc.code, exc.message)
        return b""

    async def shutdown_call(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        if shutdown is None:
            await abort(context, Code.UNIMPLEMENTED, "this l8 cannot be shut down over gRPC")
        shutdown()
        return b""

    handlers = {name: forwarding_handler(forwarder, *route) for name, route in ROUTES.items()}
    handlers["GetMetadata"] = grpc.unary_unary_rpc_method_handler(get_metadata)
    handlers["SetMetadata"] = grpc.unary_unary_rpc_method_handler(set_metadata)
    handlers["Shutdown"] = grpc.unary_unary_rpc_method_handler(shutdown_call)
    handlers.update(special or {})
    return grpc.method_handlers_generic_handler(SERVICE, handlers)
