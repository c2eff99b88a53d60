"""The Pub/Sub API: publish and bulk publish in a CloudEvents 1.0 envelope
(handlers/pubsub_envelope.py), and the subscription registry's ops through which sidecars tell the
workers what to deliver (handlers/pubsub_registry.py). A publish is checked whole before anything
is published, so bad input publishes nothing.
"""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import orjson

from bridges.errors import BackendUnavailable, InvalidArgument, L8Error, PermissionDenied, Unimplemented
from bridges.protocols import PubSub
from handlers.base import TOKEN, RequestInfo
from handlers.proto import runtime_pb2 as pb
from handlers.pubsub_envelope import Outgoing, check_topic, wrap
from handlers.pubsub_registry import Deliveries, decl_key
from handlers.pubsub_specs import Spec, SpecError

_EMPTY = b""


class PubSubHandler:
    """Serves one pub/sub component: ops ``publish`` and ``bulkpublish``, and, once ``deliveries``
    are attached, the registry ops ``announce``, ``withdraw`` and ``status``."""

    def __init__(self, component: str, bridge: PubSub, metadata: dict[str, str]) -> None:
        self.component = component
        self.bridge = bridge
        self.deliveries: Deliveries | None = None
        self._ops: dict[str, Callable[[bytes, RequestInfo], Awaitable[bytes]]] = {
            "publish": self.publish,
            "bulkpublish": self.bulk_publish,
            "announce": self.announce,
            "withdraw": self.withdraw,
            "status": self.status,
        }

    async def __call__(self, op: str, payload: bytes, ctx: RequestInfo) -> bytes:
        fn = self._ops.get(op)
        if fn is None:
            raise Unimplemented(f"pubsub has no operation {op!r}")
        return await fn(payload, ctx)

    async def publish(self, payload: bytes, ctx: RequestInfo) -> bytes:
        req = pb.PublishEventRequest.FromString(payload)
        check_topic(req.topic)
        out = self._wrap(req.topic, req.data, req.data_content_type, req.metadata, ctx, "the event")
        await self.bridge.publish(req.topic, out.data, out.headers, ttl=out.ttl)
        return _EMPTY

    async def bulk_publish(self, payload: bytes, ctx: RequestInfo) -> bytes:
        req = pb.BulkPublishRequest.FromString(payload)
        check_topic(req.topic)
        if not req.entries:
            raise InvalidArgument("a bulk publish needs at least one entry")
        seen: set[str] = set()
        prepared: list[Outgoing] = []
        for i, entry in enumerate(req.entries):
            where = f"entries[{i}]"
            if not entry.entry_id:
                raise InvalidArgument(f"{where}: entry_id is empty")
            if entry.entry_id in seen:
                raise InvalidArgument(f"{where}: entry_id {entry.entry_id!r} is used twice")
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

    # ---- the subscription registry ----

    def _registry(self) -> Deliveries:
        if self.deliveries is None:
            raise Unimplemented(f"pub/sub {self.component!r} delivers no events in this worker")
        return self.deliveries

    async def announce(self, payload: bytes, ctx: RequestInfo) -> bytes:
        """Post the caller's subscriptions on this component, replacing what that instance posted before."""
        deliveries = self._registry()
        app = _caller(ctx)
        body = _json_object(payload, "an announcement")
        instance = _instance(body)
        raw_specs = body.get("specs")
        if not isinstance(raw_specs, list) or len(raw_specs) > MAX_ANNOUNCED:
            raise InvalidArgument(f"an announcement's specs must be a list of at most {MAX_ANNOUNCED} subscriptions")
        specs = []
        for i, raw in enumerate(raw_specs):
            try:
                spec = Spec.from_dict(raw)
            except SpecError as exc:
                raise InvalidArgument(f"specs[{i}]: {exc}") from None
            if spec.app != app:
                raise PermissionDenied(f"specs[{i}]: app {app!r} cannot announce subscriptions of {spec.app[:64]!r}")
            if spec.pubsub != self.component:
                raise InvalidArgument(f"specs[{i}]: it is for pub/sub {spec.pubsub[:64]!r}, not {self.component!r}")
            specs.append(spec.to_dict())
        notice = orjson.dumps({"instance": instance, "at": time.time(), "specs": specs})
        await _posting(deliveries.board.post(decl_key(app, self.component, instance), notice))
        return _EMPTY

    async def withdraw(self, payload: bytes, ctx: RequestInfo) -> bytes:
        deliveries = self._registry()
        instance = _instance(_json_object(payload, "a withdrawal"))
        await _posting(deliveries.board.remove(decl_key(_caller(ctx), self.component, instance)))
        return _EMPTY

    async def status(self, payload: bytes, ctx: RequestInfo) -> bytes:
        """What is announced for the caller's app and what every worker reports of its deliveries."""
        deliveries = self._registry()
        app = _caller(ctx)
        return orjson.dumps({"declared": deliveries.declared(app), "workers": deliveries.statuses(app)})


MAX_ANNOUNCED = 1000
_INSTANCE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def _caller(ctx: RequestInfo) -> str:
    if not TOKEN.match(ctx.app_id):
        raise InvalidArgument("the caller has no usable app id")
    return ctx.app_id


def _json_object(payload: bytes, what: str) -> dict[str, Any]:
    try:
        body = orjson.loads(payload)
    except orjson.JSONDecodeError:
        raise InvalidArgument(f"{what} must be a JSON object") from None
    if not isinstance(body, dict):
        raise InvalidArgument(f"{what} must be a JSON object")
    return body


def _instance(body: dict[str, Any]) -> str:
    instance = body.get("instance")
    if not isinstance(instance, str) or not _INSTANCE.match(instance):
        raise InvalidArgument("instance must be 1 to 64 letters, digits, '_' or '-'")
    return instance


async def _posting(op: Awaitable[None]) -> None:
    try:
        await op
    except Exception as exc:
        raise BackendUnavailable(f"the subscription registry: {exc}") from None
