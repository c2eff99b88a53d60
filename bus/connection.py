"""One NATS connection per process, shared by the fronts, the worker host and the NATS bridges.

The driver reconnects by itself after a network failure. It does not after the server sent an
error and closed the connection (``-ERR 'Maximum Control Line Exceeded'`` for a subject too long,
for one): nats-py then closes the client for good. The bus opens it again on the same client
object (the bridges hold it) and makes every subscription taken through ``subscribe`` again, so a
bad request cannot leave a process off the bus. Subjects longer than ``MAX_SUBJECT`` are refused
before they reach the server, which keeps l8's own traffic from provoking that error at all.
The driver's callbacks and the re-open are in bus/connection_events.py.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import nats
import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg

from bus import subjects
from bus.auth import BusAuth, redact, redact_all
from bus.codec import HDR_CODE, HDR_MESSAGE, HDR_REASON, Reply
from bus.connection_events import ConnectionEvents, State, close_quietly
from bus.errors import (
    BusClosed,
    BusTimeout,
    BusUnreachable,
    InvalidSubject,
    NoResponders,
    PayloadTooLarge,
    RemoteError,
)
from bus.replies import Replies
from bus.sync import server_has_seen

log = logging.getLogger("l8.bus")

# (subject, payload, headers, timeout) -> the handler's reply, served in this process.
LocalHandler = Callable[[str, bytes, "dict[str, str] | None", float], Awaitable[Reply]]
StatusListener = Callable[[bool, str], None]
# Room for the subject and the headers of a message under the server's payload limit.
ENVELOPE = 1024

# nats-server refuses a protocol line over 4 KiB (PUB <subject> <reply> <sizes>) and closes the
# connection; l8's subjects stay far shorter (names and keys are bounded by handlers/limits.py).
MAX_SUBJECT = 2048
# What a subscription may hold before the driver drops messages as a slow consumer: explicit,
# rather than the driver's 512k messages / 128 MiB, so a stalled handler cannot grow memory that far.
PENDING_MSGS = 65_536
PENDING_BYTES = 64 << 20
PING_INTERVAL = 10.0
MAX_OUTSTANDING_PINGS = 3


class BusSubscription:
    """A subscription taken through the bus; taken again when the bus opens a new connection."""

    __slots__ = ("_bus", "cb", "queue", "sub", "subject")

    def __init__(self, bus: Bus, subject: str, queue: str, cb: Callable[[Msg], Awaitable[None]]) -> None:
        self._bus = bus
        self.subject = subject
        self.queue = queue
        self.cb = cb
        self.sub: Any = None

    async def _take(self, nc: Client) -> None:
        self.sub = await nc.subscribe(
            self.subject,
            queue=self.queue,
            cb=self.cb,
            pending_msgs_limit=PENDING_MSGS,
            pending_bytes_limit=PENDING_BYTES,
        )

    async def unsubscribe(self) -> None:
        self._bus._subs.discard(self)
        await self.sub.unsubscribe()

    async def drain(self) -> None:
        self._bus._subs.discard(self)
        await self.sub.drain()


class Bus(ConnectionEvents):
    """A NATS connection that reconnects forever, is re-opened when the server closes it, and
    drains on stop.

    ``start()`` and ``stop()`` are idempotent. ``start()`` gives up after ``start_timeout`` with
    ``BusUnreachable`` naming the (redacted) URLs. ``request()`` turns the driver's failures into
    the bus errors and an error reply (``l8-code`` header) into ``RemoteError``.
    """

    def __init__(
        self,
        servers: Sequence[str],
        *,
        name: str = "l8",
        connect_timeout: float = 5.0,
        start_timeout: float = 10.0,
        auth: BusAuth | None = None,
        on_reconnect: Callable[[], Awaitable[None]] | None = None,
        inbox_prefix: str | None = None,
        ping_interval: float = PING_INTERVAL,
    ) -> None:
        self._servers = list(servers)
        # Replies come to inboxes of this identity's own (bus/subjects.py inbox_prefix), which a
        # secured bus lets no other identity read.
        self._inbox_prefix = inbox_prefix
        self._name = name
        self._connect_timeout = connect_timeout
        self._start_timeout = start_timeout
        self._ping_interval = ping_interval
        self._auth = auth or BusAuth()
        self._on_reconnect = on_reconnect
        self._reconnect_listeners: list[Callable[[], None]] = []
        self._reopen_listeners: list[Callable[[], Awaitable[None]]] = []
        self._status_listeners: list[StatusListener] = []
        self._nc: Client | None = None
        self._state = State.NEW
        self._lock = asyncio.Lock()
        self._subs: set[BusSubscription] = set()
        self.replies = Replies(self)
        self._reopening: asyncio.Task[None] | None = None
        self._last_error: str = ""
        self._warned: dict[str, float] = {}
        self.slow_consumer_drops = 0
        self.reopened = 0  # times the connection was opened again after the server closed it
        # Routes of this process by stem or by whole subject, served without the server round trip
        # when local dispatch is on (bus/worker.py).
        self._local: dict[str, LocalHandler] = {}

    @property
    def nc(self) -> Client:
        if self._nc is None or self._state is not State.CONNECTED:
            raise BusClosed(f"the bus is {self._state.value}")
        return self._nc

    @property
    def connected(self) -> bool:
        return self._nc is not None and self._nc.is_connected

    @property
    def servers(self) -> str:
        """The configured URLs, credentials taken out: what logs and errors may show."""
        return redact_all(self._servers)

    @property
    def max_payload(self) -> int:
        return self.nc.max_payload

    def _connect_options(self) -> dict[str, Any]:
        return {
            "servers": self._servers,
            "name": self._name,
            "connect_timeout": self._connect_timeout,
            "max_reconnect_attempts": -1,
            "reconnect_time_wait": 0.25,
            # PINGs that go unanswered for MAX_OUTSTANDING_PINGS intervals make nats-py open the
            # connection again: a half-open TCP connection, or a read loop that died (bus/sync.py),
            # is healed in about half a minute, not nats-py's default six.
            "ping_interval": self._ping_interval,
            "max_outstanding_pings": MAX_OUTSTANDING_PINGS,
            "error_cb": self._on_error,
            "disconnected_cb": self._on_disconnected,
            "reconnected_cb": self._on_reconnected,
            "closed_cb": self._on_closed,
            **({"inbox_prefix": self._inbox_prefix} if self._inbox_prefix else {}),
            **self._auth.connect_options(),
        }

    async def start(self) -> None:
        async with self._lock:
            if self._state is State.CONNECTED:
                return
            if self._state is not State.NEW:
                raise BusClosed("a stopped bus cannot start again")
            nc = Client()
            try:
                async with asyncio.timeout(self._start_timeout):
                    await nc.connect(**self._connect_options())
            except (TimeoutError, OSError, nats.errors.Error) as exc:
                await close_quietly(nc)
                why = self._last_error or (str(exc) if not isinstance(exc, TimeoutError) else "")
                raise BusUnreachable(
                    f"cannot connect to the bus at {self.servers} within {self._start_timeout:g}s"
                    + (f": {why}" if why else "")
                ) from None
            self._nc = nc
            self._state = State.CONNECTED
            log.debug("bus connected to %s", redact(str(nc.connected_url.geturl() if nc.connected_url else "")))

    async def stop(self, timeout: float = 5.0) -> None:
        async with self._lock:
            if self._state in (State.NEW, State.CLOSED) or self._nc is None:
                self._state = State.CLOSED
                return
            self._state = State.DRAINING
            reopening, self._reopening = self._reopening, None
            if reopening is not None:
                reopening.cancel()
                await asyncio.gather(reopening, return_exceptions=True)
            nc = self._nc
            if nc.is_closed:
                self._state = State.CLOSED
                return
            try:
                if not nc.is_connected:
                    raise nats.errors.ConnectionReconnectingError()
                async with asyncio.timeout(timeout + 1):
                    await nc.drain()
            except (TimeoutError, nats.errors.Error) as exc:
                # Lost the server: nothing can be drained; close without a fuss.
                log.debug("bus drain did not finish cleanly: %s", type(exc).__name__)
                await close_quietly(nc)
            self._state = State.CLOSED

    def _check(self, subject: str) -> None:
        if len(subject) > MAX_SUBJECT:
            raise InvalidSubject(f"a subject of {len(subject)} characters is longer than the bus takes ({MAX_SUBJECT})")
        if self._reopening is not None:
            raise BusClosed("the bus connection is being opened again")

    async def request(
        self,
        subject: str,
        payload: bytes,
        *,
        timeout: float,
        headers: dict[str, str] | None = None,
    ) -> Msg:
        self._check(subject)
        try:
            msg, nobody = await self.replies.ask(subject, payload, timeout, headers)
        except nats.errors.MaxPayloadError:
            raise PayloadTooLarge(subject, len(payload), self.nc.max_payload) from None
        except (nats.errors.ConnectionClosedError, nats.errors.ConnectionDrainingError) as exc:
            raise BusClosed(str(exc) or "the bus connection is closed") from None
        if msg is None:
            raise BusTimeout(subject, timeout)
        if nobody:
            raise NoResponders(subject)
        hdrs = msg.headers
        if hdrs is not None:
            code = hdrs.get(HDR_CODE)
            if code is not None:
                raise RemoteError(code, hdrs.get(HDR_MESSAGE, ""), hdrs.get(HDR_REASON, ""))
        return msg

    async def exchange(
        self,
        subject: str,
        payload: bytes,
        *,
        timeout: float,
        headers: dict[str, str] | None,
    ) -> Reply:
        """A request answered by a route of this process when local dispatch serves it, else by
        whoever answers on the bus: the same limits, deadline and errors either way."""
        local = self._local_handler(subject)
        if local is not None:
            if len(payload) > self.max_payload - ENVELOPE:
                raise PayloadTooLarge(subject, len(payload), self.max_payload - ENVELOPE)
            return await local(subject, payload, headers, timeout)
        msg = await self.request(subject, payload, timeout=timeout, headers=headers)
        return Reply(msg.data, msg.headers)

    def _local_handler(self, subject: str) -> LocalHandler | None:
        if not self._local:
            return None
        return self._local.get(subjects.stem_of(subject)) or self._local.get(subject)

    def serves_locally(self, subject: str) -> bool:
        """Whether ``exchange(subject, ...)`` is served in this process, without the server."""
        return self._local_handler(subject) is not None

    async def call(
        self,
        subject: str,
        payload: bytes,
        *,
        timeout: float,
        headers: dict[str, str] | None,
    ) -> bytes:
        """``exchange`` for callers that need only the reply's data."""
        if self._local:
            return (await self.exchange(subject, payload, timeout=timeout, headers=headers)).data
        msg = await self.request(subject, payload, timeout=timeout, headers=headers)
        data: bytes = msg.data
        return data

    def serve_locally(self, key: str, handler: LocalHandler) -> None:
        self._local[key] = handler

    def stop_serving_locally(self, key: str, handler: LocalHandler | None = None) -> None:
        """Forget ``key``; with ``handler``, only while it is that handler's (a route that replaced
        another under the same key keeps it)."""
        if handler is None or self._local.get(key) is handler:
            self._local.pop(key, None)

    async def publish(self, subject: str, payload: bytes, headers: dict[str, str] | None = None) -> None:
        self._check(subject)
        await self.nc.publish(subject, payload, headers=headers)

    async def subscribe(self, subject: str, queue: str, cb: Callable[[Msg], Awaitable[None]]) -> BusSubscription:
        """A (queue) subscription with explicit pending limits, kept across re-opened connections."""
        self._check(subject)
        handle = BusSubscription(self, subject, queue, cb)
        await handle._take(self.nc)
        self._subs.add(handle)
        return handle

    def add_reconnect_listener(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` after every reconnect or re-open (it runs in a driver callback: be quick)."""
        self._reconnect_listeners.append(listener)

    def add_reopen_listener(self, listener: Callable[[], Awaitable[None]]) -> None:
        """Await ``listener()`` after the connection was opened again: what holds a subscription not
        taken through ``subscribe`` (a JetStream consumer) takes it again there."""
        self._reopen_listeners.append(listener)

    def add_status_listener(self, listener: StatusListener) -> None:
        """Call ``listener(connected, reason)`` whenever the connection is lost or back."""
        self._status_listeners.append(listener)

    async def retire(self, subscription: BusSubscription, *, grace: float = 0.25, timeout: float = 10.0) -> None:
        """Leave a (queue) subscription without losing a message the server routed to it.

        The server may route a message to the subscription just before it handles the UNSUB and
        send it after the PONG of a flush, and nats-py drops a message whose subscription is gone,
        so ``drain()`` alone can lose it: a request then waits out its deadline instead of going
        to another member of the group. So the UNSUB goes first, the subscription keeps serving
        for ``grace`` seconds, then drains (its second UNSUB is a no-op for the server).

        This is the one use of a private nats-py call (``_send_unsubscribe``), because no public
        one keeps the guarantee: ``unsubscribe()`` and ``drain()`` remove the local handler at
        once or right after the flush; ``unsubscribe(limit=n)`` keeps it only for ``n`` messages
        in all, while the server stops routing only once it has delivered ``n``. The server has
        delivered an unknown number more than the client has received, so no ``n`` both stops the
        routing now and keeps every message in flight. tests/test_bus.py's leaving-worker test
        loses requests with either public variant.
        """
        self._subs.discard(subscription)
        nc = self.nc
        sub = subscription.sub
        async with asyncio.timeout(timeout):
            await nc._send_unsubscribe(sub._id)
            await server_has_seen(nc)
            await asyncio.sleep(grace)
            await sub.drain()
