"""Pub/sub on Kafka through aiokafka: one consumer (one group member) per subscription.

Kafka keeps one committed offset per partition, not one acknowledgement per message, so each
subscription tracks what it handed out: a partition's offset is committed only up to its oldest
unsettled message. Whatever was not committed (the process died, the subscription closed, the
partition moved to another member) is fetched again from the committed offset by its next owner:
at-least-once, and the later messages that were settled come again too.

``retry(delay)`` keeps the message in this member's memory, still unsettled (so it holds the commit
point and counts against ``max_in_flight``), and hands it out again once the delay has passed. An
ordered subscription keeps one message in flight per partition, so a retried message blocks its
partition until it is settled and order is kept. Kafka has no delivery counter: ``attempt`` counts
deliveries by this member and starts again at 1 when another member takes the message over.

A ``ttl`` travels as an ``l8-expires-at`` header (unix milliseconds); an expired message is settled
at fetch and never handed out. New groups start at the oldest retained message (``initialOffset``).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import time
import uuid
from collections import deque
from collections.abc import Iterator
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import (
    CommitFailedError,
    ConsumerStoppedError,
    IllegalStateError,
    KafkaConnectionError,
    KafkaError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    NoBrokersAvailable,
    RecordTooLargeError,
    RequestTimedOutError,
)

from bridges.errors import BackendUnavailable, InvalidArgument, L8Error
from bridges.protocols import PubSubLimits
from bridges.registry import BridgeEnv

log = logging.getLogger(__name__)

EXPIRES = "l8-expires-at"
_TOPIC_EXISTS = 36


@contextlib.contextmanager
def map_kafka_errors(what: str) -> Iterator[None]:
    try:
        yield
    except L8Error:
        raise
    except (MessageSizeTooLargeError, RecordTooLargeError) as exc:
        raise InvalidArgument(f"{what}: message too large for the broker: {exc}") from None
    except (KafkaConnectionError, KafkaTimeoutError, NoBrokersAvailable, RequestTimedOutError) as exc:
        raise BackendUnavailable(f"{what}: kafka unavailable: {exc}") from None
    except KafkaError as exc:
        raise L8Error(f"{what}: kafka error: {exc!r}") from None


def _int(metadata: dict[str, str], key: str, default: int) -> int:
    raw = metadata.get(key)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise InvalidArgument(f"metadata {key!r} must be a whole number, got {raw!r}") from None


class KafkaPubSub:
    """A ``PubSub`` on Kafka. Metadata: ``brokers`` (comma-separated host:port), ``partitions``
    for topics it creates (1: one partition keeps a topic's total order), ``initialOffset``
    (``oldest``|``newest``), ``sessionTimeoutMs``, ``heartbeatIntervalMs``, ``maxPollIntervalMs``,
    ``lingerMs``, ``clientId``, ``maxMessageBytes``."""

    def __init__(self, name: str, metadata: dict[str, str], env: BridgeEnv) -> None:
        self.name = name
        self._brokers = metadata.get("brokers") or "127.0.0.1:9092"
        self._client_id = metadata.get("clientId") or f"l8-{env.app_id}"
        self._partitions = _int(metadata, "partitions", 1)
        self._replication = _int(metadata, "replicationFactor", 1)
        initial = (metadata.get("initialOffset") or "oldest").lower()
        if initial not in ("oldest", "newest"):
            raise InvalidArgument(f"metadata 'initialOffset' must be oldest or newest, got {initial!r}")
        self._reset = "earliest" if initial == "oldest" else "latest"
        self._session_ms = _int(metadata, "sessionTimeoutMs", 10_000)
        self._heartbeat_ms = _int(metadata, "heartbeatIntervalMs", 3_000)
        self._max_poll_ms = _int(metadata, "maxPollIntervalMs", 300_000)
        self._linger_ms = _int(metadata, "lingerMs", 0)
        idempotence = (metadata.get("enableIdempotence") or "true").lower()
        if idempotence not in ("true", "false"):
            raise InvalidArgument(f"metadata 'enableIdempotence' must be true or false, got {idempotence[:32]!r}")
        self._idempotent = idempotence == "true"
        self.limits = PubSubLimits(
            max_message_bytes=_int(metadata, "maxMessageBytes", 1 << 20),
            features=frozenset({"TTL", "ORDERED", "BULK_PUBLISH"}),
            lease_seconds=self._max_poll_ms / 1000,
        )
        self._producer: AIOKafkaProducer | None = None
        self._admin: AIOKafkaAdminClient | None = None
        self._known_topics: set[str] = set()
        self._subs: set[KafkaSubscription] = set()
        self._topic_lock = asyncio.Lock()

    def features(self) -> frozenset[str]:
        return self.limits.features

    async def start(self) -> None:
        if self._producer is not None:
            return
        # Idempotent by default: a retried send is not written twice. Brokers that refuse
        # InitProducerId (tansu, some managed Kafkas) need enableIdempotence: false; acks=all
        # still means an acknowledged publish is on every in-sync replica.
        producer = AIOKafkaProducer(
            bootstrap_servers=self._brokers,
            client_id=self._client_id,
            acks="all",
            enable_idempotence=self._idempotent,
            linger_ms=self._linger_ms,
            max_request_size=self.limits.max_message_bytes + (64 << 10),
        )
        admin = AIOKafkaAdminClient(bootstrap_servers=self._brokers, client_id=self._client_id)
        hint = " (a broker that refuses idempotent producers needs metadata enableIdempotence: false)"
        with map_kafka_errors(f"pubsub {self.name!r}: connecting to {self._brokers}{hint if self._idempotent else ''}"):
            try:
                await producer.start()
                await admin.start()
            except BaseException:
                await producer.stop()
                await admin.close()
                raise
        self._producer, self._admin = producer, admin

    async def stop(self) -> None:
        if self._producer is None:
            return
        producer, admin, self._producer, self._admin = self._producer, self._admin, None, None
        await asyncio.gather(*(sub.close() for sub in list(self._subs)))
        await producer.stop()
        if admin is not None:
            await admin.close()

    async def ping(self) -> None:
        """A metadata round trip to the brokers (the admin client's describe_cluster)."""
        if self._admin is None:
            raise BackendUnavailable(f"pubsub {self.name!r} is not started")
        with map_kafka_errors(f"pubsub {self.name!r}: brokers {self._brokers}"):
            await self._admin.describe_cluster()

    def _check(self, topic: str, data: bytes) -> None:
        if self._producer is None:
            raise BackendUnavailable(f"pubsub {self.name!r} is not started")
        if not topic:
            raise InvalidArgument("topic is empty")
        if len(data) > self.limits.max_message_bytes:
            raise InvalidArgument(
                f"message of {len(data)} bytes exceeds this pubsub's limit of {self.limits.max_message_bytes}"
            )

    async def ensure_topic(self, topic: str) -> None:
        """Create the topic with this component's partition count unless it exists."""
        if topic in self._known_topics:
            return
        async with self._topic_lock:
            if topic in self._known_topics or self._admin is None:
                return
            with map_kafka_errors(f"pubsub {self.name!r}: creating topic {topic!r}"):
                resp = await self._admin.create_topics(
                    [NewTopic(topic, num_partitions=self._partitions, replication_factor=self._replication)]
                )
            for _name, code, *rest in resp.topic_errors:
                if code not in (0, _TOPIC_EXISTS):
                    raise L8Error(f"pubsub {self.name!r}: creating topic {topic!r}: error {code} {rest}")
            self._known_topics.add(topic)

    @staticmethod
    def _headers(headers: dict[str, str], ttl: int | None) -> list[tuple[str, bytes]]:
        out = [(k, v.encode()) for k, v in headers.items()]
        if ttl:
            out.append((EXPIRES, str(int((time.time() + ttl) * 1000)).encode()))
        return out

    async def publish(
        self, topic: str, data: bytes, headers: dict[str, str], *, ttl: int | None = None, key: bytes | None = None
    ) -> None:
        """``key``, the message key, picks the partition (the output binding's ``partitionKey``)."""
        self._check(topic, data)
        assert self._producer is not None
        await self.ensure_topic(topic)
        with map_kafka_errors(f"pubsub {self.name!r}: publish to {topic!r}"):
            await self._producer.send_and_wait(topic, data, key=key, headers=self._headers(headers, ttl))

    async def publish_batch(self, topic: str, messages: list[tuple[bytes, dict[str, str]]]) -> list[str | None]:
        if not topic:
            raise InvalidArgument("topic is empty")
        self._check(topic, b"")
        assert self._producer is not None
        await self.ensure_topic(topic)
        results: list[str | None] = [None] * len(messages)
        futures: list[tuple[int, asyncio.Future[Any]]] = []
        limit = self.limits.max_message_bytes
        for i, (data, headers) in enumerate(messages):
            if len(data) > limit:
                results[i] = f"message of {len(data)} bytes exceeds this pubsub's limit of {limit}"
                continue
            try:
                # send() returns once the record is in the producer's batch; the future settles on the
                # broker's answer, so gathering them sends the whole batch in a few requests.
                futures.append((i, await self._producer.send(topic, data, headers=self._headers(headers, None))))
            except KafkaError as exc:
                results[i] = f"kafka error: {exc!r}"
        outcomes = await asyncio.gather(*(f for _, f in futures), return_exceptions=True)
        for (i, _), outcome in zip(futures, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                results[i] = f"kafka error: {outcome!r}"
        return results

    async def subscribe(
        self, topic: str, group: str, *, max_in_flight: int, ordered: bool = False
    ) -> KafkaSubscription:
        return await self.consume([topic], group, max_in_flight=max_in_flight, ordered=ordered)

    async def consume(
        self, topics: list[str], group: str, *, max_in_flight: int, ordered: bool = False, event_metadata: bool = False
    ) -> KafkaSubscription:
        """One group member reading ``topics``; with ``event_metadata`` each message's headers also
        carry Dapr's ``__key``, ``__topic``, ``__partition``, ``__offset`` and ``__timestamp``."""
        if self._producer is None:
            raise BackendUnavailable(f"pubsub {self.name!r} is not started")
        if not topics or not all(topics) or not group:
            raise InvalidArgument("topic and group must not be empty")
        if max_in_flight < 1:
            raise InvalidArgument(f"max_in_flight must be at least 1, got {max_in_flight}")
        for topic in topics:
            await self.ensure_topic(topic)
        sub = KafkaSubscription(self, topics, group, max_in_flight, ordered, event_metadata)
        await sub.start()
        self._subs.add(sub)
        return sub

    def _consumer(self, group: str) -> AIOKafkaConsumer:
        return AIOKafkaConsumer(
            bootstrap_servers=self._brokers,
            client_id=f"{self._client_id}-{uuid.uuid4().hex[:6]}",
            group_id=group,
            enable_auto_commit=False,
            auto_offset_reset=self._reset,
            session_timeout_ms=self._session_ms,
            heartbeat_interval_ms=self._heartbeat_ms,
            max_poll_interval_ms=self._max_poll_ms,
            fetch_max_bytes=max(52428800, self.limits.max_message_bytes * 2),
            max_partition_fetch_bytes=max(1048576, self.limits.max_message_bytes + (64 << 10)),
        )


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
        self._dirty = asyncio.Event()  # a commit point moved
        self._fetch_lock = asyncio.Lock()
        self._committer: asyncio.Task[None] | None = None
        self._closed = False
        self._rr = 0
        self._last_poll = time.monotonic()

    async def start(self) -> None:
        with map_kafka_errors(f"pubsub {self._pubsub.name!r}: subscribing to {self.topic!r}"):
            self._consumer.subscribe(self.topics, listener=self)
            await self._consumer.start()
        self._committer = asyncio.create_task(self._commit_loop(), name=f"kafka-commit-{self.topic}-{self.group}")

    # ---- rebalance ----

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        await self._commit([tp for tp in revoked if tp in self._parts])
        for tp in revoked:
            part = self._parts.pop(tp, None)
            if part is not None:
                self._forget(part)

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        for tp in assigned:
            self._parts.setdefault(tp, _Partition(tp))

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
