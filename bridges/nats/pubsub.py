"""Pub/sub on JetStream: one stream per component, one durable pull consumer per (group, topic).

The stream ``L8_EVT_<ns>_<pubsub>`` captures ``l8.<ns>.evt.<pubsub>.>`` on file storage with
limits retention, so an event waits for every group, including one whose app has not started yet.
A topic is one subject token: kept when it is plain, else ``_`` plus its base64url, so no topic can
reach another's subject. Subscribers of one group bind the same durable consumer, which JetStream
shares between them; ``ordered`` caps the consumer at one unacknowledged message, which keeps the
topic's order even across replicas and redeliveries. Settling is explicit: ack, nak with a delay
(retry) or term (drop). Publishes are raw requests answered by the stream's ack, so an
acknowledged publish is on disk.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import re
from collections import deque
from typing import Any

import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, StorageType, StreamConfig

from bridges.errors import BackendUnavailable, InvalidArgument, L8Error
from bridges.nats.buckets import when_ready
from bridges.nats.errors import check_pub_ack, map_nats_errors
from bridges.protocols import PubSubLimits, Received
from bridges.registry import BridgeEnv

log = logging.getLogger("l8.bridges.nats.pubsub")

HDR_TTL = "Nats-TTL"
_PLAIN = re.compile(r"^[A-Za-z0-9-][A-Za-z0-9_-]*$")
_HEADER_ROOM = 8192  # the envelope, headers and subject under the server's payload limit
_PUBLISH_PARALLELISM = 256
_STATUS = "Status"
_BATCH_SETTLE_TICKS = 2  # loop turns without a new message before a partial batch is handed out


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


def durable_name(group: str, token: str) -> str:
    # Consumer names are limited in length and charset; the hash keeps (group, topic) pairs apart
    # whatever their spelling, the readable part helps whoever lists the consumers.
    digest = hashlib.sha256(f"{group}\0{token}".encode()).hexdigest()[:12]
    return f"{group[:60]}_{token[:60]}_{digest}".replace(".", "_")


class _Received:
    __slots__ = ("_msg", "_owner", "_settled", "topic")

    def __init__(self, msg: Msg, topic: str, owner: JetStreamSubscription) -> None:
        self._msg = msg
        self.topic = topic
        self._owner = owner
        self._settled = False

    @property
    def data(self) -> bytes:
        data: bytes = self._msg.data
        return data

    @property
    def headers(self) -> dict[str, str]:
        return self._msg.headers or {}

    @property
    def attempt(self) -> int:
        delivered: int = self._msg.metadata.num_delivered
        return delivered

    @property
    def ref(self) -> str:
        return f"stream sequence {self._msg.metadata.sequence.stream}"

    async def touch(self) -> None:
        if not self._settled:
            with map_nats_errors("pub/sub: in progress"):
                await self._msg.in_progress()

    def _settle(self) -> bool:
        if self._settled:
            return False
        self._settled = True
        self._owner._unsettled.discard(self)
        return True

    async def ack(self) -> None:
        if self._settle():
            try:
                await self._msg.ack()
            except Exception:  # the hot path: translate only when it fails
                with map_nats_errors("pub/sub: ack"):
                    raise

    async def retry(self, delay: float) -> None:
        if self._settle():
            with map_nats_errors("pub/sub: nak"):
                await self._msg.nak(delay=delay if delay > 0 else None)

    async def drop(self) -> None:
        if self._settle():
            with map_nats_errors("pub/sub: term"):
                await self._msg.term()


class JetStreamSubscription:
    """A pull subscription on a durable consumer, with its own inbox.

    nats-py's ``fetch`` waits on a queue once per message; here the inbox callback appends to a
    buffer and a fetch waits once, which matters at tens of thousands of events a second. A pull
    request may outlive the fetch that sent it: what arrives later stays in the buffer for the next
    fetch, or is handed back on close.
    """

    def __init__(self, nc: Client, stream: str, durable: str, topic: str, owner: set[JetStreamSubscription]) -> None:
        self._nc = nc
        self._next = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{durable}"
        self._inbox = nc.new_inbox()
        self._owner = owner
        self._topic = topic
        self._buf: deque[Msg] = deque()
        self._arrived = asyncio.Event()
        self._sub: Any = None
        self._unsettled: set[_Received] = set()
        self._closed = False

    @property
    def topic(self) -> str:
        return self._topic

    async def open(self) -> None:
        """Listen on the fetch inbox (again, after the connection was opened anew)."""
        if self._closed:
            return
        self._sub = await self._nc.subscribe(
            self._inbox, cb=self._on_msg, pending_msgs_limit=-1, pending_bytes_limit=-1
        )

    async def _on_msg(self, msg: Msg) -> None:
        headers = msg.headers
        if headers is not None and _STATUS in headers and not msg.data:
            # 404 no messages, 408 request expired, 409 limits: the pull ended; 100 heartbeat
            if headers[_STATUS] not in ("404", "408", "100"):
                log.debug("pull on %r ended: %s %s", self._topic, headers[_STATUS], headers.get("Description", ""))
            return
        self._buf.append(msg)
        self._arrived.set()

    def _take(self, n: int) -> list[Received]:
        out: list[Received] = []
        while self._buf and len(out) < n:
            received = _Received(self._buf.popleft(), self._topic, self)
            self._unsettled.add(received)
            out.append(received)
        if not self._buf and not self._closed:
            self._arrived.clear()
        return out

    async def fetch(self, max_messages: int, timeout: float) -> list[Received]:
        if self._closed:
            return []
        n = max(1, max_messages)
        if len(self._buf) >= n:
            return self._take(n)
        want = n - len(self._buf)
        request = b'{"batch":%d,"expires":%d}' % (want, int(max(timeout, 0.001) * 1e9))
        try:
            await self._nc.publish(self._next, request, reply=self._inbox)
        except (nats.errors.ConnectionClosedError, nats.errors.ConnectionReconnectingError) as exc:
            raise BackendUnavailable(f"pub/sub fetch on {self._topic!r}: {type(exc).__name__}") from None
        if not self._buf:
            try:
                await asyncio.wait_for(self._arrived.wait(), timeout)
            except TimeoutError:
                return []
            if self._closed:
                return []
        # A batch arrives back to back: let the rest of it land before handing it out.
        waited = 0
        while len(self._buf) < n and waited < _BATCH_SETTLE_TICKS:
            before = len(self._buf)
            await asyncio.sleep(0)
            waited = 0 if len(self._buf) > before else waited + 1
        return self._take(n)

    async def keep_alive(self) -> None:
        """A pull may deliver after the fetch that sent it returned: what waits in the buffer for the
        next fetch is held too, so its lease is renewed like that of a message handed out."""
        for msg in list(self._buf):
            try:
                await msg.in_progress()
            except Exception as exc:  # the next fetch or the broker's redelivery sorts it out
                log.debug("renewing a buffered message of %r failed: %s", self._topic, exc)
                return

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._owner.discard(self)
        if self._sub is not None:
            try:
                await self._sub.unsubscribe()
            except Exception as exc:  # the connection may be gone; the durable consumer stays
                log.debug("unsubscribe of %r failed: %s", self._topic, exc)
        # Hand back what was fetched and never settled, so it is redelivered now, not after ack_wait.
        self._take(len(self._buf))
        self._arrived.set()  # a fetch waiting for messages returns now, with none
        for received in list(self._unsettled):
            try:
                await received.retry(0)
            except L8Error as exc:
                log.debug("could not hand back a message of %r: %s", self._topic, exc)


async def ensure_stream(nc: Client, config: StreamConfig, timeout: float, what: str) -> None:
    """Create the stream ``config`` names unless it exists (as it is, whatever its config)."""
    name = config.name
    assert name is not None
    js = nc.jetstream(timeout=timeout)

    async def open_stream() -> None:
        try:
            await js.stream_info(name)
        except nats.js.errors.NotFoundError:
            try:
                await js.add_stream(config)
            except nats.js.errors.BadRequestError:
                await js.stream_info(name)  # another runtime created it first

    # On a fresh cluster JetStream has no leader for a few seconds: wait as buckets do.
    await when_ready(open_stream, f"{what}: opening stream {name}", f"{what}: stream {name}")


async def pull_subscription(
    nc: Client,
    stream: str,
    config: ConsumerConfig,
    *,
    topic: str,
    owner: set[JetStreamSubscription],
    timeout: float,
    what: str,
) -> JetStreamSubscription:
    """A ``JetStreamSubscription`` on the durable consumer ``config``, created unless it exists."""
    js = nc.jetstream(timeout=timeout)
    with map_nats_errors(what):
        try:
            await js.add_consumer(stream, config)
        except nats.js.errors.BadRequestError as exc:
            # A consumer made under another config whose fixed fields differ: deleting it would
            # lose the group's place in the stream, so keep it as it is.
            log.warning("consumer %s keeps its earlier config: %s", config.durable_name, exc.description)
    assert config.durable_name is not None
    sub = JetStreamSubscription(nc, stream, config.durable_name, topic, owner)
    await sub.open()
    owner.add(sub)
    return sub


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
        self._subs: set[JetStreamSubscription] = set()
        self._request = env.request or env.nats.request
        self._on_reopen = env.on_reopen
        self._listening = False
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
        if self._on_reopen is not None and not self._listening:
            self._listening = True
            self._on_reopen(self._reopened)

    async def _reopened(self) -> None:
        """The bus connection was opened anew without the fetch inboxes' subscriptions: take them
        again (the durable consumers live on the server and keep their place)."""
        for sub in list(self._subs):
            try:
                await sub.open()
            except Exception as exc:
                log.warning("pub/sub %r: no fetch inbox for %r after the reopen: %s", self.name, sub.topic, exc)

    async def ping(self) -> None:
        """Stream info, which needs the stream's leader: it fails while events cannot be stored."""
        js = self._nc.jetstream(timeout=self._timeout)
        with map_nats_errors(f"pub/sub {self.name!r}: stream {self.stream}"):
            await js.stream_info(self.stream)

    async def stop(self) -> None:
        for sub in list(self._subs):
            await sub.close()
        self._subs.clear()

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
