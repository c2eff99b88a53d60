"""The consumer side of Redis Streams pub/sub: one group consumer per subscription, and what it holds.

Each subscription is one consumer of its group (a unique consumer name), reading new entries with
``XREADGROUP >`` on a connection of its own, because a blocking read holds its connection for the
whole wait. A message stays in the group's pending entries list (PEL) until it is settled:
``ack`` and ``drop`` are ``XACK``; ``retry(delay)`` keeps it pending and hands it out again after
the delay, with the PEL's delivery counter raised so ``attempt`` survives a takeover.

A consumer refreshes the idle time of everything it holds every ``processingTimeout / 3``; an
entry idle longer than ``processingTimeout`` therefore belongs to a consumer that died, and the
group's other consumers take it over with ``XAUTOCLAIM`` (``attempt`` = the PEL's delivery count).
Closing a subscription marks what it held as idle at once, so the others take it without waiting.

An ordered subscription has one message in flight; with one subscriber per group that is the
stream's order. An entry whose ``expires`` field (unix ms) has passed is acked at fetch and never
handed out.

The Lua scripts a consumer runs (refreshing what it holds, pruning departed consumers) are
registered once per component by ``RedisPubSub.start`` in ``bridges/redis/pubsub.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import json
import logging
import time
from typing import TYPE_CHECKING, Any

import redis.asyncio as aioredis
import redis.exceptions

from bridges.errors import InvalidArgument, L8Error
from bridges.redis.client import map_redis_errors

if TYPE_CHECKING:
    from bridges.redis.pubsub import RedisPubSub

log = logging.getLogger(__name__)

_PRUNE_EVERY = 300.0  # seconds between sweeps of a group's departed consumers, per subscription
_PRUNE_IDLE_MS = 3_600_000


def _id_order(msg_id: bytes) -> tuple[int, int]:
    ms, _, seq = msg_id.partition(b"-")
    return int(ms), int(seq or 0)


def _headers(raw: bytes | None) -> dict[str, str]:
    # Entries written by other producers may carry no headers, or headers in another shape.
    if not raw:
        return {}
    try:
        found = json.loads(raw)
    except ValueError:
        return {}
    return {str(k): str(v) for k, v in found.items()} if isinstance(found, dict) else {}


def _cancelling() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


class RedisReceived:
    __slots__ = ("_settled", "_sub", "attempt", "data", "due", "headers", "id", "topic")

    def __init__(
        self, sub: RedisSubscription, msg_id: bytes, data: bytes, headers: dict[str, str], attempt: int
    ) -> None:
        self._sub = sub
        self._settled = False
        self.id = msg_id
        self.data = data
        self.headers = headers
        self.topic = sub.topic
        self.attempt = attempt
        self.due = 0.0

    async def ack(self) -> None:
        await self._sub.settle(self)

    async def drop(self) -> None:
        await self._sub.settle(self)

    async def retry(self, delay: float) -> None:
        self._sub.retry(self, max(0.0, delay))

    @property
    def ref(self) -> str:
        return f"stream id {self.id.decode(errors='replace')}"

    async def touch(self) -> None:
        """Nothing to do: the subscription refreshes the idle time of everything it holds."""


class RedisSubscription:
    def __init__(self, pubsub: RedisPubSub, topic: str, group: str, consumer: str, max_in_flight: int) -> None:
        self._pubsub = pubsub
        self.topic = topic
        self.group = group
        self.consumer = consumer
        self._max_in_flight = max_in_flight
        self._held: dict[bytes, RedisReceived] = {}  # handed out or waiting to be retried, unsettled
        self._retries: list[tuple[float, int, RedisReceived]] = []
        self._seq = itertools.count()
        self._changed = asyncio.Event()
        self._fetch_lock = asyncio.Lock()
        self._reader: Any = None
        self._reading: asyncio.Future[Any] | None = None
        self._keepalive: asyncio.Task[None] | None = None
        self._next_claim = 0.0
        self._next_prune = time.monotonic() + _PRUNE_EVERY
        self._claim_cursor: bytes | str = "0-0"
        self._acks: list[bytes] = []
        self._ack_task: asyncio.Task[None] | None = None
        self._closed = False

    async def start(self) -> None:
        # Its own connection: XREADGROUP BLOCK holds one for the whole wait, which must not starve
        # the shared pool that publishes and acks use.
        self._reader = aioredis.Redis.from_url(self._pubsub._url, single_connection_client=True)
        self._keepalive = asyncio.create_task(self._keep_alive(), name=f"redis-keepalive-{self.topic}")

    # ---- settling ----

    async def settle(self, msg: RedisReceived) -> None:
        # The XACK goes out in the background, batched with the acks that come while one is on the
        # wire, so a subscriber that acks one message at a time does not pay a round trip each.
        # An ack that never reaches Redis leaves the message pending: taken over and redelivered.
        if msg._settled or self._closed:
            return
        msg._settled = True
        if self._held.pop(msg.id, None) is not None:
            self._changed.set()
        self._queue_acks([msg.id])

    def _queue_acks(self, ids: list[bytes]) -> None:
        self._acks += ids
        if self._ack_task is None or self._ack_task.done():
            self._ack_task = asyncio.create_task(self._flush_acks(), name=f"redis-ack-{self.topic}")

    async def _flush_acks(self) -> None:
        while self._acks:
            ids, self._acks = self._acks, []
            try:
                await self._pubsub.redis.xack(self.topic, self.group, *ids)
            except (redis.exceptions.RedisError, L8Error) as exc:
                log.warning("pubsub %r: XACK on %r failed: %r", self._pubsub.name, self.topic, exc)
                if self._closed:
                    return
                self._acks[:0] = ids
                await asyncio.sleep(0.5)

    def retry(self, msg: RedisReceived, delay: float) -> None:
        if msg._settled or msg.id not in self._held:
            return
        msg.due = time.monotonic() + delay
        heapq.heappush(self._retries, (msg.due, next(self._seq), msg))
        self._changed.set()

    async def _keep_alive(self) -> None:
        period = self._pubsub.processing_timeout / 3
        while True:
            await asyncio.sleep(period)
            ids = list(self._held)
            if not ids:
                continue
            try:
                owned = set(await self._refresh([(i, None) for i in ids]))
            except redis.exceptions.RedisError as exc:
                log.warning(
                    "pubsub %r: refreshing pending messages on %r failed: %r", self._pubsub.name, self.topic, exc
                )
                continue
            for i in ids:
                if i not in owned:
                    # Taken over after this process stalled past processingTimeout: the other
                    # consumer delivers it now; our copy no longer counts against max_in_flight.
                    gone = self._held.pop(i, None)
                    if gone is not None:
                        gone._settled = True
                        self._changed.set()

    async def _refresh(self, entries: list[tuple[bytes, int | None]]) -> list[bytes]:
        args: list[Any] = [self.group, self.consumer]
        for msg_id, count in entries:
            args += [msg_id, "" if count is None else count]
        owned: list[bytes] = await self._pubsub.refresh(keys=[self.topic], args=args)
        return owned

    # ---- fetching ----

    def _capacity(self) -> int:
        return self._max_in_flight - len(self._held)

    async def _due(self, limit: int) -> list[RedisReceived]:
        now = time.monotonic()
        due: list[RedisReceived] = []
        while self._retries and len(due) < limit and self._retries[0][0] <= now:
            _, _, msg = heapq.heappop(self._retries)
            if not msg._settled and msg.id in self._held and msg.due <= now:
                due.append(msg)
        if not due:
            return []
        try:
            owned = set(await self._refresh([(m.id, m.attempt + 1) for m in due]))
        except BaseException:
            for msg in due:  # still ours and still waiting: try again on the next fetch
                heapq.heappush(self._retries, (msg.due, next(self._seq), msg))
            raise
        for msg in due:
            msg.attempt += 1
        out = []
        for msg in due:
            if msg.id in owned:
                out.append(msg)
            else:
                self._held.pop(msg.id, None)
        return out

    def _received(self, entries: list[Any], attempts: dict[bytes, int] | None) -> list[RedisReceived]:
        """Hold what is to be handed out; ack (in the background) what is expired or gone."""
        out: list[RedisReceived] = []
        expired: list[bytes] = []
        now_ms = time.time() * 1000
        for msg_id, fields in entries:
            if not fields:  # trimmed by MAXLEN while pending: nothing left to deliver
                expired.append(msg_id)
                continue
            expires = fields.get(b"expires")
            if expires is not None and expires.isdigit() and int(expires) <= now_ms:
                expired.append(msg_id)
                continue
            headers = _headers(fields.get(b"headers"))
            attempt = attempts.get(msg_id, 1) if attempts is not None else 1
            msg = RedisReceived(self, msg_id, fields.get(b"data", b""), headers, attempt)
            self._held[msg_id] = msg
            out.append(msg)
        if expired:
            self._queue_acks(expired)
        return out

    async def _claim(self, count: int) -> list[RedisReceived]:
        """Take over messages a dead consumer of the group left pending."""
        now = time.monotonic()
        if now < self._next_claim:
            return []
        min_idle = int(self._pubsub.processing_timeout * 1000)
        r = self._pubsub.redis
        found = await r.xautoclaim(self.topic, self.group, self.consumer, min_idle, self._claim_cursor, count=count)
        self._claim_cursor, entries = found[0], found[1]
        if self._claim_cursor in (b"0-0", "0-0"):
            self._next_claim = now + self._pubsub.claim_interval
            if now >= self._next_prune:
                self._next_prune = now + _PRUNE_EVERY
                await self._pubsub.prune(keys=[self.topic], args=[self.group, _PRUNE_IDLE_MS])
        if not entries:
            return []
        ids = sorted((e[0] for e in entries), key=_id_order)
        pending = await r.xpending_range(self.topic, self.group, ids[0], ids[-1], len(ids) + 64, self.consumer)
        attempts = {p["message_id"]: int(p["times_delivered"]) for p in pending}
        return self._received(entries, attempts)

    async def _read(self, count: int, wait: float) -> list[RedisReceived]:
        block = int(wait * 1000)
        # A task of its own so that close() can end the wait; entries a cancelled read had taken
        # are still in this consumer's PEL, and close() hands the whole PEL back.
        self._reading = asyncio.ensure_future(
            self._reader.xreadgroup(
                self.group, self.consumer, {self.topic: ">"}, count=count, block=block if block > 0 else None
            )
        )
        try:
            found = await self._reading
        except asyncio.CancelledError:
            if self._closed and not _cancelling():
                return []
            raise
        finally:
            self._reading = None
        if not found:
            return []
        entries = found[0][1]
        return self._received(entries, None)

    async def fetch(self, max_messages: int, timeout: float) -> list[RedisReceived]:
        if max_messages < 1:
            raise InvalidArgument(f"max_messages must be at least 1, got {max_messages}")
        deadline = time.monotonic() + max(0.0, timeout)
        async with self._fetch_lock:
            with map_redis_errors(f"pubsub {self._pubsub.name!r}: fetching from {self.topic!r}"):
                while not self._closed:
                    try:
                        out = await self._fetch_once(max_messages, deadline)
                    except redis.exceptions.ResponseError as exc:
                        if "NOGROUP" not in str(exc):
                            raise
                        # The stream or the group is gone (Redis restarted without persistence, or
                        # someone deleted it): start again from what the stream holds now.
                        log.warning(
                            "pubsub %r: group %r on %r is gone, recreating it",
                            self._pubsub.name,
                            self.group,
                            self.topic,
                        )
                        await self._pubsub.create_group(self.topic, self.group)
                        continue
                    if out is not None:
                        return out
        return []

    async def _fetch_once(self, max_messages: int, deadline: float) -> list[RedisReceived] | None:
        """Messages, [] when the deadline passed, None to go round again."""
        self._changed.clear()
        out = await self._due(max_messages)
        room = min(max_messages - len(out), self._capacity())
        if room > 0:
            out += await self._claim(room)
            room = min(max_messages - len(out), self._capacity())
        if out:
            return out
        now = time.monotonic()
        wait = deadline - now
        if self._retries:
            wait = min(wait, self._retries[0][0] - now)
        wait = max(0.0, min(wait, self._next_claim - now if self._next_claim > now else wait))
        if room > 0:
            out = await self._read(room, wait)
            if out:
                return out
        elif wait > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), wait)
        if time.monotonic() >= deadline:
            return await self._due(max_messages)
        return None

    async def keep_alive(self) -> None:
        """Nothing to do: a task of this subscription refreshes what it holds (it reads no more than
        it hands out)."""

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._pubsub._subs.discard(self)
        if self._keepalive is not None:
            self._keepalive.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._keepalive
        if self._ack_task is not None:
            await self._ack_task
        if self._reading is not None:
            self._reading.cancel()
        async with self._fetch_lock:  # the fetch in progress, if any, has returned
            pass
        try:
            await self._hand_back()
        except (redis.exceptions.RedisError, L8Error) as exc:
            # What we held is taken over once processingTimeout passes, as if we had died.
            log.warning("pubsub %r: handing back pending messages on %r failed: %r", self._pubsub.name, self.topic, exc)
        for msg in self._held.values():
            msg._settled = True
        self._held.clear()
        self._retries.clear()
        await self._reader.aclose()

    async def _hand_back(self) -> None:
        """Make everything this consumer holds claimable by the group's others right away (a
        message waiting out a retry delay: once the delay has passed)."""
        r = self._pubsub.redis
        pending = await r.xpending_range(self.topic, self.group, "-", "+", 100_000, self.consumer)
        if not pending:
            with contextlib.suppress(redis.exceptions.RedisError):
                await r.xgroup_delconsumer(self.topic, self.group, self.consumer)
            return
        timeout_ms = int(self._pubsub.processing_timeout * 1000)
        now = time.monotonic()
        by_idle: dict[int, list[bytes]] = {}
        for p in pending:
            msg = self._held.get(p["message_id"])
            left = msg.due - now if msg is not None and msg.due > now else 0.0
            by_idle.setdefault(max(0, timeout_ms - int(left * 1000)), []).append(p["message_id"])
        for idle, ids in by_idle.items():
            await r.xclaim(self.topic, self.group, self.consumer, 0, ids, idle=idle, justid=True)
