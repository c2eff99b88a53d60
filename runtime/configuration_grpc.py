"""The gRPC methods of configuration: Layotto's SubscribeConfiguration and Dapr's configuration calls.

They are the fronts over ``ConfigurationHub`` (runtime/configuration.py): each stream gets an
``Outbox`` that the hub's subscriptions fill, drained here into the gRPC response stream. Dapr's
messages differ from the native ones, so its calls are translated to native requests here too.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator
from typing import Any, TypeVar

import grpc

from bridges.errors import Code
from handlers.configuration import Change
from handlers.proto import runtime_pb2 as pb
from runtime.configuration import API, ConfigurationHub, End, Outbox, Subscription
from runtime.forward import Forwarder, FrontError, abort, parse

log = logging.getLogger("l8.runtime.configuration")

T = TypeVar("T")


async def _drain(outbox: Outbox[T], context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[T]:
    while True:
        item = await outbox.get()
        if item is None:
            break
        # Nothing awaits between get() and this yield, so an unsubscribe cannot slip in between.
        yield item
    if outbox.error is not None:
        await abort(context, *outbox.error)


def _ender(outbox: Outbox[Any]) -> End:
    def end(code: Code | None, message: str) -> None:
        if code is None:
            outbox.close()
        else:
            outbox.fail(code, message)

    return end


# ---- native: spec.proto.runtime.v1.Runtime/SubscribeConfiguration ----


SNAPSHOT = "snapshot"  # request metadata: "true" asks for the current items first


def wants_snapshot(request: pb.SubscribeConfigurationRequest) -> bool:
    value: str = request.metadata.get(SNAPSHOT, "")
    return value.lower() == "true"


def native_subscribe(hub: ConfigurationHub) -> grpc.RpcMethodHandler:
    """Bidi stream: each inbound request adds a subscription. Responses carry changed items,
    deletes as items with empty content, and never come empty (Layotto's SDKs hand every response
    to the app as a change). A request with metadata ``snapshot: "true"`` gets the current items
    of its keys first, when there are any. A bad request ends the stream with its error."""

    async def call(
        requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.SubscribeConfigurationResponse]:
        outbox: Outbox[pb.SubscribeConfigurationResponse] = Outbox()
        subs: list[Subscription] = []

        def deliver(sub: Subscription, changes: list[Change], first: bool) -> None:
            if not changes or (first and not wants_snapshot(sub.request)):
                return
            outbox.push(
                pb.SubscribeConfigurationResponse(
                    store_name=sub.store_name, app_id=sub.app_id, items=[c.item() for c in changes]
                )
            )

        async def read() -> None:
            try:
                async for data in requests:
                    try:
                        request = pb.SubscribeConfigurationRequest.FromString(data)
                    except Exception as exc:  # protobuf's DecodeError
                        raise FrontError(
                            Code.INVALID_ARGUMENT, f"the request is not a valid SubscribeConfigurationRequest: {exc}"
                        ) from None
                    # Without a snapshot the read only seeds the versions the changes are checked against.
                    snapshot = wants_snapshot(request)
                    sub = await hub.open(request, context, deliver, _ender(outbox), contents=snapshot)
                    subs.append(sub)
            except FrontError as exc:
                outbox.fail(exc.code, exc.message)
            except (asyncio.CancelledError, grpc.aio.AioRpcError):
                raise
            except Exception as exc:
                log.exception("reading configuration subscriptions failed")
                outbox.fail(Code.INTERNAL, f"{type(exc).__name__}: {exc}")

        reader = asyncio.create_task(read())
        try:
            async for response in _drain(outbox, context):
                yield response
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
            for sub in subs:
                hub.close(sub)

    return grpc.stream_stream_rpc_method_handler(
        call, response_serializer=pb.SubscribeConfigurationResponse.SerializeToString
    )


# ---- Dapr: dapr.proto.runtime.v1.Dapr ----


def _native_request(store_name: str, keys: Any, metadata: Any) -> dict[str, Any]:
    # Dapr has no group or label; metadata "group" and "label" pick them, else the defaults.
    return {
        "store_name": store_name,
        "keys": list(keys),
        "metadata": dict(metadata),
        "group": metadata.get("group", ""),
        "label": metadata.get("label", ""),
    }


@functools.cache
def _dapr_messages() -> tuple[Any, Any]:
    # Imported on the first Dapr configuration call, not when the server is built: importing any
    # dapr.proto module runs dapr/proto/__init__.py, which loads every Dapr message module
    # (about 1.3 MB of memory and 20 ms of start-up) that an idle sidecar never needs.
    from dapr.proto.common.v1 import common_pb2
    from dapr.proto.runtime.v1 import configuration_pb2

    return common_pb2, configuration_pb2


def dapr_handlers(hub: ConfigurationHub, forwarder: Forwarder) -> dict[str, grpc.RpcMethodHandler]:
    def dapr_item(change: Change) -> Any:
        common_pb2, _ = _dapr_messages()
        if change.deleted:
            return common_pb2.ConfigurationItem(version=str(change.version))
        return common_pb2.ConfigurationItem(
            value=change.content, version=str(change.version), metadata=dict(change.metadata or {})
        )

    async def get(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        common_pb2, dpb = _dapr_messages()
        dreq = await parse(dpb.GetConfigurationRequest, request, context)
        native = pb.GetConfigurationRequest(**_native_request(dreq.store_name, dreq.keys, dreq.metadata))
        reply = pb.GetConfigurationResponse.FromString(
            await forwarder.forward(API, "get", native.SerializeToString(), context)
        )
        resp = dpb.GetConfigurationResponse()
        for item in reply.items:
            resp.items[item.key].CopyFrom(
                common_pb2.ConfigurationItem(value=item.content, version=item.version, metadata=dict(item.metadata))
            )
        data: bytes = resp.SerializeToString()
        return data

    async def subscribe(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[bytes]:
        _, dpb = _dapr_messages()
        dreq = await parse(dpb.SubscribeConfigurationRequest, request, context)
        native = pb.SubscribeConfigurationRequest(**_native_request(dreq.store_name, dreq.keys, dreq.metadata))
        outbox: Outbox[bytes] = Outbox()

        def deliver(sub: Subscription, changes: list[Change], first: bool) -> None:
            # Dapr's contract: the first message carries only the id; later ones the changes.
            resp = dpb.SubscribeConfigurationResponse(id=sub.id)
            if not first:
                for change in changes:
                    resp.items[change.key].CopyFrom(dapr_item(change))
            outbox.push(resp.SerializeToString())

        try:
            # Dapr's first message carries no items: the read only needs to seed versions.
            sub = await hub.open(native, context, deliver, _ender(outbox), contents=False)
        except FrontError as exc:
            await abort(context, exc.code, exc.message)
        try:
            async for data in _drain(outbox, context):
                yield data
        finally:
            hub.close(sub)

    async def unsubscribe(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        _, dpb = _dapr_messages()
        dreq = await parse(dpb.UnsubscribeConfigurationRequest, request, context)
        ok, message = hub.unsubscribe(dreq.id, dreq.store_name)
        data: bytes = dpb.UnsubscribeConfigurationResponse(ok=ok, message=message).SerializeToString()
        return data

    unary_get = grpc.unary_unary_rpc_method_handler(get)
    stream = grpc.unary_stream_rpc_method_handler(subscribe)
    unary_unsubscribe = grpc.unary_unary_rpc_method_handler(unsubscribe)
    return {
        "GetConfiguration": unary_get,
        "GetConfigurationAlpha1": unary_get,
        "SubscribeConfiguration": stream,
        "SubscribeConfigurationAlpha1": stream,
        "UnsubscribeConfiguration": unary_unsubscribe,
        "UnsubscribeConfigurationAlpha1": unary_unsubscribe,
    }
