"""Request/reply on one inbox per connection: the bus's request path, on public nats-py calls.

Every request of a connection gets its reply on ``<inbox>.<n>`` of one wildcard subscription; a
counter names it (no random token per call) and a timer handle bounds it (no ``wait_for`` task per
call), which is what a request costs besides the two messages. No responders come back as the
server's ``503`` status message on the same inbox.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import TYPE_CHECKING, Any

import nats.errors
from nats.aio.msg import Msg

if TYPE_CHECKING:
    from bus.connection import Bus, BusSubscription

_STATUS = "Status"
_NO_RESPONDERS = "503"


class Replies:
    def __init__(self, bus: Bus) -> None:
        self._bus = bus
        self._prefix = ""
        self._cut = 0
        self._waiting: dict[str, asyncio.Future[Msg | None]] = {}
        self._counter = itertools.count()
        self._handle: BusSubscription | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def open(self) -> None:
        if self._handle is not None:
            return
        self._prefix = self._bus.nc.new_inbox() + "."
        self._cut = len(self._prefix)
        self._loop = asyncio.get_running_loop()
        self._handle = await self._bus.subscribe(self._prefix + "*", "", self._arrived)

    async def _arrived(self, msg: Msg) -> None:
        waiter = self._waiting.pop(msg.subject[self._cut :], None)
        if waiter is not None and not waiter.done():
            waiter.set_result(msg)

    async def ask(
        self, subject: str, payload: bytes, timeout: float, headers: dict[str, str] | None
    ) -> tuple[Msg | None, bool]:
        """The reply, or (None, False) when none came within ``timeout``; (msg, True) says nobody
        listens on ``subject``. Driver errors of the publish propagate."""
        if self._handle is None:
            await self.open()
        loop = self._loop
        assert loop is not None
        token = str(next(self._counter))
        waiter: asyncio.Future[Msg | None] = loop.create_future()
        self._waiting[token] = waiter
        timer = loop.call_later(timeout, _expire, waiter)
        try:
            await self._bus.nc.publish(subject, payload, reply=self._prefix + token, headers=headers)
            msg = await waiter
        finally:
            timer.cancel()
            self._waiting.pop(token, None)
        if msg is None:
            return None, False
        found: Any = msg.headers
        if found is not None and not msg.data and found.get(_STATUS) == _NO_RESPONDERS:
            return msg, True
        return msg, False

    async def request(
        self, subject: str, payload: bytes = b"", timeout: float = 0.5, headers: dict[str, str] | None = None
    ) -> Msg:
        """A drop-in for nats-py's ``Client.request`` (its errors included), for the NATS bridges."""
        msg, nobody = await self.ask(subject, payload, timeout, headers)
        if msg is None:
            raise nats.errors.TimeoutError
        if nobody:
            raise nats.errors.NoRespondersError
        return msg


def _expire(waiter: asyncio.Future[Msg | None]) -> None:
    if not waiter.done():
        waiter.set_result(None)
