"""Layotto's ``spec.proto.runtime.v1.Lifecycle``: ApplyConfiguration hands a component a new full
metadata while l8 runs.

The request names the component by Layotto's config section (``hellos``, ``state``,
``pub_subs``...) or by l8's kind. Components whose handler takes an ``apply`` (the hello
component) get the request bytes as they came; any other kind answers UNIMPLEMENTED. The request
goes to the component's worker queue group like any other, so with several workers of one
component only the worker that takes it changes.
"""

from __future__ import annotations

from typing import Any

import grpc

from bridges.errors import Code
from handlers.proto import lifecycle_pb2
from runtime.forward import Forwarder, FrontError, abort

SERVICE = lifecycle_pb2.DESCRIPTOR.services_by_name["Lifecycle"].full_name

# Layotto's config section names, and l8's kinds, to l8's kinds.
KINDS = {
    "hellos": "hello",
    "hello": "hello",
    "state": "state",
    "pub_subs": "pubsub",
    "pubsub": "pubsub",
    "config_store": "configuration",
    "configuration": "configuration",
    "lock": "lock",
    "sequencer": "sequencer",
    "file": "file",
    "secret_store": "secrets",
    "secrets": "secrets",
    "bindings": "bindings",
}
# Kinds whose components take a new configuration at run time: hello components apply it in place
# (their bridge's ``apply``), the others are rebuilt with it by the worker that takes the call
# (runtime/reload.py), requests in flight finishing on the old one.
APPLIES = ("hello", "state", "pubsub", "configuration", "lock", "sequencer", "file", "secrets", "bindings")


def lifecycle_service(forwarder: Forwarder) -> grpc.GenericRpcHandler:
    async def apply(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        try:
            config = lifecycle_pb2.DynamicConfiguration.FromString(request).component_config
        except Exception:
            await abort(context, Code.INVALID_ARGUMENT, "the request is not a valid DynamicConfiguration")
        kind = KINDS.get(config.kind)
        if kind is None:
            await abort(
                context,
                Code.INVALID_ARGUMENT,
                f"component_config.kind {config.kind[:64]!r} is not a kind l8 knows; kinds: {', '.join(KINDS)}",
            )
        try:
            name = forwarder.component(kind, config.name)
        except FrontError as exc:
            await abort(context, exc.code, exc.message)
        if kind not in APPLIES:
            await abort(
                context,
                Code.UNIMPLEMENTED,
                f"{kind} component {name!r} does not take a new configuration while l8 runs; "
                f"kinds that do: {', '.join(APPLIES)}",
            )
        return await forwarder.send(forwarder.subject(kind, name, "apply"), request, context, f"{kind} {name!r}")

    return grpc.method_handlers_generic_handler(
        SERVICE, {"ApplyConfiguration": grpc.unary_unary_rpc_method_handler(apply)}
    )
