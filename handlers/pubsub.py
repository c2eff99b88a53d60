"""The Pub/Sub API: publish and bulk publish in a CloudEvents 1.0 envelope
(handlers/pubsub_envelope.py), and the subscription registry's ops through which sidecars tell the
workers what to deliver (handlers/announcements.py). A publish is checked whole before anything
is published, so bad input publishes nothing.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping

from bridges.errors import InvalidArgument, L8Error, Unimplemented, quote
from bridges.protocols import PubSub
from handlers import limits
from handlers.announcements import Announcements
from handlers.base import RequestInfo
from handlers.proto import runtime_pb2 as pb
from handlers.pubsub_envelope import Outgoing, check_topic, wrap

_EMPTY = b""


class PubSubHandler:
    """Serves one pub/sub component: ops ``publish`` and ``bulkpublish``, and, once the process
    attaches deliveries to ``registry``, the registry ops ``announce``, ``withdraw`` and ``status``."""

    def __init__(self, component: str, bridge: PubSub, metadata: dict[str, str]) -> None:
        self.component = component
        self.bridge = bridge
        self.registry = Announcements(component, "pub/sub")
        self._ops: dict[str, Callable[[bytes, RequestInfo], Awaitable[bytes]]] = {
            "publish": self.publish,
            "bulkpublish": self.bulk_publish,
            **self.registry.ops,
        }

    async def __call__(self, op: str, payload: bytes, ctx: RequestInfo) -> bytes:
        fn = self._ops.get(op)
        if fn is None:
            raise Unimplemented(f"pubsub has no operation {op!r}")
        return await fn(payload, ctx)

    async def publish(self, payload: bytes, ctx: RequestInfo) -> bytes:
        req = pb.PublishEventRequest.FromString(payload)
        check_topic(req.topic)
        limits.check_map(req.metadata, "metadata")
        out = self._wrap(req.topic, req.data, req.data_content_type, req.metadata, ctx, "the event")
        await self.bridge.publish(req.topic, out.data, out.headers, ttl=out.ttl)
        return _EMPTY

    async def bulk_publish(self, payload: bytes, ctx: RequestInfo) -> bytes:
        req = pb.BulkPublishRequest.FromString(payload)
        check_topic(req.topic)
        if not req.entries:
            raise InvalidArgument("a bulk publish needs at least one entry")
        limits.check_count(req.entries, limits.BULK, "entries")
        limits.check_map(req.metadata, "metadata")
        seen: set[str] = set()
        prepared: list[Outgoing] = []
        for i, entry in enumerate(req.entries):
            where = f"entries[{i}]"
            if not entry.entry_id:
                raise InvalidArgument(f"{where}: entry_id is empty")
            limits.check_size(entry.entry_id, limits.ENTRY_ID, f"{where}: entry_id")
            if entry.entry_id in seen:
                raise InvalidArgument(f"{where}: entry_id {quote(entry.entry_id)} is used twice")
            limits.check_map(entry.metadata, f"{where}.metadata")
            seen.add(entry.entry_id)
            metadata = {**req.metadata, **entry.metadata}
            prepared.append(self._wrap(req.topic, entry.event, entry.content_type, metadata, ctx, where))
        # The batch interface has no per-message TTL; events with one go on their own.
        if any(o.ttl is not None for o in prepared):
            errors: list[str | None] = []
            for o in prepared:
                try:
                    await self.bridge.publish(req.topic, o.data, o.headers, ttl=o.ttl)
                    errors.append(None)
                except L8Error as exc:
                    errors.append(str(exc))
        else:
            errors = await self.bridge.publish_batch(req.topic, [(o.data, o.headers) for o in prepared])
        resp = pb.BulkPublishResponse()
        for entry, error in zip(req.entries, errors, strict=True):
            if error is not None:
                resp.failed_entries.add(entry_id=entry.entry_id, error=error)
        data: bytes = resp.SerializeToString()
        return data

    def _wrap(
        self, topic: str, data: bytes, content_type: str, metadata: Mapping[str, str], ctx: RequestInfo, what: str
    ) -> Outgoing:
        return wrap(
            self.component, self.bridge.limits.max_message_bytes, topic, data, content_type, metadata, ctx, what
        )
