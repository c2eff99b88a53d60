"""JetStream's consumer side: durable pull consumers and the subscriptions that fetch from them.

Shared by the pub/sub component (bridges/nats/pubsub.py) and the input bindings that read a stream
(bridges/nats/bindings.py, bridges/cron/bindings.py). Subscribers of one group bind the same
durable consumer, which JetStream shares between them. Settling is explicit: ack, nak with a delay
(retry) or term (drop).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import ConsumerConfig, StreamConfig

from bridges.errors import BackendUnavailable, L8Error
from bridges.nats.buckets import when_ready
from bridges.nats.errors import map_nats_errors
from bridges.protocols import Received

# The logger these had in bridges/nats/pubsub.py, kept so that log settings by name still apply.
log = logging.getLogger("l8.bridges.nats.pubsub")

_STATUS = "Status"
_BATCH_SETTLE_TICKS = 2  # loop turns without a new message before a partial batch is handed out


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


class Subscriptions(set[Any]):
    """A component's open subscriptions (each adds itself and discards itself when closed), taken
    again when the bus connection is opened anew: a re-opened connection has none of the fetch
    inboxes' or core subscriptions, while the durable consumers live on the server and keep their
    place."""

    def __init__(self, what: str, on_reopen: Callable[[Callable[[], Awaitable[None]]], None] | None) -> None:
        super().__init__()
        self._what = what
        self._on_reopen = on_reopen
        self._listening = False

    def listen(self) -> None:
        """Ask to be told of every re-open (once, however often the component starts)."""
        if self._on_reopen is not None and not self._listening:
            self._listening = True
            self._on_reopen(self.reopen)

    async def reopen(self) -> None:
        for sub in list(self):
            try:
                await sub.open()
            except Exception as exc:
                log.warning("%s: a subscription was not taken again after the reopen: %s", self._what, exc)

    async def close(self) -> None:
        for sub in list(self):
            await sub.close()
        self.clear()


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
