"""Configuration subscriptions at the front: held here, fed by the workers' change events.

Every worker serving a configuration component watches its store and publishes each change on
``l8.<ns>.configuration.<component>.events.changes`` (handlers/configuration.py). A front that
holds subscriptions of a component listens there once and hands each change to the
subscriptions whose keys it concerns. Opening a subscription:

1. the front listens on the changes subject (and flushes, so the server knows) before anything
   else, and buffers what arrives for the new subscription;
2. it asks a worker (op ``subscribe``) to check the request and read the current items;
3. it seeds the subscription with those items' versions, sends its first message, then replays
   the buffer. Any change after the read arrives on the subject after step 1 and carries a
   version above the one read, so none is lost and none that the read already saw is repeated.

Versions also drop what several workers publish twice, and what a resync repeats: a write
passes only if it is newer than what the subscription holds; a delete only if the subscription
holds the key. Events are not stored on the bus, so whatever a front misses while it is cut off
from the bus is found after it reconnects: it reads every subscription's items again and hands
the subscription what differs from what it holds, deletes included.

Each subscription has its own outbox: unsubscribing empties it, so nothing reaches the stream
afterwards, and a broken stream ends alone. The outbox is bounded as a last resort; in practice
gRPC buffers what a subscriber does not read before the outbox ever fills.

The fronts over the hub: the gRPC methods in runtime/configuration_grpc.py, Dapr's HTTP API in
runtime/dapr_http/configuration.py, and pushes to the app in runtime/configuration_push.py.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import grpc

from bridges.errors import Code, quote
from bus.subjects import changes_subject
from bus.sync import server_has_seen
from handlers.configuration import Change, SubscribeReply, decode_changes, split_stored
from handlers.proto import runtime_pb2 as pb
from runtime.forward import Forwarder, FrontError

if TYPE_CHECKING:
    # Only a type here: importing nats before bus would skip bus/_nats_import.py, and a process whose
    # first import is this module (or runtime.grpc_server) would load aiohttp (about 14 MB).
    from nats.aio.msg import Msg

log = logging.getLogger("l8.runtime.configuration")

API = "configuration"
OUTBOX_LIMIT = 10_000  # responses waiting for a subscriber before l8 ends its stream

T = TypeVar("T")


class Outbox(Generic[T]):
    """What waits for one stream. ``close`` and ``fail`` drop what is queued and end the stream."""

    def __init__(self, limit: int | None = None) -> None:
        self._items: deque[T] = deque()
        self._limit = limit or OUTBOX_LIMIT
        self._wake = asyncio.Event()
        self.ended = False
        self.error: tuple[Code, str] | None = None

    def push(self, item: T) -> None:
        if self.ended:
            return
        if len(self._items) >= self._limit:
            self.fail(Code.RESOURCE_EXHAUSTED, f"the subscriber fell {self._limit} messages behind; resubscribe")
            return
        self._items.append(item)
        self._wake.set()

    def close(self) -> None:
        self.ended = True
        self._items.clear()
        self._wake.set()

    def fail(self, code: Code, message: str) -> None:
        if self.error is None and not self.ended:
            self.error = (code, message)
        self.close()

    async def get(self) -> T | None:
        """The next item, or None once the outbox is closed."""
        while True:
            if self.ended:
                return None
            if self._items:
                return self._items.popleft()
            self._wake.clear()
            await self._wake.wait()


Deliver = Callable[["Subscription", list[Change], bool], None]
End = Callable[[Code | None, str], None]


class Subscription:
    def __init__(self, component: str, request: pb.SubscribeConfigurationRequest, deliver: Deliver, end: End) -> None:
        self.id = uuid.uuid4().hex
        self.component = component
        self.request = request
        self.store_name = request.store_name
        self.app_id = request.app_id
        self._deliver = deliver
        self._end = end
        self._filter: SubscribeReply | None = None
        self._buffer: list[Change] | None = []
        self._held: dict[str, tuple[int, bool]] = {}  # stored key -> (version, deleted)
        self.closed = False

    def activate(self, reply: SubscribeReply) -> None:
        """Seed with the items read, send the first message, then what arrived meanwhile."""
        self._filter = reply
        for item in reply.items:
            self._held[item.stored] = (item.version, False)
        buffered, self._buffer = self._buffer or [], None
        self._deliver(self, reply.items, True)
        self.offer(buffered)

    def offer(self, changes: list[Change]) -> None:
        if self.closed:
            return
        if self._buffer is not None:
            self._buffer.extend(changes)
            return
        assert self._filter is not None
        fresh: list[Change] = []
        for change in changes:
            if not self._filter.matches(change.stored):
                continue
            version, deleted = self._held.get(change.stored, (0, True))
            if change.deleted:
                if deleted or change.version < version:
                    continue
            elif change.version <= version:
                continue
            self._held[change.stored] = (change.version, change.deleted)
            fresh.append(change)
        if fresh:
            self._deliver(self, fresh, False)

    @property
    def active(self) -> bool:
        return self._filter is not None and not self.closed

    def resync(self, reply: SubscribeReply) -> None:
        """Hand over what differs between a fresh read and what the subscription holds."""
        changes = sorted(reply.items, key=lambda c: c.version)
        present = {c.stored for c in reply.items}
        for stored, (version, deleted) in list(self._held.items()):
            parts = split_stored(stored)
            if deleted or stored in present or parts is None:
                continue
            group, label, key = parts
            changes.append(Change(stored, key, group, label, version, True))
        self.offer(changes)

    def end(self, code: Code | None = None, message: str = "") -> None:
        if self.closed:
            return
        self.closed = True
        self._end(code, message)


class ConfigurationHub:
    """The subscriptions of one front, by id and by component."""

    def __init__(self, forwarder: Forwarder) -> None:
        self._forwarder = forwarder
        self._listening: dict[str, Any] = {}
        self._by_component: dict[str, set[Subscription]] = {}
        self._by_id: dict[str, Subscription] = {}
        self._lock = asyncio.Lock()
        self._stopped = False
        self._resync_task: asyncio.Task[None] | None = None
        self._resync_again = False
        forwarder.bus.add_reconnect_listener(self._reconnected)

    @property
    def subscriptions(self) -> int:
        return len(self._by_id)

    async def open(
        self,
        request: pb.SubscribeConfigurationRequest,
        context: grpc.aio.ServicerContext[Any, Any] | None,
        deliver: Deliver,
        end: End,
        *,
        contents: bool = True,
        traceparent: str | None = None,
    ) -> Subscription:
        """A live subscription whose first message is already delivered; FrontError if refused.
        Without ``contents`` the first message's items carry only keys and versions. Without a
        gRPC ``context`` (an HTTP subscribe) the read takes the bus's default timeout."""
        if self._stopped:
            raise FrontError(Code.UNAVAILABLE, "l8 is shutting down")
        component = self._forwarder.component(API, request.store_name)
        await self._listen(component)
        sub = Subscription(component, request, deliver, end)
        self._by_component.setdefault(component, set()).add(sub)
        try:
            if context is not None:
                timeout, traceparent = self._forwarder.timeout(context), self._forwarder.traceparent(context)
            else:
                timeout = self._forwarder.default_timeout
            op = "subscribe" if contents else "versions"
            reply = await self._subscribe(component, request, timeout, traceparent, op)
            if sub.closed:
                raise FrontError(Code.UNAVAILABLE, "l8 is shutting down")
            sub.activate(reply)
        except BaseException:
            self._forget(sub)
            raise
        self._by_id[sub.id] = sub
        return sub

    async def _subscribe(
        self,
        component: str,
        request: pb.SubscribeConfigurationRequest,
        timeout: float,
        traceparent: str | None = None,
        op: str = "subscribe",
    ) -> SubscribeReply:
        fwd = self._forwarder
        data = await fwd.call(
            fwd.subject(API, component, op),
            request.SerializeToString(),
            timeout=timeout,
            traceparent=traceparent,
            what=f"configuration store {component!r}",
        )
        return SubscribeReply.decode(data)

    async def _listen(self, component: str) -> None:
        async with self._lock:
            if component in self._listening:
                return
            bus = self._forwarder.bus
            subject = changes_subject(self._forwarder.namespace, API, component)
            self._listening[component] = await bus.subscribe(subject, "", self._dispatcher(component))
            # The server must know of this listener before a subscription reads its seed.
            await server_has_seen(bus.nc)

    def _dispatcher(self, component: str) -> Callable[[Msg], Any]:
        async def dispatch(msg: Msg) -> None:
            try:
                changes = decode_changes(msg.data)
            except (ValueError, KeyError, TypeError) as exc:
                log.warning("unreadable change event on %s: %s", msg.subject, exc)
                return
            for sub in list(self._by_component.get(component, ())):
                try:
                    sub.offer(changes)
                except Exception as exc:
                    # One subscriber's failure ends that subscription only.
                    log.exception("configuration subscription %s failed", sub.id)
                    sub.end(Code.INTERNAL, f"the subscription failed: {exc}")
                    self._forget(sub)

        return dispatch

    # ---- after a reconnect ----

    def _reconnected(self) -> None:
        if self._stopped or not self._by_id:
            return
        if self._resync_task is not None and not self._resync_task.done():
            self._resync_again = True
            return
        self._resync_task = asyncio.create_task(self._resync_all(), name="l8-config-resync")

    async def _resync_all(self) -> None:
        """Read every subscription's items again; retry those whose worker cannot answer yet."""
        delay = 0.1
        waiting = set(self._by_id.values())
        while waiting and not self._stopped:
            self._resync_again = False
            for sub in list(waiting):
                if not sub.active:
                    waiting.discard(sub)
                    continue
                timeout = self._forwarder.default_timeout
                try:
                    reply = await self._subscribe(sub.component, sub.request, timeout)
                except FrontError as exc:
                    log.info("configuration subscription %s: resync failed (%s); retrying", sub.id, exc.message)
                    continue
                waiting.discard(sub)
                try:
                    sub.resync(reply)
                except Exception as exc:
                    log.exception("configuration subscription %s failed", sub.id)
                    sub.end(Code.INTERNAL, f"the subscription failed: {exc}")
                    self._forget(sub)
            if self._resync_again:
                waiting = set(self._by_id.values())
                delay = 0.1
            elif waiting:
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    def close(self, sub: Subscription) -> None:
        """Forget a subscription whose stream is over."""
        sub.closed = True
        self._forget(sub)

    def unsubscribe(self, sub_id: str, store_name: str) -> tuple[bool, str]:
        sub = self._by_id.get(sub_id)
        if sub is None:
            return False, f"configuration subscription {quote(sub_id)} does not exist"
        if store_name and store_name != sub.store_name:
            return False, f"configuration subscription {quote(sub_id)} belongs to store {quote(sub.store_name)}"
        self._forget(sub)
        sub.end()
        return True, ""

    def _forget(self, sub: Subscription) -> None:
        self._by_id.pop(sub.id, None)
        subs = self._by_component.get(sub.component)
        if subs is not None:
            subs.discard(sub)

    async def stop(self) -> None:
        """End every subscription, then stop listening."""
        self._stopped = True
        task, self._resync_task = self._resync_task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        for subs in list(self._by_component.values()):
            for sub in list(subs):
                sub.end(Code.UNAVAILABLE, "l8 is shutting down; subscribe again")
        self._by_component.clear()
        self._by_id.clear()
        async with self._lock:
            listening, self._listening = self._listening, {}
        for nats_sub in listening.values():
            try:
                await nats_sub.unsubscribe()
            except Exception as exc:  # the bus may already be gone
                log.debug("unsubscribe failed: %s", exc)
