"""A binding to a NATS subject. Output: ``publish`` (flushed to the server, or acknowledged by the
stream when the subject is JetStream-backed; ``create`` is the same, the name Dapr's apps send) and
``request`` (request/reply within the call's time). Input: the subject's messages, for each app.

Metadata: ``subject`` (required, no wildcards), ``url`` (a NATS server of its own; default: the
bus's connection), ``timeoutSeconds`` (the longest a request waits, default 5; the caller's deadline
may cut it shorter). On the bus's own server the subject may not start with ``l8.``, ``$`` or
``_INBOX.``: those are l8's requests, JetStream's API and replies, which an app must not reach
through a binding. A call's metadata travels as NATS headers; a reply's headers come back as the
response metadata.

As an input, core NATS keeps nothing: each app's subscribers share a queue group named after it,
a retried event waits in the worker's memory, and what a worker holds when it dies, or what arrives
past ``maxPending`` waiting events, is lost (at most once). With ``stream`` the subject is
JetStream-backed: l8 creates that stream unless it exists (``maxAgeSeconds``, default 7 days,
``replicas``), each app reads it through a durable consumer of its own (``ackWaitSeconds``,
default 30; ``deliverPolicy`` ``all`` or ``new``, for its first subscription), and an event is
acknowledged only after the app answered (at least once). An event's metadata is its NATS headers.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import re
import time
from collections import deque
from typing import Any

import nats
import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, StorageType, StreamConfig

from bridges.errors import BackendUnavailable, DeadlineExceeded, InvalidArgument, ResourceExhausted
from bridges.nats.errors import check_pub_ack, map_nats_errors
from bridges.nats.subscription import (
    JetStreamSubscription,
    Subscriptions,
    durable_name,
    ensure_stream,
    pull_subscription,
)
from bridges.nats.sync import server_has_seen
from bridges.protocols import BindingReply, Received
from bridges.registry import BridgeEnv

log = logging.getLogger("l8.bridges.nats.bindings")

_SUBJECT = re.compile(r"^[^\s.*>]+(\.[^\s.*>]+)*$")
_HEADER = re.compile(r"^[!-9;-~]+$")  # printable ASCII but ':'
_STREAM = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_RESERVED = ("l8.", "$", "_INBOX.")
_DROP_LOG_EVERY = 10.0


def _number(metadata: dict[str, str], key: str, default: float, low: float, high: float, what: str) -> float:
    raw = metadata.get(key) or str(default)
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{what}: metadata {key} {raw[:32]!r} is not a number") from None
    if not low <= value <= high:
        raise ValueError(f"{what}: metadata {key} must be from {low:g} to {high:g}, got {value:g}")
    return value


class NatsBinding:
    def __init__(self, name: str, metadata: dict[str, str], env: BridgeEnv) -> None:
        self.name = name
        self._what = f"binding {name!r}"
        self.subject = metadata.get("subject", "")
        if not _SUBJECT.match(self.subject):
            raise ValueError(f"{self._what}: metadata subject {self.subject!r} is not a NATS subject without wildcards")
        self._url = metadata.get("url") or ""
        if not self._url and self.subject.startswith(_RESERVED):
            raise ValueError(
                f"{self._what}: subject {self.subject!r} is l8's own on the bus; "
                "use another, or a server of its own (url)"
            )
        if not self._url and env.nats is None:
            raise ValueError(f"{self._what}: needs the bus connection or metadata url")
        self._timeout = _number(metadata, "timeoutSeconds", 5, 0.001, 3600, self._what)
        self.stream = metadata.get("stream") or ""
        if self.stream and not _STREAM.match(self.stream):
            raise ValueError(
                f"{self._what}: metadata stream {self.stream[:64]!r} is not 1 to 64 letters, digits, _ or -"
            )
        self._ack_wait = _number(metadata, "ackWaitSeconds", 30, 1, 86400, self._what)
        self._max_age = _number(metadata, "maxAgeSeconds", 7 * 86400, 0, 10 * 365 * 86400, self._what)
        self._replicas = int(_number(metadata, "replicas", 1, 1, 5, self._what))
        self._max_pending = int(_number(metadata, "maxPending", 10_000, 1, 1_000_000, self._what))
        policy = metadata.get("deliverPolicy") or "all"
        if policy not in ("all", "new"):
            raise ValueError(f"{self._what}: metadata deliverPolicy {policy[:32]!r} is neither 'all' nor 'new'")
        self._deliver_policy = DeliverPolicy.ALL if policy == "all" else DeliverPolicy.NEW
        self.lease_seconds: float | None = self._ack_wait if self.stream else None
        self._nc: Client | None = None if self._url else env.nats
        self._own = bool(self._url)
        # The bus's connection may be opened anew, without this binding's subscriptions.
        self._subs = Subscriptions(self._what, None if self._own else env.on_reopen)

    def features(self) -> frozenset[str]:
        return frozenset()

    def operations(self) -> tuple[str, ...]:
        return ("publish", "request", "create")

    async def start(self) -> None:
        if self._own and self._nc is None:
            with map_nats_errors(f"{self._what}: connecting to {self._url}"):
                try:
                    self._nc = await nats.connect(
                        servers=[u.strip() for u in self._url.split(",")],
                        name=f"l8-binding:{self.name}",
                        connect_timeout=self._timeout,
                        max_reconnect_attempts=-1,
                        allow_reconnect=True,
                    )
                except (OSError, nats.errors.NoServersError) as exc:
                    raise BackendUnavailable(f"{self._what}: cannot reach {self._url}: {exc}") from None
        if self.stream and self._nc is not None:
            config = StreamConfig(
                name=self.stream,
                subjects=[self.subject],
                storage=StorageType.FILE,
                num_replicas=self._replicas,
                max_age=self._max_age or None,
            )
            await ensure_stream(self._nc, config, self._timeout, self._what)
        self._subs.listen()

    async def stop(self) -> None:
        await self._subs.close()
        if self._own and self._nc is not None:
            nc, self._nc = self._nc, None
            try:
                await nc.drain()
            except Exception:
                await nc.close()

    def _connection(self) -> Client:
        if self._nc is None:
            raise BackendUnavailable(f"{self._what} is not started")
        return self._nc

    def _headers(self, metadata: dict[str, str]) -> dict[str, str] | None:
        for key, value in metadata.items():
            if not _HEADER.match(key) or any(c in value for c in "\r\n\x00"):
                raise InvalidArgument(f"{self._what}: metadata {key[:64]!r} cannot be a NATS header")
        return metadata or None

    async def invoke(
        self, operation: str, data: bytes, metadata: dict[str, str], *, timeout: float, max_reply: int
    ) -> BindingReply:
        nc = self._connection()
        headers = self._headers(metadata)
        what = f"{self._what}: {operation} on {self.subject}"
        wait = min(timeout, self._timeout)
        with map_nats_errors(what):
            if operation in ("publish", "create") and self.stream:
                try:
                    ack = await nc.request(self.subject, data, timeout=wait, headers=headers)
                except nats.errors.TimeoutError:
                    raise DeadlineExceeded(f"{what}: stream {self.stream} did not confirm in time") from None
                check_pub_ack(ack.data, what)
                return BindingReply()
            if operation in ("publish", "create"):
                await nc.publish(self.subject, data, headers=headers)
                # The flush's round trip says the server has the message (core NATS acks no more).
                try:
                    async with asyncio.timeout(wait):
                        await server_has_seen(nc)
                except TimeoutError:
                    raise DeadlineExceeded(f"{what}: the server did not confirm in time") from None
                return BindingReply()
            try:
                msg = await nc.request(self.subject, data, timeout=wait, headers=headers)
            except nats.errors.NoRespondersError:
                raise BackendUnavailable(f"{what}: nobody answers") from None
            except nats.errors.TimeoutError:
                raise DeadlineExceeded(f"{what}: no answer within {wait:.3f}s") from None
        if len(msg.data) > max_reply:
            raise ResourceExhausted(f"{what}: the reply is {len(msg.data)} bytes; the most is {max_reply}")
        return BindingReply(msg.data, dict(msg.headers or {}))

    # ---- input ----

    async def subscribe(
        self, group: str, *, max_in_flight: int, ordered: bool = False
    ) -> JetStreamSubscription | CoreSubscription:
        nc = self._connection()
        if not group:
            raise InvalidArgument(f"{self._what}: a subscription needs a group")
        if not self.stream:
            core = CoreSubscription(nc, self.subject, group, self._max_pending, self._what, self._subs)
            await core.open()
            return core
        durable = durable_name(group, f"bind-{self.name}")
        config = ConsumerConfig(
            name=durable,
            durable_name=durable,
            description=f"l8 group {group} on binding {self.name}",
            filter_subject=self.subject,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=self._ack_wait,
            max_deliver=-1,
            max_ack_pending=1 if ordered else max(1, max_in_flight),
            deliver_policy=self._deliver_policy,
        )
        return await pull_subscription(
            nc,
            self.stream,
            config,
            topic=self.subject,
            owner=self._subs,
            timeout=self._timeout,
            what=f"{self._what}: subscribing {group!r} to stream {self.stream}",
        )


class _CoreReceived:
    __slots__ = ("_owner", "_settled", "attempt", "data", "headers", "seq", "topic")

    def __init__(self, owner: CoreSubscription, msg: Msg, seq: int) -> None:
        self._owner = owner
        self._settled = False
        self.data: bytes = msg.data
        self.headers: dict[str, str] = dict(msg.headers or {})
        self.topic: str = msg.subject
        self.attempt = 1
        self.seq = seq

    @property
    def ref(self) -> str:
        return f"core NATS message {self.seq} on {self.topic}"

    async def touch(self) -> None:
        return None  # core NATS redelivers nothing, so there is no lease to renew

    async def ack(self) -> None:
        self._settled = True

    async def drop(self) -> None:
        self._settled = True

    async def retry(self, delay: float) -> None:
        self._owner.again(self, delay)


class CoreSubscription:
    """A queue subscription to a core NATS subject; retries wait in memory, in delay order."""

    def __init__(self, nc: Client, subject: str, group: str, max_pending: int, what: str, owner: set[Any]) -> None:
        self._nc = nc
        self._subject = subject
        self._group = group
        self._max_pending = max_pending
        self._what = what
        self._owner = owner
        self._buf: deque[Msg] = deque()
        self._retries: list[tuple[float, int, _CoreReceived]] = []
        self._order = itertools.count()
        self._seq = itertools.count(1)
        self._arrived = asyncio.Event()
        self._sub: Any = None
        self._closed = False
        self._dropped = 0
        self._next_report = 0.0

    async def open(self) -> None:
        """Subscribe (again, after the connection was opened anew)."""
        if self._closed:
            return
        with map_nats_errors(f"{self._what}: subscribing to {self._subject}"):
            self._sub = await self._nc.subscribe(
                self._subject, queue=self._group, cb=self._on_msg, pending_msgs_limit=-1, pending_bytes_limit=-1
            )
            await server_has_seen(self._nc)
        self._owner.add(self)

    async def _on_msg(self, msg: Msg) -> None:
        if len(self._buf) >= self._max_pending:
            self._dropped += 1
            now = time.monotonic()
            if now >= self._next_report:
                log.warning(
                    "%s: %d events waiting; dropped %d more from %s (core NATS keeps nothing; "
                    "metadata stream makes the subject JetStream-backed)",
                    self._what,
                    len(self._buf),
                    self._dropped,
                    self._subject,
                )
                self._dropped = 0
                self._next_report = now + _DROP_LOG_EVERY
            return
        self._buf.append(msg)
        self._arrived.set()

    def again(self, received: _CoreReceived, delay: float) -> None:
        if self._closed:
            return
        received.attempt += 1
        heapq.heappush(self._retries, (time.monotonic() + max(0.0, delay), next(self._order), received))
        self._arrived.set()

    def _take(self, n: int) -> list[Received]:
        out: list[Received] = []
        now = time.monotonic()
        while self._retries and len(out) < n and self._retries[0][0] <= now:
            out.append(heapq.heappop(self._retries)[2])
        while self._buf and len(out) < n:
            out.append(_CoreReceived(self, self._buf.popleft(), next(self._seq)))
        return out

    async def fetch(self, max_messages: int, timeout: float) -> list[Received]:
        deadline = time.monotonic() + max(0.0, timeout)
        while not self._closed:
            self._arrived.clear()
            out = self._take(max(1, max_messages))
            if out:
                return out
            now = time.monotonic()
            if now >= deadline:
                return []
            wait = deadline - now
            if self._retries:
                wait = min(wait, max(0.0, self._retries[0][0] - now))
            try:
                await asyncio.wait_for(self._arrived.wait(), wait)
            except TimeoutError:
                continue
        return []

    async def keep_alive(self) -> None:
        return None  # nothing to keep: core NATS holds no lease

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._owner.discard(self)
        held = len(self._buf) + len(self._retries)
        self._buf.clear()
        self._retries.clear()
        self._arrived.set()
        if held:
            log.info("%s: %d core NATS events not delivered when the subscription closed", self._what, held)
        if self._sub is not None:
            try:
                await self._sub.unsubscribe()
            except Exception as exc:  # the connection may be gone
                log.debug("unsubscribe of %s failed: %s", self._subject, exc)
