"""A binding to Kafka topics: output ``create`` produces one message (acks=all) to ``publishTopic``;
input reads ``topics`` in a consumer group.

Metadata names are Dapr's: ``brokers``, ``publishTopic`` (where ``create`` writes), ``topics``
(comma separated, what the input reads), ``consumerGroup`` (the input's group; default: each app
its own, named after the app, so every app gets every message and an app's replicas share them),
and the producer and consumer settings of the Kafka pub/sub component (``clientId``, ``lingerMs``,
``maxMessageBytes``, ``initialOffset``, ``sessionTimeoutMs``...), since both go through that
component's code. A binding needs ``publishTopic``, ``topics`` or both.

A call's metadata travels as message headers, but ``partitionKey``, which becomes the message key
(messages of one key go to one partition, in order), and ``ttlInSeconds``, the same expiry header
pub/sub uses. An input event's metadata is its headers plus Dapr's ``__key``, ``__topic``,
``__partition``, ``__offset`` and ``__timestamp`` (unix ms). Offsets are committed only up to the
oldest event the app has not answered, so an unanswered event is read again after a crash (at
least once).
"""

from __future__ import annotations

from bridges.errors import InvalidArgument
from bridges.kafka.pubsub import KafkaPubSub
from bridges.kafka.subscription import KafkaSubscription
from bridges.protocols import BindingReply
from bridges.registry import BridgeEnv

TTL = "ttlInSeconds"
KEY = "partitionKey"
MAX_KEY = 1024


class KafkaBinding:
    def __init__(self, name: str, metadata: dict[str, str], env: BridgeEnv) -> None:
        self.name = name
        self.topic = metadata.get("publishTopic", "")
        self.topics = [t.strip() for t in metadata.get("topics", "").split(",") if t.strip()]
        if not self.topic and not self.topics:
            raise ValueError(
                f"binding {name!r}: metadata publishTopic (the topic create writes to) or topics "
                "(the topics it reads) is required"
            )
        self.group = metadata.get("consumerGroup", "")
        self._client = KafkaPubSub(name, metadata, env)
        self.lease_seconds = self._client.limits.lease_seconds

    def features(self) -> frozenset[str]:
        return frozenset()

    def operations(self) -> tuple[str, ...]:
        return ("create",) if self.topic else ()

    async def start(self) -> None:
        await self._client.start()

    async def stop(self) -> None:
        await self._client.stop()

    async def invoke(
        self, operation: str, data: bytes, metadata: dict[str, str], *, timeout: float, max_reply: int
    ) -> BindingReply:
        headers = dict(metadata)
        ttl = None
        raw = headers.pop(TTL, None)
        if raw:
            if not raw.isdigit() or int(raw) < 1:
                raise InvalidArgument(f"binding {self.name!r}: ttlInSeconds {raw[:32]!r} is not a whole number >= 1")
            ttl = int(raw)
        key = headers.pop(KEY, None)
        if key is not None and len(key.encode()) > MAX_KEY:
            raise InvalidArgument(f"binding {self.name!r}: partitionKey is over {MAX_KEY} bytes")
        await self._client.publish(self.topic, data, headers, ttl=ttl, key=key.encode() if key else None)
        return BindingReply()

    async def subscribe(self, group: str, *, max_in_flight: int, ordered: bool = False) -> KafkaSubscription:
        if not self.topics:
            raise InvalidArgument(f"binding {self.name!r} reads no topics (metadata topics)")
        return await self._client.consume(
            self.topics, self.group or group, max_in_flight=max_in_flight, ordered=ordered, event_metadata=True
        )
