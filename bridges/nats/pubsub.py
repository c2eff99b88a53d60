"""Pub/sub on JetStream: one stream per component, one durable pull consumer per (group, topic).

The stream ``L8_EVT_<ns>_<pubsub>`` captures ``l8.<ns>.evt.<pubsub>.>`` on file storage with
limits retention, so an event waits for every group, including one whose app has not started yet.
A topic is one subject token: kept when it is plain, else ``_`` plus its base64url, so no topic can
reach another's subject. Subscribers of one group bind the same durable consumer, which JetStream
shares between them; ``ordered`` caps the consumer at one unacknowledged message, which keeps the
topic's order even across replicas and redeliveries. Settling is explicit: ack, nak with a delay
(retry) or term (drop). Publishes are raw requests answered by the stream's ack, so an
acknowledged publish is on disk.

The consumers and the subscriptions that fetch from them, shared with the input bindings that
read a stream, are in bridges/nats/subscription.py.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import re

from nats.aio.client import Client
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, StorageType, StreamConfig

from bridges.errors import InvalidArgument, L8Error
from bridges.nats.errors import check_pub_ack, map_nats_errors
from bridges.nats.subscription import (
    JetStreamSubscription,
    Subscriptions,
    durable_name,
    ensure_stream,
    pull_subscription,
)
from bridges.protocols import PubSubLimits
from bridges.registry import BridgeEnv

log = logging.getLogger("l8.bridges.nats.pubsub")

HDR_TTL = "Nats-TTL"
_PLAIN = re.compile(r"^[A-Za-z0-9-][A-Za-z0-9_-]*$")
_HEADER_ROOM = 8192  # the envelope, headers and subject under the server's payload limit
_PUBLISH_PARALLELISM = 256


def event_subject(ns: str, pubsub: str, token: str) -> str:
    """``l8.<ns>.evt.<pubsub>.<topic token>``: the topics of a NATS pub/sub component (DESIGN.md)."""
    return f"l8.{ns}.evt.{pubsub}.{token}"


def topic_token(topic: str) -> str:
    """One subject token per topic; plain tokens never start with '_', so none collide."""
    if not topic:
        raise InvalidArgument("the topic is empty")
    if _PLAIN.match(topic):
        return topic
    return "_" + base64.urlsafe_b64encode(topic.encode()).decode().rstrip("=")


def topic_of(token: str) -> str:
    if not token.startswith("_"):
        return token
    raw = token[1:]
    return base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)).decode()


class JetStreamPubSub:
    """A ``PubSub`` on one JetStream stream.

    Metadata: ``stream`` (default ``L8_EVT_<ns>_<name>``), ``replicas``, ``maxAgeSeconds``
    (default 7 days, 0 for no limit), ``maxBytes``, ``ackWaitSeconds`` (default 30: how long an
    unsettled message waits before it is redelivered, e.g. after a crash), ``maxDeliver`` (default
    unlimited: the runtime dead-letters by its own count), ``deliverPolicy`` (``all`` or ``new``,
    for a group's first subscription), ``timeoutSeconds``.
    """

    def __init__(self, name: str, metadata: dict[str, str], env: BridgeEnv) -> None:
        if env.nats is None:
            raise ValueError("the nats.jetstream pub/sub needs the bus connection")
        self._nc: Client = env.nats
        self.name = name
        self._ns = env.namespace
        self.stream = metadata.get("stream") or f"L8_EVT_{env.namespace}_{name}"
        if not re.match(r"^[A-Za-z0-9_-]+$", self.stream):
            raise ValueError(f"stream name {self.stream!r} may use only letters, digits, '_' and '-'")
        self._timeout = float(metadata.get("timeoutSeconds", "5"))
        self._replicas = int(metadata.get("replicas", "1"))
        self._max_age = float(metadata.get("maxAgeSeconds", str(7 * 86400)))
        self._max_bytes = int(metadata.get("maxBytes", "-1"))
        self._ack_wait = float(metadata.get("ackWaitSeconds", "30"))
        self._max_deliver = int(metadata.get("maxDeliver", "-1"))
        policy = metadata.get("deliverPolicy", "all")
        if policy not in ("all", "new"):
            raise ValueError(f"deliverPolicy {policy!r} is neither 'all' nor 'new'")
        self._deliver_policy = DeliverPolicy.ALL if policy == "all" else DeliverPolicy.NEW
        self.limits = PubSubLimits(features=frozenset({"TTL", "ORDERED", "BULK"}), lease_seconds=self._ack_wait)
        self._subs = Subscriptions(f"pub/sub {self.name!r}", env.on_reopen)
        self._request = env.request or env.nats.request
        self._publish_sem = asyncio.Semaphore(_PUBLISH_PARALLELISM)

    def features(self) -> frozenset[str]:
        return self.limits.features

    def subject(self, topic: str) -> str:
        return event_subject(self._ns, self.name, topic_token(topic))

    async def start(self) -> None:
        config = StreamConfig(
            name=self.stream,
            subjects=[event_subject(self._ns, self.name, ">")],
            storage=StorageType.FILE,
            num_replicas=self._replicas,
            max_age=self._max_age or None,
            max_bytes=self._max_bytes,
            allow_msg_ttl=True,
        )
        await ensure_stream(self._nc, config, self._timeout, f"pub/sub {self.name!r}")
        self.limits.max_message_bytes = self._nc.max_payload - _HEADER_ROOM
        self._subs.listen()

    async def ping(self) -> None:
        """Stream info, which needs the stream's leader: it fails while events cannot be stored."""
        js = self._nc.jetstream(timeout=self._timeout)
        with map_nats_errors(f"pub/sub {self.name!r}: stream {self.stream}"):
            await js.stream_info(self.stream)

    async def stop(self) -> None:
        await self._subs.close()

    async def publish(self, topic: str, data: bytes, headers: dict[str, str], *, ttl: int | None = None) -> None:
        limit = self.limits.max_message_bytes
        if len(data) > limit:
            raise InvalidArgument(f"message of {len(data)} bytes exceeds this pubsub's limit of {limit}")
        hdrs = dict(headers)
        if ttl is not None:
            hdrs[HDR_TTL] = f"{ttl}s"
        what = f"pub/sub {self.name!r}: publish to {topic!r}"
        with map_nats_errors(what):
            reply = await self._request(self.subject(topic), data, timeout=self._timeout, headers=hdrs)
            check_pub_ack(reply.data, what)

    async def publish_batch(self, topic: str, messages: list[tuple[bytes, dict[str, str]]]) -> list[str | None]:
        async def one(data: bytes, headers: dict[str, str]) -> str | None:
            async with self._publish_sem:
                try:
                    await self.publish(topic, data, headers)
                except L8Error as exc:
                    return str(exc)
                return None

        return list(await asyncio.gather(*(one(d, h) for d, h in messages)))

    async def subscribe(
        self, topic: str, group: str, *, max_in_flight: int, ordered: bool = False
    ) -> JetStreamSubscription:
        if not topic or not group:
            raise InvalidArgument("topic and group must not be empty")
        if max_in_flight < 1:
            raise InvalidArgument(f"max_in_flight must be at least 1, got {max_in_flight}")
        token = topic_token(topic)
        durable = durable_name(group, token)
        config = ConsumerConfig(
            name=durable,
            durable_name=durable,
            description=f"l8 group {group} on topic {topic}",
            filter_subject=event_subject(self._ns, self.name, token),
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=self._ack_wait,
            max_deliver=self._max_deliver,
            max_ack_pending=1 if ordered else max(1, max_in_flight),
            deliver_policy=self._deliver_policy,
        )
        return await pull_subscription(
            self._nc,
            self.stream,
            config,
            topic=topic,
            owner=self._subs,
            timeout=self._timeout,
            what=f"pub/sub {self.name!r}: subscribing {group!r} to {topic!r}",
        )


def create(name: str, metadata: dict[str, str], env: BridgeEnv) -> JetStreamPubSub:
    return JetStreamPubSub(name, metadata, env)
