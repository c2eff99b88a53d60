"""Delivery of events to the app: push through its AppCallback, pull through streaming subscriptions.

The manager owns one delivery loop per subscription, from config and from the app's
ListTopicSubscriptions (asked in the background, again and again until the app answers, so l8
serves before its app is up). A loop fetches no more than its concurrency allows, calls
OnTopicEvent (or OnBulkTopicEvent) and settles each message only after the app answered: SUCCESS
acks; RETRY, an unknown status or an error redelivers with backoff; DROP or UNIMPLEMENTED
dead-letters (or drops). With concurrency 1 a loop has one event in flight, so a topic's order
holds. Stopping stops fetching, lets deliveries in flight finish, then hands back what was fetched
and not delivered; whatever the app did not acknowledge is redelivered by the broker.

The transport to the app lives here; what an event is, how it routes and how it settles is the
pub/sub handler's (handlers/pubsub.py), and the broker is any bridge of kind ``pubsub``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from bridges import registry
from bridges.errors import BackendUnavailable, InvalidArgument, L8Error
from bridges.protocols import PubSub, Received, Subscription
from bridges.registry import BridgeEnv
from handlers.pubsub import (
    Backoff,
    Event,
    MalformedEvent,
    Settler,
    Verdict,
    decode,
)
from handlers.pubsub_rules import Routes, RuleError
from runtime.app_channel import AppCallError, AppChannel, AppSubscription, AppUnavailable, BulkEntry
from runtime.app_dapr import bulk_request, event_fields, topic_event_request  # noqa: F401
from runtime.config import Config, SubscriptionConfig

log = logging.getLogger("l8.runtime.subscriber")

SUCCESS, RETRY, DROP = 0, 1, 2
_FETCH_WAIT = 0.5  # how long one fetch waits; bounds how soon a stop is noticed
_DISCOVERY_BACKOFF = (0.2, 2.0)


@dataclass(slots=True, frozen=True)
class Spec:
    """One subscription, whichever way it was declared."""

    pubsub: str
    topic: str
    routes: Routes = field(default_factory=Routes)
    dead_letter_topic: str | None = None
    bulk: bool = False
    bulk_max_messages: int = 100
    bulk_max_await: float = 1.0
    concurrency: int = 32
    max_deliveries: int = 0
    backoff: Backoff = field(default_factory=Backoff)
    origin: str = "config"

    @property
    def ordered(self) -> bool:
        return self.concurrency == 1

    @classmethod
    def from_config(cls, sub: SubscriptionConfig) -> Spec:
        return cls(
            pubsub=sub.pubsub,
            topic=sub.topic,
            routes=Routes.of([(r.match, r.path) for r in sub.rules], sub.route),
            dead_letter_topic=sub.deadLetterTopic or None,
            bulk=sub.bulk.enabled,
            bulk_max_messages=sub.bulk.maxMessages,
            bulk_max_await=sub.bulk.maxAwaitMs / 1000,
            concurrency=sub.concurrency,
            max_deliveries=sub.maxDeliveries,
            backoff=Backoff(sub.backoff.initial, sub.backoff.max),
        )

    @classmethod
    def from_app(cls, sub: AppSubscription) -> Spec:
        """From the app's declaration; ``metadata`` may carry l8's concurrency and max deliveries."""
        meta = sub.metadata
        rules = list(sub.rules)
        return cls(
            pubsub=sub.pubsub,
            topic=sub.topic,
            routes=Routes.of(rules, sub.default_route if sub.default_route or not rules else None),
            dead_letter_topic=sub.dead_letter_topic,
            bulk=sub.bulk,
            bulk_max_messages=sub.bulk_max_messages or 100,
            bulk_max_await=(sub.bulk_max_await_ms or 1000) / 1000,
            concurrency=max(1, int(meta.get("concurrency", "32"))),
            max_deliveries=max(0, int(meta.get("maxDeliveries", "0"))),
            origin="app",
        )


class Bridges:
    """The pub/sub bridges by component name: the ones this process's workers serve, else its own."""

    def __init__(self, config: Config, env: BridgeEnv, served: dict[str, PubSub]) -> None:
        self._config = config
        self._env = env
        self._served = served
        self._own: dict[str, PubSub] = {}
        self._lock = asyncio.Lock()

    def configured(self) -> list[str]:
        return list(self._config.components_of("pubsub"))

    async def get(self, name: str) -> PubSub:
        bridge = self._served.get(name) or self._own.get(name)
        if bridge is not None:
            return bridge
        async with self._lock:
            bridge = self._own.get(name)
            if bridge is None:
                comp = self._config.components_of("pubsub").get(name)
                if comp is None:
                    raise InvalidArgument(
                        f"pub/sub component {name!r} is not configured; configured: "
                        f"{', '.join(self.configured()) or 'none'}"
                    )
                created: PubSub = registry.create("pubsub", comp.type, name, comp.metadata, self._env)
                await created.start()
                bridge = self._own[name] = created
            return bridge

    async def stop(self) -> None:
        while self._own:
            _name, bridge = self._own.popitem()
            try:
                await bridge.stop()
            except Exception as exc:
                log.warning("pub/sub bridge did not stop cleanly: %s", exc)


