"""Pub/sub on Kafka through aiokafka: the component, its producer and the topics it creates.

Each subscription is one consumer (one group member) of its own, in ``bridges/kafka/subscription.py``,
which also says how offsets are committed and messages retried.

A ``ttl`` travels as an ``l8-expires-at`` header (unix milliseconds); an expired message is settled
at fetch and never handed out. New groups start at the oldest retained message (``initialOffset``).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError

from bridges.errors import BackendUnavailable, InvalidArgument, L8Error
from bridges.kafka.errors import map_kafka_errors
from bridges.kafka.subscription import EXPIRES, KafkaSubscription
from bridges.protocols import PubSubLimits
from bridges.registry import BridgeEnv

_TOPIC_EXISTS = 36


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
