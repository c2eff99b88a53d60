"""Input bindings as sources of the delivery loop: an input binding's events travel the same road
as pub/sub events (handlers/pubsub_delivery.py), to a target of kind ``binding`` (the app's
sidecars), and are settled with the binding after the app answered.

``BindingSource`` makes an ``InputBinding`` an ``EventSource``: its subscription is named after
the binding, and each event becomes a raw payload (no CloudEvents envelope) that carries the
binding's name, the event's data and its metadata as one protobuf message: Layotto's
``InvokeBindingRequest``, whose fields 1 to 3 (name, data, metadata) are those of Dapr's
``BindingEventRequest``. The sidecar reads it back with ``read``.
"""

from __future__ import annotations

from collections.abc import Mapping

from bridges.errors import InvalidArgument, Unimplemented
from bridges.protocols import InputBinding, PubSubLimits, Received, Subscription
from bridges.received import SettledThrough
from handlers.proto import runtime_pb2 as pb
from handlers.pubsub_envelope import HDR_RAW

_RAW = {HDR_RAW: "1"}


def frame(name: str, data: bytes, metadata: Mapping[str, str]) -> bytes:
    """One event of binding ``name`` as it crosses the bus."""
    encoded: bytes = pb.InvokeBindingRequest(name=name, data=data, metadata=metadata).SerializeToString()
    return encoded


def read(payload: bytes) -> tuple[str, bytes, dict[str, str]]:
    """The binding name, data and metadata of an event; InvalidArgument when it is not one."""
    try:
        msg = pb.InvokeBindingRequest.FromString(payload)
    except Exception:  # protobuf's DecodeError, or a string that is not UTF-8
        raise InvalidArgument("a binding event l8 cannot read") from None
    if not msg.name:
        raise InvalidArgument("a binding event names no binding")
    return msg.name, msg.data, dict(msg.metadata)


class _Event(SettledThrough):
    """A binding's event as the delivery loop sees it: settled through the binding's own."""

    __slots__ = ("data", "topic")

    headers = _RAW

    def __init__(self, name: str, received: Received) -> None:
        super().__init__(received)
        self.data = frame(name, received.data, received.headers)
        self.topic = name


class _Events:
    def __init__(self, name: str, sub: Subscription) -> None:
        self._name = name
        self._sub = sub

    async def fetch(self, max_messages: int, timeout: float) -> list[Received]:
        return [_Event(self._name, r) for r in await self._sub.fetch(max_messages, timeout)]

    async def keep_alive(self) -> None:
        await self._sub.keep_alive()

    async def close(self) -> None:
        await self._sub.close()


class BindingSource:
    """An input binding as an ``EventSource`` for the delivery loops of its component."""

    def __init__(self, component: str, binding: InputBinding) -> None:
        self.component = self.name = component
        self._binding = binding
        self.limits = PubSubLimits(lease_seconds=binding.lease_seconds)

    async def subscribe(self, topic: str, group: str, *, max_in_flight: int, ordered: bool = False) -> Subscription:
        if topic != self.component:
            raise InvalidArgument(f"input binding {self.component!r} has no topic {topic[:64]!r}")
        sub = await self._binding.subscribe(group, max_in_flight=max_in_flight, ordered=ordered)
        return _Events(self.component, sub)

    async def publish(self, topic: str, data: bytes, headers: dict[str, str], *, ttl: int | None = None) -> None:
        # An input binding's subscriptions have no dead-letter topic (runtime/binding_events.py).
        raise Unimplemented(f"input binding {self.component!r} has no dead-letter topic")