def _verdict_of_status(status: int) -> Verdict:
    if status == SUCCESS:
        return Verdict.ACK
    if status == DROP:
        return Verdict.DROP
    return Verdict.RETRY  # RETRY and any status l8 does not know


def _verdict_of_error(exc: BaseException) -> tuple[Verdict, str]:
    if isinstance(exc, AppCallError):
        why = f"the app answered {exc.code.value}: {exc.message}".strip()
        if exc.code == "UNIMPLEMENTED":
            return Verdict.DROP, why
        return Verdict.RETRY, why
    return Verdict.RETRY, f"{type(exc).__name__}: {exc}"


def _app_down(exc: BaseException) -> bool:
    return isinstance(exc, AppUnavailable)


class _Loop:
    """The delivery loop of one push subscription."""

    def __init__(self, spec: Spec, manager: SubscriberManager) -> None:
        self.spec = spec
        self._m = manager
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._inflight: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(spec.concurrency)
        self._settler: Settler | None = None
        self._app_down_until = 0.0
        self._down_backoff = 0.0

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"l8-deliver-{self.spec.pubsub}-{self.spec.topic}")

    async def stop(self) -> None:
        self._stopping.set()
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)

    async def _subscribe(self) -> tuple[PubSub, Subscription] | None:
        spec = self.spec
        delay = 0.2
        while not self._stopping.is_set():
            try:
                bridge = await self._m.bridges.get(spec.pubsub)
                in_flight = spec.concurrency * (spec.bulk_max_messages if spec.bulk else 1)
                sub = await bridge.subscribe(spec.topic, self._m.app_id, max_in_flight=in_flight, ordered=spec.ordered)
                return bridge, sub
            except (L8Error, OSError) as exc:
                log.warning("subscribing to %s/%s failed, trying again: %s", spec.pubsub, spec.topic, exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)
            delay = min(delay * 2, 5.0)
        return None

    async def _run(self) -> None:
        got = await self._subscribe()
        if got is None:
            return
        bridge, sub = got
        spec = self.spec
        self._settler = Settler(
            bridge, dead_letter_topic=spec.dead_letter_topic, max_deliveries=spec.max_deliveries, backoff=spec.backoff
        )
        log.info(
            "delivering %s/%s to the app (%s, concurrency %d%s)",
            spec.pubsub,
            spec.topic,
            spec.origin,
            spec.concurrency,
            ", bulk" if spec.bulk else "",
        )
        try:
            while not self._stopping.is_set():
                wait = self._app_down_until - time.monotonic()
                if wait > 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._stopping.wait(), wait)
                    continue
                await self._slots.acquire()
                if self._stopping.is_set():
                    self._slots.release()
                    break
                try:
                    batch = await self._fetch(sub)
                except L8Error as exc:
                    self._slots.release()
                    log.warning("fetching %s/%s failed: %s", spec.pubsub, spec.topic, exc)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._stopping.wait(), 1.0)
                    continue
                if not batch:
                    self._slots.release()
                    continue
                if self._stopping.is_set():
                    self._slots.release()
                    await self._hand_back(batch)
                    break
                if spec.bulk:
                    self._spawn(self._deliver_bulk(batch))
                    continue
                # One slot is held for the first event; the others wait for theirs, in order.
                self._spawn(self._deliver_one(batch[0]))
                for i, received in enumerate(batch[1:], 1):
                    if self._stopping.is_set():
                        await self._hand_back(batch[i:])
                        break
                    await self._slots.acquire()
                    if self._stopping.is_set():
                        self._slots.release()
                        await self._hand_back(batch[i:])
                        break
                    self._spawn(self._deliver_one(received))
        finally:
            # Deliveries in flight finish (the app answers, the message settles); then the rest goes back.
            if self._inflight:
                await asyncio.gather(*list(self._inflight), return_exceptions=True)
            await sub.close()

    async def _fetch(self, sub: Subscription) -> list[Received]:
        spec = self.spec
        if not spec.bulk:
            # Ask for a full window: the broker holds back what is past max_ack_pending anyway, and
            # one pull per window costs far less than one per freed slot.
            return await sub.fetch(spec.concurrency, _FETCH_WAIT)
        batch = await sub.fetch(spec.bulk_max_messages, _FETCH_WAIT)
        if not batch:
            return batch
        deadline = time.monotonic() + spec.bulk_max_await
        while len(batch) < spec.bulk_max_messages and not self._stopping.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                break
            more = await sub.fetch(spec.bulk_max_messages - len(batch), min(left, _FETCH_WAIT))
            batch.extend(more)
        return batch

    def _spawn(self, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.create_task(coro)
        self._inflight.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._inflight.discard(task)
        self._slots.release()
        if not task.cancelled() and task.exception() is not None:
            log.error("a delivery failed unexpectedly", exc_info=task.exception())

    async def _hand_back(self, batch: list[Received]) -> None:
        for received in batch:
            with contextlib.suppress(L8Error):
                await received.retry(0)

    def _note_app(self, exc: BaseException | None) -> None:
        if exc is not None and _app_down(exc):
            self._down_backoff = min(max(self._down_backoff * 2, 0.1), 2.0)
            self._app_down_until = time.monotonic() + self._down_backoff
        elif exc is None:
            self._down_backoff = 0.0

    async def _prepare(self, received: Received) -> tuple[Event, str] | None:
        """The event and its path, or None when it was settled here (malformed, expired, unrouted)."""
        assert self._settler is not None
        spec = self.spec
        try:
            event = decode(received.data, received.headers, spec.pubsub, received.topic)
        except MalformedEvent as exc:
            await self._settler.settle(received, Verdict.DROP, f"malformed event: {exc}")
            return None
        if event.expired():
            await self._settler.settle(received, Verdict.DROP, "expired")
            return None
        path = spec.routes.route(event)
        if path is None:
            await self._settler.settle(received, Verdict.DROP, "no route matched")
            return None
        return event, path

    async def _deliver_one(self, received: Received) -> None:
        assert self._settler is not None
        try:
            prepared = await self._prepare(received)
            if prepared is None:
                return
            event, path = prepared
            why = ""
            assert self._m.app is not None
            try:
                status = await self._m.app.on_event(
                    event, path, timeout=self._m.delivery_timeout, metadata=list(_call_metadata(event))
                )
                verdict = _verdict_of_status(status)
                if verdict is Verdict.RETRY:
                    why = "the app asked to retry"
                elif verdict is Verdict.DROP:
                    why = "the app dropped it"
                self._note_app(None)
            except AppCallError as exc:
                verdict, why = _verdict_of_error(exc)
                self._note_app(exc)
            await self._settler.settle(received, verdict, why)
        except L8Error as exc:
            log.warning("settling an event of %s/%s failed: %s", self.spec.pubsub, self.spec.topic, exc)

    async def _deliver_bulk(self, batch: list[Received]) -> None:
        assert self._settler is not None
        by_path: dict[str, list[tuple[str, Received, Event]]] = {}
        try:
            for i, received in enumerate(batch):
                prepared = await self._prepare(received)
                if prepared is not None:
                    event, path = prepared
                    by_path.setdefault(path, []).append((str(i), received, event))
            await asyncio.gather(*(self._bulk_call(path, entries) for path, entries in by_path.items()))
        except L8Error as exc:
            log.warning("settling events of %s/%s failed: %s", self.spec.pubsub, self.spec.topic, exc)

    async def _bulk_call(self, path: str, entries: list[tuple[str, Received, Event]]) -> None:
        assert self._settler is not None
        spec = self.spec
        statuses: dict[str, int] = {}
        failure: BaseException | None = None
        assert self._m.app is not None
        try:
            statuses = await self._m.app.on_bulk_event(
                spec.pubsub,
                spec.topic,
                path,
                [BulkEntry(eid, ev) for eid, _r, ev in entries],
                timeout=self._m.delivery_timeout,
            )
            self._note_app(None)
        except AppCallError as exc:
            failure = exc
            self._note_app(exc)
        for eid, received, _event in entries:
            if failure is None and statuses.get(eid) == SUCCESS:
                await received.ack()  # the common case, without the settler's bookkeeping
                continue
            if failure is not None:
                verdict, why = _verdict_of_error(failure)
            elif eid not in statuses:
                verdict, why = Verdict.RETRY, "the app gave no status for it"
            else:
                verdict = _verdict_of_status(statuses[eid])
                why = "the app dropped it" if verdict is Verdict.DROP else "the app asked to retry"
            await self._settler.settle(received, verdict, why)


def _free(sem: asyncio.Semaphore) -> int:
    return max(0, sem._value)


def _call_metadata(event: Event) -> tuple[tuple[str, str], ...]:
    return (("traceparent", event.traceparent),) if event.traceparent else ()


class StreamSession:
    """One streaming (pull) subscription: events out, ``processed`` statuses in."""

    def __init__(self, spec: Spec, bridge: PubSub, sub: Subscription, max_in_flight: int) -> None:
        self.spec = spec
        self._sub = sub
        self._settler = Settler(bridge, dead_letter_topic=spec.dead_letter_topic, backoff=spec.backoff)
        self._pending: dict[str, list[Received]] = {}
        self._slots = asyncio.Semaphore(max_in_flight)
        self._max_in_flight = max_in_flight
        self._closed = asyncio.Event()

    async def events(self) -> AsyncIterator[Event]:
        while not self._closed.is_set():
            await self._slots.acquire()
            if self._closed.is_set():
                self._slots.release()
                return
            free = 1 + _free(self._slots)
            try:
                batch = await self._sub.fetch(free, _FETCH_WAIT)
            except BackendUnavailable as exc:
                self._slots.release()
                log.warning("stream %s/%s: %s", self.spec.pubsub, self.spec.topic, exc)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._closed.wait(), 1.0)
                continue
            self._slots.release()
            for received in batch:
                try:
                    event = decode(received.data, received.headers, self.spec.pubsub, received.topic)
                except MalformedEvent as exc:
                    await self._settler.settle(received, Verdict.DROP, f"malformed event: {exc}")
                    continue
                if event.expired():
                    await self._settler.settle(received, Verdict.DROP, "expired")
                    continue
                await self._slots.acquire()
                self._pending.setdefault(event.id, []).append(received)
                yield event

    async def processed(self, event_id: str, status: int) -> None:
        waiting = self._pending.get(event_id)
        if not waiting:
            return  # unknown or already settled: a late or repeated answer changes nothing
        received = waiting.pop(0)
        if not waiting:
            del self._pending[event_id]
        self._slots.release()
        verdict = _verdict_of_status(status)
        why = "the subscriber dropped it" if verdict is Verdict.DROP else "the subscriber asked to retry"
        try:
            await self._settler.settle(received, verdict, why)
        except L8Error as exc:
            log.warning("settling a streamed event failed: %s", exc)

    async def close(self) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        self._pending.clear()
        for _ in range(self._max_in_flight + 1):
            self._slots.release()  # wakes a producer waiting for a slot, which then sees the close
        await self._sub.close()  # what was sent and not answered goes back to the broker


