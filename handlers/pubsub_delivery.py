"""Delivery loops: the pub/sub worker's half of event routing.

One ``DeliveryLoop`` per announced subscription consumes its topic in the target's consumer group
(``group`` = the target's id, so every worker that runs the loop shares the group and adding a
worker adds capacity), turns each message into an event, routes it to a path, hands it to the
``Router`` (which carries it over the bus to the target: an app's sidecars, a stream, or another
kind of target) and settles it with the broker only after the target answered.

What it guarantees:
- It fetches only what its free capacity can take, and renews the broker's lease on every
  message it holds (``Received.touch``) while the target works, so a slow target does not get a
  second copy of an event it still holds.
- A target that cannot be reached (no sidecar answers, the app is down) is not a failed delivery:
  the event is held and offered again with backoff, and counts against no delivery limit.
- Any failure while preparing or delivering one event (an undecodable payload, a bad header, an
  exception anywhere) settles that event (to the dead-letter topic if there is one, else dropped)
  with an ERROR naming the component, the topic and the event, and the next one flows.
- Bulk subscriptions deliver batches of up to ``bulk_max_messages``, waiting up to
  ``bulk_max_await_ms`` to fill one; with concurrency 1 one batch is in flight at a time.
- Stopping stops fetching, lets deliveries in flight finish (a held one is handed back), and
  closes the subscription, which hands back whatever was fetched and not settled.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from bridges.errors import L8Error
from bridges.protocols import EventSource, Received, Subscription
from handlers.pubsub_envelope import Event, MalformedEvent, decode
from handlers.pubsub_settle import Backoff, Settler, Verdict
from handlers.pubsub_specs import Spec

log = logging.getLogger("l8.handlers.pubsub.delivery")

_FETCH_WAIT = 0.5  # how long one fetch waits; bounds how soon a stop is noticed
_UNREACHABLE_BACKOFF = (0.1, 2.0)
_RETRY_LOG_EVERY = 10.0


class Outcome(enum.IntEnum):
    """A target's answer for one event; the numbers travel on the bus."""

    SUCCESS = 0
    RETRY = 1
    DROP = 2
    UNREACHABLE = 3  # nobody took it: not a delivery, offer it again later


@dataclass(slots=True)
class Delivery:
    received: Received
    event: Event
    path: str


class Router(Protocol):
    """Carries events to the target a subscription names; the seam between delivery and targets."""

    async def deliver(self, spec: Spec, batch: Sequence[Delivery]) -> list[tuple[Outcome, str]]:
        """Deliver one event, or one bulk batch, within ``spec.timeout``: an outcome and a reason per
        delivery, in order. Expected failures (no target, a timeout) are outcomes, never raised."""
        ...


# (spec, state, reason): "starting", "delivering", "unreachable", "failing", "stopped".
Reporter = Callable[[Spec, str, str], None]


class _RetryLog:
    """WARN about RETRY answers at most once per period per subscription, with a count."""

    def __init__(self, what: str) -> None:
        self._what = what
        self._next = 0.0
        self._count = 0

    def note(self, event_id: str, why: str) -> None:
        self._count += 1
        now = time.monotonic()
        if now < self._next:
            return
        log.warning(
            "%s: %s for event %s; redelivering with backoff (%d such answers since the last report)",
            self._what,
            why,
            event_id,
            self._count,
        )
        self._count = 0
        self._next = now + _RETRY_LOG_EVERY


