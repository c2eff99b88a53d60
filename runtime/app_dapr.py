"""Apps that serve Dapr's ``dapr.proto.runtime.v1.AppCallback`` over gRPC (an app written with the
``dapr`` package's ``App`` among them): invocations, topic subscriptions and events.

Invocations pass through as bytes (Dapr's InvokeRequest and InvokeResponse are what the bus
carries); events are built from l8's ``Event`` as Dapr's ``TopicEventRequest``, CloudEvent
attributes other than the core ones going into ``extensions``. A bulk push tries
``OnBulkTopicEvent`` and, for apps of older SDKs that answer UNIMPLEMENTED, falls back to
``AppCallbackAlpha.OnBulkTopicEventAlpha1`` from then on.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf import empty_pb2  # type: ignore[import-untyped]

from runtime.app_channel import AppSubscription, BindingAnswer, BulkEntry, Metadata
from runtime.app_grpc import GrpcConnection, translate

if TYPE_CHECKING:
    from handlers.pubsub_envelope import Event

ON_INVOKE = "/dapr.proto.runtime.v1.AppCallback/OnInvoke"
CLOUDEVENT_JSON = "application/cloudevents+json"
EVENT_TYPE = "com.dapr.event.sent"


class DaprGrpcApp:
    def __init__(self, address: str, max_message_bytes: int = 16 << 20, api_token: str | None = None) -> None:
        self._conn = GrpcConnection(address, max_message_bytes, api_token)
        self._bulk_alpha = False

    @property
    def address(self) -> str:
        return self._conn.address

    @property
    def protocol(self) -> str:
        return "grpc"

    def _stub(self, name: str) -> Any:
        from dapr.proto.runtime.v1 import appcallback_pb2_grpc

        return self._conn.stub(getattr(appcallback_pb2_grpc, f"{name}Stub"))

    async def on_invoke(self, request: bytes, *, timeout: float, metadata: Metadata) -> tuple[bytes, Metadata]:
        return await self._conn.unary(ON_INVOKE, request, timeout=timeout, metadata=metadata)

    async def call_grpc(
        self, method: str, request: bytes, *, timeout: float, metadata: Metadata
    ) -> tuple[bytes, Metadata]:
        return await self._conn.unary(method, request, timeout=timeout, metadata=metadata)

    async def health(self, *, timeout: float) -> tuple[bool, str]:
        try:
            await self._stub("AppCallbackHealthCheck").HealthCheck(empty_pb2.Empty(), timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            return False, translate(exc, self.address).message or exc.code().name
        return True, ""

    async def list_subscriptions(self, *, timeout: float) -> list[AppSubscription] | None:
        try:
            resp = await self._stub("AppCallback").ListTopicSubscriptions(empty_pb2.Empty(), timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
                return None
            raise translate(exc, self.address) from None
        found = []
        for sub in resp.subscriptions:
            bulk = sub.bulk_subscribe
            found.append(
                AppSubscription(
                    pubsub=sub.pubsub_name,
                    topic=sub.topic,
                    metadata=dict(sub.metadata),
                    rules=tuple((r.match, r.path) for r in sub.routes.rules),
                    default_route=sub.routes.default,
                    dead_letter_topic=sub.dead_letter_topic or None,
                    bulk=bulk.enabled,
                    bulk_max_messages=bulk.max_messages_count,
                    bulk_max_await_ms=bulk.max_await_duration_ms,
                )
            )
        return found

    async def on_event(self, event: Event, path: str, *, timeout: float, metadata: Metadata) -> int:
        try:
            resp = await self._stub("AppCallback").OnTopicEvent(
                topic_event_request(event, path), timeout=timeout, metadata=metadata
            )
        except grpc.aio.AioRpcError as exc:
            raise translate(exc, self.address) from None
        status: int = resp.status
        return status

    async def on_bulk_event(
        self, pubsub: str, topic: str, path: str, entries: Sequence[BulkEntry], *, timeout: float
    ) -> dict[str, int]:
        request = bulk_request(pubsub, topic, path, entries)
        try:
            if not self._bulk_alpha:
                try:
                    resp = await self._stub("AppCallback").OnBulkTopicEvent(request, timeout=timeout)
                except grpc.aio.AioRpcError as exc:
                    if exc.code() != grpc.StatusCode.UNIMPLEMENTED:
                        raise
                    self._bulk_alpha = True  # an app of an older SDK: ask it the alpha way from now on
            if self._bulk_alpha:
                resp = await self._stub("AppCallbackAlpha").OnBulkTopicEventAlpha1(request, timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            raise translate(exc, self.address) from None
        return {s.entry_id: s.status for s in resp.statuses}

    async def list_input_bindings(self, *, timeout: float) -> list[str] | None:
        try:
            resp = await self._stub("AppCallback").ListInputBindings(empty_pb2.Empty(), timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
                return None
            raise translate(exc, self.address) from None
        return list(resp.bindings)

    async def on_binding_event(
        self, name: str, data: bytes, metadata: dict[str, str], *, timeout: float
    ) -> BindingAnswer:
        from dapr.proto.runtime.v1 import appcallback_pb2

        request = appcallback_pb2.BindingEventRequest(name=name, data=data, metadata=metadata)
        try:
            resp = await self._stub("AppCallback").OnBindingEvent(request, timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            raise translate(exc, self.address) from None
        return BindingAnswer(
            store_name=resp.store_name,
            states=tuple((item.key, item.value) for item in resp.states),
            to=tuple(resp.to),
            data=resp.data,
            parallel=resp.concurrency == appcallback_pb2.BindingEventResponse.PARALLEL,
        )

    async def close(self) -> None:
        await self._conn.close()


def event_fields(event: Event, path: str) -> dict[str, Any]:
    """The fields Dapr's, Layotto's and the native TopicEventRequest share."""
    return {
        "id": event.id,
        "source": event.source,
        "type": event.type,
        "spec_version": event.specversion,
        "data_content_type": event.datacontenttype,
        "data": event.data,
        "topic": event.topic,
        "pubsub_name": event.pubsubname,
        "path": path,
    }


def topic_event_request(event: Event, path: str) -> Any:
    from dapr.proto.runtime.v1 import appcallback_pb2

    req = appcallback_pb2.TopicEventRequest(**event_fields(event, path))
    if event.extensions:
        _extensions(req.extensions, event.extensions)
    return req


def bulk_request(pubsub: str, topic: str, path: str, entries: Sequence[BulkEntry]) -> Any:
    from dapr.proto.runtime.v1 import appcallback_pb2

    req = appcallback_pb2.TopicEventBulkRequest(
        id=uuid.uuid4().hex, topic=topic, pubsub_name=pubsub, type=EVENT_TYPE, path=path
    )
    for entry in entries:
        event = entry.event
        added = req.entries.add(entry_id=entry.entry_id, content_type=CLOUDEVENT_JSON)
        ce = added.cloud_event
        ce.id = event.id
        ce.source = event.source
        ce.type = event.type
        ce.spec_version = event.specversion
        ce.data_content_type = event.datacontenttype
        ce.data = event.data
        if event.extensions:
            _extensions(ce.extensions, event.extensions)
    return req


def _extensions(struct: Any, values: dict[str, Any]) -> None:
    # Setting string fields directly is faster than Struct.update; extensions are mostly strings.
    fields = struct.fields
    rest: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, str):
            fields[key].string_value = value
        else:
            rest[key] = value
    if rest:
        struct.update(rest)
