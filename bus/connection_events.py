"""What the driver tells the bus connection: errors, disconnects, reconnects, a close by the
server (then the connection is opened again), each turned into logs and status notices.

A base of ``Bus`` (bus/connection.py), apart from the requests and subscriptions it serves.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import nats
import nats.errors
from nats.aio.client import Client

from bus.auth import redact
from bus.sync import server_has_seen

if TYPE_CHECKING:
    from bus.connection import BusSubscription, StatusListener

log = logging.getLogger("l8.bus")

_WARN_EVERY = 10.0  # seconds between warnings of one kind while a problem lasts


class State(enum.Enum):
    NEW = "new"
    CONNECTED = "connected"
    DRAINING = "draining"
    CLOSED = "closed"


class ConnectionEvents:
    """The driver's callbacks of a ``Bus``; the state they read and change is the bus's."""

    _state: State
    _nc: Client | None
    _subs: set[BusSubscription]
    _status_listeners: list[StatusListener]
    _reconnect_listeners: list[Callable[[], None]]
    _reopen_listeners: list[Callable[[], Awaitable[None]]]
    _on_reconnect: Callable[[], Awaitable[None]] | None
    _reopening: asyncio.Task[None] | None
    _last_error: str
    _warned: dict[str, float]
    _start_timeout: float
    slow_consumer_drops: int
    reopened: int

    @property
    def servers(self) -> str:
        raise NotImplementedError

    def _connect_options(self) -> dict[str, Any]:
        raise NotImplementedError

    def _warn(self, kind: str, message: str, *args: Any) -> None:
        """Log a warning at most once per ``_WARN_EVERY`` seconds per kind: an outage or a slow
        consumer must not flood the log."""
        now = time.monotonic()
        if now - self._warned.get(kind, -_WARN_EVERY) >= _WARN_EVERY:
            self._warned[kind] = now
            log.warning(message, *args)

    async def _on_error(self, exc: Exception) -> None:
        if isinstance(exc, nats.errors.SlowConsumerError):
            self.slow_consumer_drops += 1
            self._warn(
                f"slow:{exc.subject}",
                "bus: a slow consumer on %s dropped messages (%d dropped in all); its handler falls behind",
                exc.subject,
                self.slow_consumer_drops,
            )
            return
        self._last_error = str(exc) or type(exc).__name__
        if self._state is State.CONNECTED:
            self._warn("error", "bus error: %s", self._last_error)
        else:
            log.debug("bus error: %s", self._last_error)

    def _notify(self, connected: bool, reason: str) -> None:
        for listener in self._status_listeners:
            try:
                listener(connected, reason)
            except Exception:
                log.exception("a bus status listener failed")

    async def _on_disconnected(self) -> None:
        if self._state is State.CONNECTED:
            self._warn("disconnected", "bus disconnected; reconnecting")
            self._notify(False, f"disconnected from the bus ({self.servers}); reconnecting")

    async def _on_reconnected(self) -> None:
        if self._nc is not None and self._nc.connected_url is not None:
            log.info("bus reconnected to %s", redact(self._nc.connected_url.geturl()))
        self._notify(True, "")
        await self._after_reconnect()

    async def _after_reconnect(self) -> None:
        for listener in self._reconnect_listeners:
            try:
                listener()
            except Exception:
                log.exception("a reconnect listener failed")
        if self._on_reconnect is not None:
            await self._on_reconnect()

    async def _on_closed(self) -> None:
        if self._state is not State.CONNECTED or self._reopening is not None:
            return  # closed by stop(), or already being opened again
        why = self._last_error or "closed"
        log.warning("the bus connection was closed by the server (%s); opening it again", why)
        self._notify(False, f"the bus connection was closed ({why}); opening it again")
        self._reopening = asyncio.get_running_loop().create_task(self._reopen(), name="l8-bus-reopen")

    async def _reopen(self) -> None:
        """Connect the same client again and take every subscription again."""
        assert self._nc is not None
        nc = self._nc
        delay = 0.1
        try:
            while self._state is State.CONNECTED:
                try:
                    async with asyncio.timeout(max(self._start_timeout, 1.0)):
                        await nc.connect(**self._connect_options())
                    for handle in list(self._subs):
                        await handle._take(nc)
                    await server_has_seen(nc)
                    break
                except (TimeoutError, OSError, nats.errors.Error) as exc:
                    log.debug("opening the bus connection again failed: %s", exc)
                    if not nc.is_closed:
                        await close_quietly(nc)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 2.0)
        finally:
            self._reopening = None
        if self._state is not State.CONNECTED:
            return
        self.reopened += 1
        log.info("bus connection open again (%d subscriptions taken again)", len(self._subs))
        for listener in list(self._reopen_listeners):
            try:
                await listener()
            except Exception:
                log.exception("a re-open listener failed")
        self._notify(True, "")
        await self._after_reconnect()


async def close_quietly(nc: Client) -> None:
    try:
        await nc.close()
    except Exception as exc:
        log.debug("closing the bus connection failed: %s", exc)
