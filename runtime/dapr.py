"""The Dapr front: ``dapr.proto.runtime.v1.Dapr``, so Dapr SDKs work against l8 unchanged.

The state, lock and invocation messages of the native API are wire-compatible with Dapr's
(tests/test_proto_wire.py), so translating such a Dapr request into the native one is the identity
on its bytes and the front forwards them as they came. Rpcs l8 does not serve are not registered,
and gRPC answers them UNIMPLEMENTED, which is what the SDK expects of a sidecar that lacks them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import grpc

from runtime import __version__, native
from runtime.config import Config
from runtime.forward import Forwarder, forwarding_handler

if TYPE_CHECKING:
    from runtime.subscriptions import Announcer

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


async def metadata_response(config: Config, announcer: Announcer | None = None) -> Any:
    # Imported on first use: the Dapr message set is large and only this rpc needs it.
    from dapr.proto.runtime.v1 import metadata_pb2

    resp = metadata_pb2.GetMetadataResponse(id=config.app.id, runtime_version=f"l8-{__version__}")
    for name, comp in sorted(config.components.items()):
        resp.registered_components.add(name=name, type=f"{comp.kind}.{comp.type}", version="v1")
    resp.extended_metadata["namespace"] = config.namespace
    kinds = {"config": metadata_pb2.DECLARATIVE, "app": metadata_pb2.PROGRAMMATIC, "stream": metadata_pb2.STREAMING}
    for row in await announcer.report() if announcer is not None else ():
        sub = resp.subscriptions.add(
            pubsub_name=row["pubsub"],
            topic=row["topic"],
            dead_letter_topic=row.get("dead_letter_topic") or "",
            type=kinds.get(row["origin"], metadata_pb2.UNKNOWN),
        )
        sub.metadata["l8.state"] = row["state"]
        if row.get("reason"):
            sub.metadata["l8.reason"] = row["reason"]
        for match, path in row.get("rules", ()):
            sub.rules.rules.add(match=match, path=path)
        if row.get("default_route") is not None and "rules" in row:
            sub.rules.rules.add(match="", path=row["default_route"])
    return resp


def dapr_service(
    forwarder: Forwarder,
    config: Config,
    special: Mapping[str, grpc.RpcMethodHandler] | None = None,
    announcer: Announcer | None = None,
) -> grpc.GenericRpcHandler:
    """``special`` holds the rpcs not forwarded as they came to a component's worker."""

    async def get_metadata(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        data: bytes = (await metadata_response(config, announcer)).SerializeToString()
        return data

    handlers = {name: forwarding_handler(forwarder, *route) for name, route in ROUTES.items()}
    handlers["GetMetadata"] = grpc.unary_unary_rpc_method_handler(get_metadata)
    handlers.update(special or {})
    return grpc.method_handlers_generic_handler(SERVICE, handlers)
