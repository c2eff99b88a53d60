"""How the two ends of a stream (bus/stream.py) reach each other: over NATS or within one process.

Each end has an ``Inbox`` of the events that reached it, in arrival order, and a link to the other
end's. Over NATS an end subscribes ``<inbox>.>`` and the link publishes ``<peer inbox>.<kind>.<n>``;
within one process the link puts the event straight into the peer's inbox. Either way an end that
waits ``PROBE`` seconds without an event pings the other (``p.0``, answered at once by the peer's
subscription): when nobody listens any more the server says so, and the stream ends at once.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from nats.aio.msg import Msg

from bus.connection import Bus
from bus.errors import BusTimeout, NoResponders, StreamBroken

log = logging.getLogger("l8.bus.stream")

PROBE = 2.0  # seconds of silence before an end checks that the other is still there


@dataclass(slots=True)
class Event:
    kind: str  # r d m e c x, or f: the reply to the opening request arrived (caller's end only)
    n: int
    data: bytes = b""


class Inbox:
    """The events that reached one end, in arrival order."""

    __slots__ = ("_events", "_wake")

    def __init__(self) -> None:
        self._events: deque[Event] = deque()
        self._wake = asyncio.Event()

    def put(self, event: Event) -> None:
        self._events.append(event)
        self._wake.set()

    async def get(self, idle: float, link: Link | None = None) -> Event:
        """The next event; after ``PROBE`` silent seconds the peer is pinged (when ``link`` can), so
        a peer that is gone ends the stream at once, and one that is only slow gets ``idle``."""
        waited = 0.0
        while not self._events:
            self._wake.clear()
            step = min(PROBE, idle - waited)
            try:
                async with asyncio.timeout(step):
                    await self._wake.wait()
            except TimeoutError:
                waited += step
                if waited >= idle:
                    raise StreamBroken(
                        "DEADLINE_EXCEEDED", f"the stream's other end sent nothing for {idle:g}s"
                    ) from None
                if link is not None:
                    await link.ping()
        return self._events.popleft()


class Link(Protocol):
    """How one end reaches the other."""

    async def send(self, kind: str, n: int, data: bytes = b"") -> None: ...

    async def ping(self) -> None:
        """Raise StreamBroken if the other end is gone."""
        ...


class NatsLink:
    __slots__ = ("_bus", "_prefix")

    def __init__(self, bus: Bus, inbox: str) -> None:
        self._bus = bus
        self._prefix = inbox + "."

    async def send(self, kind: str, n: int, data: bytes = b"") -> None:
        await self._bus.publish(f"{self._prefix}{kind}.{n}", data)

    async def ping(self) -> None:
        # The peer's subscription answers at once; when it is gone the server says no one listens.
        try:
            await self._bus.request(f"{self._prefix}p.0", b"", timeout=PROBE)
        except NoResponders:
            raise StreamBroken("UNAVAILABLE", "the other end of the stream is gone") from None
        except BusTimeout:
            pass  # busy or far: the idle timeout decides


class LocalLink:
    __slots__ = ("_inbox",)

    def __init__(self, inbox: Inbox) -> None:
        self._inbox = inbox

    async def send(self, kind: str, n: int, data: bytes = b"") -> None:
        self._inbox.put(Event(kind, n, data))

    async def ping(self) -> None:
        return None  # in one process the handler's end fails through the request's reply


@dataclass(slots=True)
class LocalPipe:
    """A caller's end waiting for its handler in this process to pick it up."""

    inbox: Inbox
    link: LocalLink | None = None


def events_into(inbox: Inbox, prefix_len: int) -> Callable[[Msg], Awaitable[None]]:
    async def deliver(msg: Msg) -> None:
        kind, _, n = msg.subject[prefix_len:].partition(".")
        if kind == "p":
            if msg.reply:
                await msg.respond(b"")
            return
        try:
            inbox.put(Event(kind, int(n), msg.data))
        except ValueError:
            log.debug("a stream got a message on %s, which is not one of its events", msg.subject)

    return deliver
