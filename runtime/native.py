"""The native front: Layotto's ``spec.proto.runtime.v1.Runtime``, forwarding request bytes as they came.

Every rpc of the service is registered; those of building blocks that l8 does not serve yet
answer UNIMPLEMENTED with a message saying so.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import grpc

from bridges.errors import Code
from handlers.proto import runtime_pb2
from runtime.forward import Forwarder, abort, forwarding_handler

SERVICE = runtime_pb2.DESCRIPTOR.services_by_name["Runtime"].full_name

# rpc name -> (api, op); the op is the last token of the request subject.
ROUTES: dict[str, tuple[str, str]] = {
    "GetState": ("state", "get"),
    "GetBulkState": ("state", "bulkget"),
    "SaveState": ("state", "save"),
    "DeleteState": ("state", "delete"),
    "DeleteBulkState": ("state", "bulkdelete"),
    "ExecuteStateTransaction": ("state", "transaction"),
    "GetConfiguration": ("configuration", "get"),
    "SaveConfiguration": ("configuration", "save"),
    "DeleteConfiguration": ("configuration", "delete"),
    "TryLock": ("lock", "trylock"),
    "Unlock": ("lock", "unlock"),
    "LockKeepAlive": ("lock", "keepalive"),
    "PublishEvent": ("pubsub", "publish"),
    "PublishBulkEvent": ("pubsub", "bulkpublish"),
}


def unimplemented(service: str, method: Any) -> grpc.RpcMethodHandler:
    """A handler of the method's cardinality that answers UNIMPLEMENTED, naming the rpc."""
    message = f"{service}/{method.name} is not implemented by this l8"

    async def refuse(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await abort(context, Code.UNIMPLEMENTED, message)

    async def refuse_stream(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await abort(context, Code.UNIMPLEMENTED, message)
        yield b""  # pragma: no cover - makes this an async generator

    if method.client_streaming and method.server_streaming:
        return grpc.stream_stream_rpc_method_handler(refuse_stream)
    if method.client_streaming:
        return grpc.stream_unary_rpc_method_handler(refuse)
    if method.server_streaming:
        return grpc.unary_stream_rpc_method_handler(refuse_stream)
    return grpc.unary_unary_rpc_method_handler(refuse)


def native_service(
    forwarder: Forwarder, special: Mapping[str, grpc.RpcMethodHandler] | None = None
) -> grpc.GenericRpcHandler:
    """``special`` holds the rpcs not forwarded as they came to a component's worker: invocations,
    configuration subscriptions and the sequencer's segment cache."""
    handlers: dict[str, grpc.RpcMethodHandler] = {}
    for method in runtime_pb2.DESCRIPTOR.services_by_name["Runtime"].methods:
        route = ROUTES.get(method.name)
        if special and method.name in special:
            handlers[method.name] = special[method.name]
        elif route:
            handlers[method.name] = forwarding_handler(forwarder, *route)
        else:
            handlers[method.name] = unimplemented(SERVICE, method)
    return grpc.method_handlers_generic_handler(SERVICE, handlers)