class DeliveryLoop:
    def __init__(self, component: str, spec: Spec, bridge: EventSource, router: Router, report: Reporter) -> None:
        self.component = component
        self.spec = spec
        self._bridge = bridge
        self._router = router
        self._report = report
        self._what = f"pub/sub {component!r} topic {spec.topic!r} for {spec.target} {spec.app!r}"
        self._settler = Settler(
            bridge,
            dead_letter_topic=spec.dead_letter_topic,
            max_deliveries=spec.max_deliveries,
            backoff=Backoff(spec.backoff_initial, spec.backoff_max),
        )
        self._retries = _RetryLog(self._what)
        self._stopping = asyncio.Event()
        self._freed = asyncio.Event()
        self._inflight: set[asyncio.Task[None]] = set()
        self._held: set[Received] = set()
        # Slots: events with the target at once, or batches for a bulk subscription.
        self._free = spec.concurrency
        self._unreachable = 0

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def stop(self) -> None:
        self._stopping.set()
        self._freed.set()

    async def wait_stopping(self, timeout: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), timeout)

    async def run(self) -> None:
        """Deliver until ``stop()``; raises when the subscription cannot go on (the caller restarts it)."""
        spec = self.spec
        self._report(spec, "starting", "")
        window = spec.concurrency * (spec.bulk_max_messages if spec.bulk else 1)
        sub = await self._bridge.subscribe(
            spec.topic, spec.app, max_in_flight=window, ordered=spec.ordered and not spec.bulk
        )
        keeper = asyncio.create_task(self._keep_leases(sub), name=f"l8-lease-{self.component}-{spec.topic}")
        self._report(spec, "delivering", "")
        log.info(
            "delivering %s (%s, concurrency %d%s)",
            self._what,
            spec.origin,
            spec.concurrency,
            ", bulk" if spec.bulk else "",
        )
        try:
            while not self.stopping:
                if self._free <= 0:
                    self._freed.clear()
                    await self._freed.wait()
                    continue
                batch = await self._fetch(sub)
                if not batch:
                    continue
                if self.stopping:
                    await self._hand_back(batch)
                    break
                self._held.update(batch)
                if spec.bulk:
                    self._spawn(self._deliver_bulk(batch))
                else:
                    for received in batch:
                        self._spawn(self._deliver_one(received))
        finally:
            if self._inflight:
                await asyncio.gather(*list(self._inflight), return_exceptions=True)
            keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keeper
            await sub.close()
            self._report(spec, "stopped", "")

    async def _fetch(self, sub: Subscription) -> list[Received]:
        spec = self.spec
        if not spec.bulk:
            return await sub.fetch(self._free, _FETCH_WAIT)
        batch = await sub.fetch(spec.bulk_max_messages, _FETCH_WAIT)
        if not batch:
            return batch
        deadline = time.monotonic() + spec.bulk_max_await_ms / 1000
        while len(batch) < spec.bulk_max_messages and not self.stopping:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            batch.extend(await sub.fetch(spec.bulk_max_messages - len(batch), min(left, _FETCH_WAIT)))
        return batch

    def _spawn(self, coro: object) -> None:
        self._free -= 1
        task: asyncio.Task[None] = asyncio.create_task(coro)  # type: ignore[arg-type]
        self._inflight.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._inflight.discard(task)
        self._free += 1
        self._freed.set()
        if not task.cancelled() and task.exception() is not None:
            log.error("%s: a delivery failed unexpectedly", self._what, exc_info=task.exception())

    async def _keep_leases(self, sub: Subscription) -> None:
        lease = self._bridge.limits.lease_seconds
        if not lease:
            return
        period = max(0.5, lease / 3)
        while True:
            await asyncio.sleep(period)
            held = list(self._held)
            if held:
                await asyncio.gather(*(r.touch() for r in held), return_exceptions=True)
            try:
                await sub.keep_alive()
            except L8Error as exc:
                log.debug("%s: keeping the subscription alive failed: %s", self._what, exc)

    async def _hand_back(self, batch: Sequence[Received]) -> None:
        for received in batch:
            self._held.discard(received)
            with contextlib.suppress(L8Error):
                await received.retry(0)

    async def _settle(self, received: Received, verdict: Verdict, why: str) -> None:
        self._held.discard(received)
        try:
            await self._settler.settle(received, verdict, why)
        except L8Error as exc:
            log.warning("%s: settling %s failed (the broker redelivers it): %s", self._what, received.ref, exc)

    async def _poison(self, received: Received, event_id: str, why: str) -> None:
        log.error("%s: event %s cannot be delivered, %s: %s", self._what, event_id, self._fate(), why)
        await self._settle(received, Verdict.DROP, why)

    def _fate(self) -> str:
        dlq = self.spec.dead_letter_topic
        return f"dead-lettering it to {dlq!r}" if dlq else "dropping it"

    async def _prepare(self, received: Received) -> Delivery | None:
        """The event and its path, or None when it was settled here (malformed, expired, unrouted)."""
        spec = self.spec
        try:
            event = decode(received.data, received.headers, spec.pubsub, received.topic)
        except MalformedEvent as exc:
            await self._poison(received, received.ref, f"malformed event: {exc}")
            return None
        if event.expired():
            log.debug("%s: event %s expired before delivery", self._what, event.id)
            await self._settle(received, Verdict.DROP, "expired")
            return None
        path = spec.routes.route(event)
        if path is None:
            log.debug("%s: event %s matches no route", self._what, event.id)
            await self._settle(received, Verdict.DROP, "no route matched")
            return None
        return Delivery(received, event, path)

    async def _offer(self, batch: list[Delivery]) -> None:
        """Deliver and settle; what the target cannot be reached for is offered again with backoff."""
        delay = _UNREACHABLE_BACKOFF[0]
        while batch:
            outcomes = await self._router.deliver(self.spec, batch)
            waiting = [d for d, (o, _) in zip(batch, outcomes, strict=True) if o is Outcome.UNREACHABLE]
            await self._conclude(
                [(d, r) for d, r in zip(batch, outcomes, strict=True) if r[0] is not Outcome.UNREACHABLE]
            )
            if not waiting:
                if self._unreachable:
                    self._unreachable = 0
                    self._report(self.spec, "delivering", "")
                return
            if self.stopping:
                await self._hand_back([d.received for d in waiting])
                return
            why = next(w for o, w in outcomes if o is Outcome.UNREACHABLE)
            if not self._unreachable:
                log.warning("%s: the target is unreachable, holding its events: %s", self._what, why)
            self._unreachable += 1
            self._report(self.spec, "unreachable", why)
            batch = waiting
            await self.wait_stopping(delay)
            delay = min(delay * 2, _UNREACHABLE_BACKOFF[1])

    async def _conclude(self, results: list[tuple[Delivery, tuple[Outcome, str]]]) -> None:
        for delivery, (outcome, why) in results:
            received = delivery.received
            if outcome is Outcome.SUCCESS:
                self._held.discard(received)
                try:
                    await received.ack()  # the common case, without the settler's bookkeeping
                except L8Error as exc:
                    log.warning("%s: ack of %s failed (the broker redelivers it): %s", self._what, received.ref, exc)
            elif outcome is Outcome.DROP:
                await self._settle(received, Verdict.DROP, why or "the target dropped it")
            else:
                self._retries.note(delivery.event.id, why or "the target asked to retry")
                await self._settle(received, Verdict.RETRY, why or "the target asked to retry")

    async def _deliver_one(self, received: Received) -> None:
        delivery: Delivery | None = None
        try:
            delivery = await self._prepare(received)
            if delivery is None:
                return
            await self._offer([delivery])
        except Exception as exc:
            event_id = delivery.event.id if delivery is not None else received.ref
            if received in self._held:
                await self._poison(received, event_id, f"{type(exc).__name__}: {exc}")
            else:
                log.exception("%s: after event %s was settled", self._what, event_id)

    async def _deliver_bulk(self, batch: list[Received]) -> None:
        by_path: dict[str, list[Delivery]] = {}
        for received in batch:
            try:
                delivery = await self._prepare(received)
            except Exception as exc:
                await self._poison(received, received.ref, f"{type(exc).__name__}: {exc}")
                continue
            if delivery is not None:
                by_path.setdefault(delivery.path, []).append(delivery)
        await asyncio.gather(*(self._deliver_group(group) for group in by_path.values()))

    async def _deliver_group(self, group: list[Delivery]) -> None:
        try:
            await self._offer(group)
        except Exception as exc:
            for delivery in group:
                if delivery.received in self._held:
                    await self._poison(delivery.received, delivery.event.id, f"{type(exc).__name__}: {exc}")