class SubscriberManager:
    """Owns the delivery loops of this sidecar and opens streaming subscriptions for its fronts."""

    def __init__(self, config: Config, app: AppChannel | None, bridges: Bridges) -> None:
        self.config = config
        self.app = app
        self.bridges = bridges
        self.app_id = config.app.id
        self.delivery_timeout = config.delivery_timeout
        self.loops: dict[tuple[str, str], _Loop] = {}
        self._sessions: set[StreamSession] = set()
        self._discovery: asyncio.Task[None] | None = None
        self._stopped = asyncio.Event()
        self._started = False

    def specs(self) -> list[Spec]:
        return [loop.spec for loop in self.loops.values()]

    async def start(self) -> None:
        if self._started:
            return
        self._started = True
        for sub in self.config.subscriptions:
            self._add(Spec.from_config(sub))
        if self.app is not None:
            self._discovery = asyncio.create_task(self._discover(), name="l8-list-topic-subscriptions")

    def _add(self, spec: Spec) -> None:
        key = (spec.pubsub, spec.topic)
        if key in self.loops:
            log.info("subscription %s/%s from the %s: the config's declaration wins", *key, spec.origin)
            return
        loop = self.loops[key] = _Loop(spec, self)
        loop.start()

    async def _discover(self) -> None:
        assert self.app is not None
        delay = _DISCOVERY_BACKOFF[0]
        while not self._stopped.is_set():
            try:
                found = await self.app.list_subscriptions(timeout=5)
            except AppCallError as exc:
                log.debug("ListTopicSubscriptions: %s; asking again in %.1fs", exc.code.value, delay)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopped.wait(), delay)
                delay = min(delay * 2, _DISCOVERY_BACKOFF[1])
                continue
            if found is None:
                log.info("the app lists no topic subscriptions")
                return
            configured = self.bridges.configured()
            for sub in found:
                if sub.pubsub not in configured:
                    log.error(
                        "the app subscribes to %r on pub/sub %r, which is not configured; configured: %s",
                        sub.topic,
                        sub.pubsub,
                        ", ".join(configured) or "none",
                    )
                    continue
                try:
                    self._add(Spec.from_app(sub))
                except (RuleError, ValueError) as exc:
                    log.error("the app's subscription to %s/%s is not usable: %s", sub.pubsub, sub.topic, exc)
            return

    async def open_stream(
        self, pubsub: str, topic: str, dead_letter_topic: str | None, metadata: dict[str, str]
    ) -> StreamSession:
        if not topic:
            raise InvalidArgument("topic is required")
        bridge = await self.bridges.get(pubsub)
        try:
            max_in_flight = max(1, int(metadata.get("maxInFlight", "100")))
        except ValueError:
            raise InvalidArgument(f"maxInFlight {metadata.get('maxInFlight')!r} is not a number") from None
        spec = Spec(pubsub=pubsub, topic=topic, dead_letter_topic=dead_letter_topic or None, origin="stream")
        sub = await bridge.subscribe(topic, self.app_id, max_in_flight=max_in_flight)
        session = StreamSession(spec, bridge, sub, max_in_flight)
        self._sessions.add(session)
        return session

    async def close_stream(self, session: StreamSession) -> None:
        self._sessions.discard(session)
        await session.close()

    async def stop(self) -> None:
        self._stopped.set()
        if self._discovery is not None:
            self._discovery.cancel()
            await asyncio.gather(self._discovery, return_exceptions=True)
        await asyncio.gather(*(loop.stop() for loop in self.loops.values()))
        for session in list(self._sessions):
            await self.close_stream(session)
        await self.bridges.stop()
        if self.app is not None:
            await self.app.close()
