"""An output binding to a Kafka topic: ``create`` produces one message (acks=all).

Metadata names are Dapr's: ``brokers``, ``publishTopic`` (where ``create`` writes; required for
output), and the producer settings of the Kafka pub/sub component (``clientId``, ``lingerMs``,
``maxMessageBytes``...), since producing goes through that component's one producer code. A call's
metadata travels as message headers, and ``ttlInSeconds`` as the same expiry header pub/sub uses.
"""

from __future__ import annotations

from bridges.errors import InvalidArgument
from bridges.kafka.pubsub import KafkaPubSub
from bridges.protocols import BindingReply
from bridges.registry import BridgeEnv

TTL = "ttlInSeconds"


class KafkaBinding:
    def __init__(self, name: str, metadata: dict[str, str], env: BridgeEnv) -> None:
        self.name = name
        self.topic = metadata.get("publishTopic", "")
        if not self.topic:
            raise ValueError(f"binding {name!r}: metadata publishTopic is required (the topic create writes to)")
        self._producer = KafkaPubSub(name, metadata, env)

    def features(self) -> frozenset[str]:
        return frozenset()

    def operations(self) -> tuple[str, ...]:
        return ("create",)

    async def start(self) -> None:
        await self._producer.start()

    async def stop(self) -> None:
        await self._producer.stop()

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
        await self._producer.publish(self.topic, data, headers, ttl=ttl)
        return BindingReply()
