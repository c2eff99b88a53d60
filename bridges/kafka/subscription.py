"""The consumer side of Kafka pub/sub: one group member per subscription, and what it handed out.

Kafka keeps one committed offset per partition, not one acknowledgement per message, so each
subscription tracks what it handed out: a partition's offset is committed only up to its oldest
unsettled message. Whatever was not committed (the process died, the subscription closed, the
partition moved to another member) is fetched again from the committed offset by its next owner:
at-least-once, and the later messages that were settled come again too. A member losing a partition
in a rebalance first lets its targets finish what they hold (``REVOKE_GRACE``) and commits it.

``retry(delay)`` keeps the message in this member's memory, still unsettled (so it holds the commit
point and counts against ``max_in_flight``), and hands it out again once the delay has passed. An
ordered subscription keeps one message in flight per partition, so a retried message blocks its
partition until it is settled and order is kept. Kafka has no delivery counter: ``attempt`` counts
deliveries by this member and starts again at 1 when another member takes the message over.

A message whose ``l8-expires-at`` header (unix milliseconds) has passed is settled at fetch and
never handed out.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from aiokafka import ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, ConsumerStoppedError, IllegalStateError, KafkaError

from bridges.errors import InvalidArgument
from bridges.kafka.errors import map_kafka_errors

if TYPE_CHECKING:
    from bridges.kafka.pubsub import KafkaPubSub

log = logging.getLogger(__name__)

EXPIRES = "l8-expires-at"
REVOKE_GRACE = 5.0  # seconds a member losing a partition waits for the messages it handed out


class _Partition:
    """What one member knows of one assigned partition."""

    __slots__ = ("buffer", "committed", "inflight", "next_offset", "revoked", "tp", "unsettled")

    def __init__(self, tp: TopicPartition) -> None:
        self.tp = tp
        self.buffer: deque[Any] = deque()  # fetched, not yet handed out
        # Handed out and not settled, by offset; offsets are handed out in increasing order, so
        # the first key is the oldest unsettled one.
        self.unsettled: dict[int, KafkaReceived] = {}
        self.next_offset: int | None = None  # one past the last offset handed out
        self.committed: int | None = None
        self.inflight = 0
        self.revoked = False

    def commit_point(self) -> int | None:
        if self.unsettled:
            return next(iter(self.unsettled))
        return self.next_offset


class KafkaReceived:
    __slots__ = ("_part", "_settled", "_sub", "attempt", "data", "headers", "offset", "topic")

    def __init__(
        self, sub: KafkaSubscription, part: _Partition, offset: int, data: bytes, headers: dict[str, str]
    ) -> None:
        self._sub = sub
        self._part = part
        self._settled = False
        self.offset = offset
        self.data = data
        self.headers = headers
        self.topic = part.tp.topic
        self.attempt = 1

    async def ack(self) -> None:
        self._sub._settle(self)

    async def drop(self) -> None:
        self._sub._settle(self)

    async def retry(self, delay: float) -> None:
        self._sub._retry(self, max(0.0, delay))

    @property
    def ref(self) -> str:
        return f"partition {self._part.tp.partition} offset {self.offset}"

    async def touch(self) -> None:
        """Nothing per message: the member holds its partitions while it polls (``keep_alive``)."""


class KafkaSubscription(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(
        self, pubsub: KafkaPubSub, topics: list[str], group: str, max_in_flight: int, ordered: bool, metadata: bool
    ) -> None:
        self._pubsub = pubsub
        self.topics = topics
        self.topic = ",".join(topics)  # for logs
        self._event_metadata = metadata
        self.group = group
        self._max_in_flight = max_in_flight
        self._ordered = ordered
        self._consumer = pubsub._consumer(group)
        self._parts: dict[TopicPartition, _Partition] = {}
        self._inflight = 0
        self._retries: list[tuple[float, int, KafkaReceived]] = []
        self._seq = itertools.count()
        self._changed = asyncio.Event()  # a settle or a retry: capacity or a due time may have moved
        self._settled = asyncio.Event()  # a message was settled (a revoke waits for them)
        self._dirty = asyncio.Event()  # a commit point moved
        self._fetch_lock = asyncio.Lock()
        self._committer: asyncio.Task[None] | None = None
        self._closed = False
        self._rr = 0
        self._last_poll = time.monotonic()

    async def start(self) -> None:
        try:
            with map_kafka_errors(f"pubsub {self._pubsub.name!r}: subscribing to {self.topic!r}"):
                self._consumer.subscribe(self.topics, listener=self)
                await self._consumer.start()
        except BaseException:
            # A consumer that failed to start still holds its client's connections and tasks.
            with contextlib.suppress(Exception):
                await self._consumer.stop()
            raise
        self._committer = asyncio.create_task(self._commit_loop(), name=f"kafka-commit-{self.topic}-{self.group}")

    # ---- rebalance ----

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        # The group waits for this before it hands the partitions on: let the messages the targets
        # hold now be settled (for up to REVOKE_GRACE) and commit them, so the next owner does not
        # deliver them a second time. What was fetched and not handed out is left to it.
        parts = [self._parts[tp] for tp in revoked if tp in self._parts]
        for part in parts:
            part.buffer.clear()
        deadline = time.monotonic() + REVOKE_GRACE
        while any(self._held(part) for part in parts) and (left := deadline - time.monotonic()) > 0:
            self._settled.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._settled.wait(), left)
        await self._commit([part.tp for part in parts])
        for tp in revoked:
            gone = self._parts.pop(tp, None)
            if gone is not None:
                self._forget(gone)

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        for tp in assigned:
            self._parts.setdefault(tp, _Partition(tp))

    def _held(self, part: _Partition) -> bool:
        """Whether a target holds a message of ``part`` (one waiting for its retry is not held)."""
        waiting = {id(msg) for _, _, msg in self._retries}
        return any(id(msg) not in waiting for msg in part.unsettled.values())

    def _forget(self, part: _Partition) -> None:
        # Its unsettled messages now belong to the partition's next owner, which fetches them from
        # the committed offset; settling our copies must not move a commit point any more.
        part.revoked = True
        self._inflight -= len(part.unsettled)
        part.unsettled.clear()
        part.buffer.clear()
        self._changed.set()

    # ---- settling ----

    def _settle(self, msg: KafkaReceived) -> None:
        if msg._settled:
            return
        msg._settled = True
        part = msg._part
        if part.revoked or part.unsettled.pop(msg.offset, None) is None:
            return
        self._inflight -= 1
        part.inflight -= 1
        self._changed.set()
        self._dirty.set()
        self._settled.set()

    def _retry(self, msg: KafkaReceived, delay: float) -> None:
        if msg._settled or msg._part.revoked:
            return
        heapq.heappush(self._retries, (time.monotonic() + delay, next(self._seq), msg))
        self._changed.set()

    def _offsets(self, tps: list[TopicPartition] | None = None) -> dict[TopicPartition, int]:
        offsets: dict[TopicPartition, int] = {}
        for tp in tps if tps is not None else list(self._parts):
            part = self._parts.get(tp)
            if part is None:
                continue
            point = part.commit_point()
            if point is not None and point != part.committed:
                offsets[tp] = point
        return offsets

    async def _commit(self, tps: list[TopicPartition] | None = None) -> bool:
        """Commit what is settled; False when the broker could not be reached (try again later)."""
        offsets = self._offsets(tps)
        if not offsets:
            return True
        try:
            await self._consumer.commit(offsets)
        except (CommitFailedError, IllegalStateError) as exc:
            # The group moved on (a rebalance): whatever this commit covered is fetched again by
            # the partition's next owner, which is at-least-once, not a loss.
            log.info("pubsub %r: commit on %r failed, will be redelivered: %s", self._pubsub.name, self.topic, exc)
            return True
        except KafkaError as exc:
            log.warning("pubsub %r: commit on %r failed, retrying: %r", self._pubsub.name, self.topic, exc)
            return False
        for tp, offset in offsets.items():
            part = self._parts.get(tp)
            if part is not None:
                part.committed = max(offset, part.committed or 0)
        return True

    async def _commit_loop(self) -> None:
        # One commit at a time; settles that land while it runs ride in the next one.
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            if not await self._commit():
                self._dirty.set()
                await asyncio.sleep(1.0)

    # ---- fetching ----

    def _capacity(self) -> int:
        return self._max_in_flight - self._inflight

    def _due(self, out: list[KafkaReceived], limit: int) -> None:
        now = time.monotonic()
        while self._retries and len(out) < limit and self._retries[0][0] <= now:
            _, _, msg = heapq.heappop(self._retries)
            if msg._settled or msg._part.revoked:
                continue
            msg.attempt += 1
            out.append(msg)

    def _take(self, out: list[KafkaReceived], limit: int) -> None:
        parts = list(self._parts.values())
        if not parts:
            return
        self._rr = (self._rr + 1) % len(parts)
        now_ms = time.time() * 1000
        for part in parts[self._rr :] + parts[: self._rr]:
            while part.buffer and len(out) < limit and self._capacity() > 0:
                if self._ordered and part.inflight:
                    break
                record = part.buffer.popleft()
                part.next_offset = record.offset + 1
                headers = {k: v.decode(errors="replace") for k, v in record.headers or ()}
                expires = headers.pop(EXPIRES, None)
                if expires is not None and expires.isdigit() and int(expires) <= now_ms:
                    self._dirty.set()  # settled at fetch: the commit point moves past it
                    continue
                if self._event_metadata:
                    headers.update(_event_metadata(record))
                msg = KafkaReceived(self, part, record.offset, record.value or b"", headers)
                part.unsettled[record.offset] = msg
                part.inflight += 1
                self._inflight += 1
                out.append(msg)

    def _blocked(self) -> set[TopicPartition]:
        if self._capacity() <= 0:
            return set(self._parts)
        return {tp for tp, p in self._parts.items() if p.buffer or (self._ordered and p.inflight)}

    async def fetch(self, max_messages: int, timeout: float) -> list[KafkaReceived]:
        if max_messages < 1:
            raise InvalidArgument(f"max_messages must be at least 1, got {max_messages}")
        deadline = time.monotonic() + max(0.0, timeout)
        polled = False
        async with self._fetch_lock:
            while not self._closed:
                self._changed.clear()
                out: list[KafkaReceived] = []
                self._due(out, max_messages)
                self._take(out, max_messages)
                if out:
                    return out
                now = time.monotonic()
                if now >= deadline and polled:
                    return []
                polled = True
                wait = deadline - now
                if self._retries:
                    wait = min(wait, self._retries[0][0] - now)
                wait = max(0.0, wait)
                assigned = self._consumer.assignment()
                blocked = self._blocked() & assigned
                self._consumer.pause(*blocked)
                self._consumer.resume(*(assigned - blocked))
                with (
                    map_kafka_errors(f"pubsub {self._pubsub.name!r}: fetching from {self.topic!r}"),
                    contextlib.suppress(ConsumerStoppedError),  # closed while fetching
                ):
                    if assigned and blocked == assigned:
                        # Nothing may be fetched until something is settled; a zero-time fetch
                        # still tells the group this member is alive and polling.
                        await self._consumer.getmany(timeout_ms=0)
                        self._last_poll = time.monotonic()
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(self._changed.wait(), wait)
                    else:
                        batches = await self._consumer.getmany(
                            timeout_ms=int(wait * 1000), max_records=max(1, min(max_messages, self._capacity()))
                        )
                        self._last_poll = time.monotonic()
                        for tp, records in batches.items():
                            part = self._parts.get(tp)
                            if part is not None:
                                part.buffer.extend(records)
        return []

    async def keep_alive(self) -> None:
        """Poll, fetching nothing, when no fetch has for a while: a member that does not poll within
        ``maxPollIntervalMs`` leaves the group, and its partitions' unsettled messages go to another."""
        if self._closed or self._fetch_lock.locked():
            return
        if time.monotonic() - self._last_poll < self._pubsub._max_poll_ms / 3000:
            return
        async with self._fetch_lock:
            assigned = self._consumer.assignment()
            self._consumer.pause(*assigned)
            with contextlib.suppress(KafkaError, ConsumerStoppedError):
                await self._consumer.getmany(timeout_ms=0)
            self._last_poll = time.monotonic()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._pubsub._subs.discard(self)
        if self._committer is not None:
            self._committer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._committer
        await self._commit()
        for part in list(self._parts.values()):
            self._forget(part)
        self._parts.clear()
        self._retries.clear()
        with contextlib.suppress(KafkaError):
            await self._consumer.stop()


def _event_metadata(record: Any) -> dict[str, str]:
    found = {
        "__topic": record.topic,
        "__partition": str(record.partition),
        "__offset": str(record.offset),
        "__timestamp": str(record.timestamp),
    }
    if record.key is not None:
        found["__key"] = record.key.decode(errors="replace")
    return found
