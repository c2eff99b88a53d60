"""One NATS connection per process, shared by the fronts, the worker host and the NATS bridges."""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import nats
import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg

from bus import subjects
from bus.codec import HDR_CODE, HDR_MESSAGE, Reply
from bus.errors import BusClosed, BusTimeout, NoResponders, PayloadTooLarge, RemoteError

log = logging.getLogger("l8.bus")

# (subject, payload, headers, timeout) -> the handler's reply, served in this process.
LocalHandler = Callable[[str, bytes, "dict[str, str] | None", float], Awaitable[Reply]]
# Room for the subject and the headers of a message under the server's payload limit.
ENVELOPE = 1024


class State(enum.Enum):
    NEW = "new"
    CONNECTED = "connected"
    DRAINING = "draining"
    CLOSED = "closed"


class Bus:
    """A NATS connection that reconnects forever and drains on stop.

    ``start()`` and ``stop()`` are idempotent. ``request()`` turns the driver's failures into
    the bus errors and an error reply (``l8-code`` header) into ``RemoteError``.
    """

    def __init__(
        self,
        servers: Sequence[str],
        *,
        name: str = "l8",
        connect_timeout: float = 5.0,
        on_reconnect: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self._servers = list(servers)
        self._name = name
        self._connect_timeout = connect_timeout
        self._on_reconnect = on_reconnect
        self._reconnect_listeners: list[Callable[[], None]] = []
        self._nc: Client | None = None
        self._state = State.NEW
        self._lock = asyncio.Lock()
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
    def max_payload(self) -> int:
        return self.nc.max_payload

    async def start(self) -> None:
        async with self._lock:
            if self._state is State.CONNECTED:
                return
            if self._state is not State.NEW:
                raise BusClosed("a stopped bus cannot start again")
            self._nc = await nats.connect(
                servers=self._servers,
                name=self._name,
                connect_timeout=self._connect_timeout,
                max_reconnect_attempts=-1,
                reconnect_time_wait=0.25,
                error_cb=self._on_error,
                disconnected_cb=self._on_disconnected,
                reconnected_cb=self._on_reconnected,
                # The default 512k-message backlog lets a burst grow memory without bound first.
                pending_size=64 * 1024 * 1024,
            )
            self._state = State.CONNECTED
            log.debug("bus connected to %s", self._nc.connected_url)

    async def stop(self, timeout: float = 5.0) -> None:
        async with self._lock:
            if self._state in (State.NEW, State.CLOSED) or self._nc is None:
                self._state = State.CLOSED
                return
            self._state = State.DRAINING
            nc = self._nc
            nc.options["drain_timeout"] = timeout
            try:
                await nc.drain()
            except (TimeoutError, nats.errors.Error) as exc:
                log.warning("bus drain did not finish cleanly: %s", exc)
                await nc.close()
            self._state = State.CLOSED

    async def request(
        self,
        subject: str,
        payload: bytes,
        *,
        timeout: float,
        headers: dict[str, str] | None = None,
    ) -> Msg:
        try:
            msg = await self.nc.request(subject, payload, timeout=timeout, headers=headers)
        except nats.errors.NoRespondersError:
            raise NoResponders(subject) from None
        except nats.errors.TimeoutError:
            raise BusTimeout(subject, timeout) from None
        except nats.errors.MaxPayloadError:
            raise PayloadTooLarge(subject, len(payload), self.nc.max_payload) from None
        except (nats.errors.ConnectionClosedError, nats.errors.ConnectionDrainingError) as exc:
            raise BusClosed(str(exc) or "the bus connection is closed") from None
        hdrs = msg.headers
        if hdrs is not None:
            code = hdrs.get(HDR_CODE)
            if code is not None:
                raise RemoteError(code, hdrs.get(HDR_MESSAGE, ""))
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
        if self._local:
            local = self._local.get(subjects.stem_of(subject)) or self._local.get(subject)
            if local is not None:
                if len(payload) > self.max_payload - ENVELOPE:
                    raise PayloadTooLarge(subject, len(payload), self.max_payload - ENVELOPE)
                return await local(subject, payload, headers, timeout)
        msg = await self.request(subject, payload, timeout=timeout, headers=headers)
        return Reply(msg.data, msg.headers)

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

    def stop_serving_locally(self, key: str) -> None:
        self._local.pop(key, None)

    async def publish(self, subject: str, payload: bytes, headers: dict[str, str] | None = None) -> None:
        await self.nc.publish(subject, payload, headers=headers)

    async def subscribe(self, subject: str, queue: str, cb: Callable[[Msg], Awaitable[None]]) -> Any:
        return await self.nc.subscribe(subject, queue=queue, cb=cb)

    def add_reconnect_listener(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` after every reconnect (it runs in the driver's callback: be quick)."""
        self._reconnect_listeners.append(listener)

    async def retire(self, subscription: Any, *, grace: float = 0.25, timeout: float = 10.0) -> None:
        """Leave a (queue) subscription without losing a message the server routed to it.

        The server may route a message to the subscription just before it handles the UNSUB and
        send it after the PONG of a flush, and nats-py drops a message whose subscription is gone,
        so ``drain()`` alone can lose it: a request then waits out its deadline instead of going
        to another member of the group. So the UNSUB goes first, the subscription keeps serving
        for ``grace`` seconds, then drains (its second UNSUB is a no-op for the server).
        """
        nc = self.nc
        async with asyncio.timeout(timeout):
            # nats-py has no public call that unsubscribes at the server and keeps the local handler.
            await nc._send_unsubscribe(subscription._id)
            await nc.flush()
            await asyncio.sleep(grace)
            await subscription.drain()

    async def _on_error(self, exc: Exception) -> None:
        log.warning("bus error: %s", exc)

    async def _on_disconnected(self) -> None:
        if self._state is State.CONNECTED:
            log.warning("bus disconnected; reconnecting")

    async def _on_reconnected(self) -> None:
        if self._nc is not None:
            log.info("bus reconnected to %s", self._nc.connected_url)
        for listener in self._reconnect_listeners:
            try:
                listener()
            except Exception:
                log.exception("a reconnect listener failed")
        if self._on_reconnect is not None:
            await self._on_reconnect()
