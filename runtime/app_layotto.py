"""Apps that serve Layotto's ``spec.proto.runtime.v1.AppCallback`` over gRPC (an app of Layotto's
SDKs, e.g. the Node SDK's ``Server``): topic subscriptions and events.

Layotto's AppCallback has ``ListTopicSubscriptions`` and ``OnTopicEvent`` only. Its
``TopicEventRequest`` carries the CloudEvent's core attributes as Dapr's does, l8's route in field
9 (``path``), and the other attributes in Layotto's ``metadata`` map (text as it is, anything else
as JSON). What Layotto's AppCallback lacks (invocations, bulk events, input bindings, a health
check) answers as an app that does not implement it: UNIMPLEMENTED, which l8 treats as Dapr does
(an event pushed in bulk is dropped, or dead-lettered). gRPC proxying reaches the app's own
services as it does for any gRPC app.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import grpc
import orjson
from google.protobuf import empty_pb2  # type: ignore[import-untyped]

from bridges.errors import Code
from runtime.app_channel import AppCallError, AppSubscription, BindingAnswer, BulkEntry, Metadata
from runtime.app_dapr import event_fields
from runtime.app_grpc import GrpcConnection, translate

if TYPE_CHECKING:
    from handlers.pubsub_envelope import Event

SERVICE = "spec.proto.runtime.v1.AppCallback"


def _lacks(what: str) -> AppCallError:
    return AppCallError(Code.UNIMPLEMENTED, f"Layotto's AppCallback has no {what}")


def event_metadata(event: Event) -> dict[str, str]:
    """The CloudEvent attributes besides the core ones, as Layotto's metadata map holds them."""
    found: dict[str, str] = {}
    for key, value in event.extensions.items():
        found[key] = value if isinstance(value, str) else orjson.dumps(value).decode()
    return found


def topic_event_request(event: Event, path: str) -> Any:
    from handlers.proto import appcallback_pb2

    return appcallback_pb2.TopicEventRequest(**event_fields(event, path), metadata=event_metadata(event))


class LayottoGrpcApp:
    def __init__(self, address: str, max_message_bytes: int = 16 << 20, api_token: str | None = None) -> None:
        self._conn = GrpcConnection(address, max_message_bytes, api_token)

    @property
    def address(self) -> str:
        return self._conn.address

    @property
    def protocol(self) -> str:
        return "layotto"

    def _stub(self) -> Any:
        from handlers.proto import appcallback_pb2_grpc

        return self._conn.stub(appcallback_pb2_grpc.AppCallbackStub)

    async def on_invoke(self, request: bytes, *, timeout: float, metadata: Metadata) -> tuple[bytes, Metadata]:
        raise _lacks("OnInvoke: Layotto apps are not invoked through their AppCallback")

    async def call_grpc(
        self, method: str, request: bytes, *, timeout: float, metadata: Metadata
    ) -> tuple[bytes, Metadata]:
        return await self._conn.unary(method, request, timeout=timeout, metadata=metadata)

    async def health(self, *, timeout: float) -> tuple[bool, str]:
        return False, "Layotto's AppCallback has no health check; configure none for this app"

    async def list_subscriptions(self, *, timeout: float) -> list[AppSubscription] | None:
        try:
            resp = await self._stub().ListTopicSubscriptions(empty_pb2.Empty(), timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
                return None
            raise translate(exc, self.address) from None
        return [AppSubscription(sub.pubsub_name, sub.topic, dict(sub.metadata)) for sub in resp.subscriptions]

    async def on_event(self, event: Event, path: str, *, timeout: float, metadata: Metadata) -> int:
        try:
            resp = await self._stub().OnTopicEvent(topic_event_request(event, path), timeout=timeout, metadata=metadata)
        except grpc.aio.AioRpcError as exc:
            raise translate(exc, self.address) from None
        status: int = resp.status
        return status

    async def on_bulk_event(
        self, pubsub: str, topic: str, path: str, entries: Sequence[BulkEntry], *, timeout: float
    ) -> dict[str, int]:
        raise _lacks("bulk events (OnBulkTopicEvent): subscribe without bulk")

    async def list_input_bindings(self, *, timeout: float) -> list[str] | None:
        return None

    async def on_binding_event(
        self, name: str, data: bytes, metadata: dict[str, str], *, timeout: float
    ) -> BindingAnswer:
        raise _lacks("input binding events (OnBindingEvent)")

    async def close(self) -> None:
        await self._conn.close()
