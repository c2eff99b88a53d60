"""Streams of messages beside one request, between a caller and a handler, with flow control.

A stream rides on one request. The caller (a front) opens it with a request whose payload names the
stream; the handler reads or writes messages on it while the request is served, and the request's
reply is the stream's final status. Messages flow one way: from the caller to the handler (an
upload) or from the handler to the caller (a download). The receiver grants credit and the sender
never has more than ``window`` pieces unacknowledged, so whatever the speed of either end a stream
holds at most ``window`` pieces in memory on each side. A message larger than a piece crosses as
several pieces and is joined again before it is handed out.

Over NATS each end subscribes ``<inbox>.>`` and sends the other ``<peer inbox>.<kind>.<n>``:

- ``r.<credit>``: the handler's end is live (payload: its inbox); ``credit`` is the upload window
- ``d.<seq>`` / ``m.<seq>``: a piece ending a message / a piece continued by the next one
- ``e.<count>``: the sender is done after ``count`` pieces
- ``c.<seq>``: credit: the sender may send pieces up to ``seq``
- ``x.0``: the caller gave up (payload: why)
- ``p.0``: is this end still there? (bus/stream_links.py: a killed peer ends the stream at once)

Within one process (the request served by local dispatch) the two ends hand each other the same
events directly, with the same window, the same checks and the same timeouts.

A sequence gap (a message the bus lost), a peer silent for ``idle`` seconds, or a cancel ends the
stream with ``StreamBroken``, whose ``code`` the worker host sends back like any handler error.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import secrets
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

from bus import subjects
from bus.codec import Reply, RequestContext
from bus.connection import Bus
from bus.errors import BusError, StreamBroken
from bus.stream_links import Event, Inbox, Link, LocalLink, LocalPipe, NatsLink, events_into
from bus.worker import Handler

_MAGIC = b"l8-stream/1"
# Where an end may be told to send: a reply inbox, never another subject (a crafted opening
# request must not make a worker publish into l8's requests or JetStream's API).
_INBOX = re.compile(r"^_INBOX(\.[A-Za-z0-9_-]{1,64}){1,6}$")
UPLOAD = "u"
DOWNLOAD = "d"
DEFAULT_WINDOW = 8
DEFAULT_IDLE = 60.0
OPEN_WAIT = 15.0  # seconds a caller waits for the worker that took its request to take the stream
DEFAULT_PIECE = 256 << 10
DEFAULT_MAX_MESSAGE = 32 << 20
_ENVELOPE = 4096  # room for the subject and headers under the bus's payload limit

StreamOp = Callable[[bytes, "Stream", RequestContext], Awaitable["bytes | Reply"]]

# Caller ends waiting for a handler in this same process, by token.
_pending: dict[str, LocalPipe] = {}


class Stream:
    """One end of a stream: ``send`` on the sending end, ``async for`` (or ``receive``) on the other."""

    def __init__(self, inbox: Inbox, *, sending: bool, window: int, idle: float, piece: int, max_message: int) -> None:
        self._inbox = inbox
        self.sending = sending
        self._window = window
        self._idle = idle
        self._piece = piece
        self._max_message = max_message
        self._link: Link | None = None
        self._sent = 0  # pieces sent
        self._allowed = 0  # the sender may send pieces up to this sequence number
        self._received = 0  # pieces received
        self._granted = 0  # credit given to the sender
        self.ended = False  # the receiver saw the end
        self.broken = False  # the other end is gone or the stream failed: nobody to wait for
        self.cancelled: str | None = None
        self._final: asyncio.Task[bytes] | None = None  # the caller's opening request

    # ---- sending ----

    async def send(self, message: bytes) -> None:
        """Send one message, waiting for credit; a large one goes as several pieces."""
        if not self.sending:
            raise RuntimeError("this end of the stream receives")
        step = self._piece
        last = max(0, (len(message) - 1) // step)
        for i in range(last + 1):
            while self._sent >= self._allowed:
                self._on_sender_event(await self._next())
            self._sent += 1
            piece = message if last == 0 else message[i * step : (i + 1) * step]
            assert self._link is not None
            await self._link.send("d" if i == last else "m", self._sent, piece)

    def _on_sender_event(self, event: Event) -> None:
        if event.kind == "c":
            self._allowed = max(self._allowed, event.n)
        elif event.kind == "x":
            self.cancelled = event.data.decode(errors="replace") or "the stream was cancelled"
            raise StreamBroken("CANCELLED", self.cancelled)
        elif event.kind == "f":
            self._raise_final("the handler finished before the stream ended")
        else:
            raise StreamBroken("INTERNAL", f"the sending end of a stream got event {event.kind!r}")

    async def end(self) -> None:
        """Tell the receiver that every message was sent."""
        assert self._link is not None
        await self._link.send("e", self._sent)

    # ---- receiving ----

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self

    async def __anext__(self) -> bytes:
        message = await self.receive()
        if message is None:
            raise StopAsyncIteration
        return message

    async def receive(self) -> bytes | None:
        """The next message, or None once the sender has ended the stream."""
        if self.sending:
            raise RuntimeError("this end of the stream sends")
        if self.ended:
            return None
        # Everything received so far has been handed out: the credit follows what was consumed.
        await self._grant()
        parts: list[bytes] = []
        size = 0
        while True:
            event = await self._next()
            kind = event.kind
            if kind in ("d", "m"):
                if event.n != self._received + 1:
                    raise StreamBroken(
                        "UNAVAILABLE", f"the stream lost a message (piece {self._received + 1}, got {event.n})"
                    )
                if event.n > self._granted:
                    raise StreamBroken("INTERNAL", "the sender went past the credit it was given")
                self._received = event.n
                size += len(event.data)
                if size > self._max_message:
                    raise StreamBroken("INVALID_ARGUMENT", f"a message of the stream is over {self._max_message} bytes")
                parts.append(event.data)
                if kind == "d":
                    return parts[0] if len(parts) == 1 else b"".join(parts)
                # The pieces of one message are held until its last one (bounded by max_message),
                # so they earn credit as they come or a message longer than the window would stall.
                await self._grant()
            elif kind == "e":
                if event.n != self._received or parts:
                    raise StreamBroken("UNAVAILABLE", f"the stream ended after {event.n} pieces; {self._received} came")
                self.ended = True
                return None
            elif kind == "x":
                self.cancelled = event.data.decode(errors="replace") or "the stream was cancelled"
                raise StreamBroken("CANCELLED", self.cancelled)
            elif kind == "f":
                # A successful reply may overtake the last pieces (another subscription carries it);
                # they are on their way, so keep reading. An error ends the stream now.
                if self._final is not None and not self._final.cancelled() and self._final.exception() is None:
                    continue
                self._raise_final("the handler answered before the stream ended")
            else:
                raise StreamBroken("INTERNAL", f"the receiving end of a stream got event {kind!r}")

    async def _grant(self) -> None:
        if self._link is not None and self._granted - self._received <= self._window // 2:
            self._granted = self._received + self._window
            await self._link.send("c", self._granted)

    # ---- shared ----

    async def _next(self) -> Event:
        try:
            return await self._inbox.get(self._idle, self._link)
        except StreamBroken:
            self.broken = True
            raise

    def _raise_final(self, otherwise: str) -> None:
        task = self._final
        if task is not None and task.done() and not task.cancelled():
            exc = task.exception()
            if exc is not None:
                raise exc
        raise StreamBroken("INTERNAL", otherwise)


class Opened:
    """The caller's end of a stream and the request that opened it."""

    def __init__(self, stream: Stream, request: asyncio.Task[bytes], cleanup: Callable[[], Awaitable[None]]) -> None:
        self.stream = stream
        self._request = request
        self._cleanup = cleanup
        self._closed = False

    async def send(self, message: bytes) -> None:
        await self.stream.send(message)

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self.stream

    async def result(self) -> bytes:
        """End an upload (if it is one) and wait for the handler's reply."""
        if self.stream.sending:
            await self.stream.end()
        return await self._request

    async def wait_reply(self) -> bytes:
        """Wait for the handler's reply without ending the stream."""
        return await self._request

    async def cancel(self, reason: str) -> None:
        """Tell the handler the caller gave up; it stops at its next read or write."""
        link = self.stream._link
        if link is not None and not self._request.done():
            with contextlib.suppress(BusError, OSError):
                await link.send("x", 0, reason.encode()[:512])

    async def close(self, grace: float = 5.0) -> None:
        """Release the stream (idempotent). A request still running after a cancel gets ``grace``
        seconds to end on its own, so the handler stops at a read or write, in process or not,
        rather than wherever a cancellation would hit it; when the other end is gone, no wait."""
        if self._closed:
            return
        self._closed = True
        try:
            if not self._request.done():
                if self.stream._link is not None and not self.stream.broken:
                    await self.cancel("the caller closed the stream")
                    await asyncio.wait({self._request}, timeout=grace)
                self._request.cancel()
            with contextlib.suppress(BaseException):
                await self._request
        finally:
            await self._cleanup()


async def open_stream(
    bus: Bus,
    subject: str,
    body: bytes,
    *,
    direction: str,
    timeout: float,
    headers: dict[str, str],
    window: int = DEFAULT_WINDOW,
    idle: float = DEFAULT_IDLE,
    max_message: int = DEFAULT_MAX_MESSAGE,
) -> Opened:
    """Open a stream to the handler of ``subject``; ``body`` travels in the opening request.

    Returns once the handler's end is live (or raises the handler's error, e.g. UNAVAILABLE when
    no worker listens). ``close()`` the result in every case.
    """
    inbox = Inbox()
    sending = direction == UPLOAD
    stream = Stream(inbox, sending=sending, window=window, idle=idle, piece=_piece(bus), max_message=max_message)
    sub: Any = None
    token = uuid.uuid4().hex
    if bus.serves_locally(subject):
        pipe = LocalPipe(inbox)
        _pending[token] = pipe
        mode = "l"
    else:
        token = bus.nc.new_inbox()
        sub = await bus.nc.subscribe(f"{token}.>", cb=events_into(inbox, len(token) + 1))
        mode = "n"

    async def cleanup() -> None:
        _pending.pop(token, None)
        if sub is not None:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    if not sending:
        stream._granted = window  # the first credit travels in the opening request
    header = b" ".join((_MAGIC, mode.encode(), token.encode(), direction.encode(), str(window).encode()))
    payload = header + b"\n" + body
    request = asyncio.create_task(bus.call(subject, payload, timeout=timeout, headers=headers))
    request.add_done_callback(lambda _task: inbox.put(Event("f", 0)))
    stream._final = request
    opened = Opened(stream, request, cleanup)
    try:
        while True:
            try:
                event = await inbox.get(min(idle, OPEN_WAIT))
            except StreamBroken:
                # No peer to probe yet: the worker that took the request died before it answered,
                # or it is too busy to admit the stream.
                raise StreamBroken(
                    "UNAVAILABLE", f"no worker took the stream within {min(idle, OPEN_WAIT):g}s"
                ) from None
            if event.kind == "r":
                if mode == "l":
                    link = _pending[token].link if token in _pending else None
                    if link is None:
                        raise StreamBroken("INTERNAL", "the local handler took the stream without a link")
                    stream._link = link
                    _pending.pop(token, None)
                else:
                    peer = event.data.decode(errors="replace")
                    if not _INBOX.match(peer):
                        raise StreamBroken("INTERNAL", "the handler's end named no inbox to send to")
                    stream._link = NatsLink(bus, peer)
                if sending:
                    stream._allowed = event.n
                return opened
            if event.kind == "f":
                stream._raise_final("the handler answered before it took the stream")
            raise StreamBroken("INTERNAL", f"a stream being opened got event {event.kind!r}")
    except BaseException:
        await opened.close()
        raise


def _piece(bus: Bus) -> int:
    try:
        return max(1024, min(DEFAULT_PIECE, bus.max_payload - _ENVELOPE))
    except BusError:
        return DEFAULT_PIECE


class Accepted:
    """The handler's end of a stream, from the payload of the request that opened it."""

    def __init__(self, stream: Stream, body: bytes, cleanup: Callable[[], Awaitable[None]]) -> None:
        self.stream = stream
        self.body = body
        self._cleanup = cleanup

    async def finish(self) -> None:
        """After the handler returned: a download tells the caller it has every message."""
        if self.stream.sending:
            await self.stream.end()

    async def close(self) -> None:
        await self._cleanup()


async def accept_stream(bus: Bus, payload: bytes, *, idle: float = DEFAULT_IDLE) -> Accepted:
    """Take the stream that ``payload`` (an opening request) names."""
    header, _, body = payload.partition(b"\n")
    parts = header.split(b" ")
    if len(parts) != 5 or parts[0] != _MAGIC or parts[1] not in (b"l", b"n") or parts[3] not in (b"u", b"d"):
        raise StreamBroken("INVALID_ARGUMENT", "the request does not open a stream")
    mode, token, direction = parts[1].decode(), parts[2].decode(), parts[3].decode()
    try:
        window = int(parts[4])
    except ValueError:
        raise StreamBroken("INVALID_ARGUMENT", "the request opens a stream without a window") from None
    if not 1 <= window <= 1024:
        raise StreamBroken("INVALID_ARGUMENT", f"a stream's window is 1 to 1024 pieces; got {window}")
    inbox = Inbox()
    sending = direction == DOWNLOAD
    stream = Stream(
        inbox, sending=sending, window=window, idle=idle, piece=_piece(bus), max_message=DEFAULT_MAX_MESSAGE
    )
    credit = 0 if sending else window
    if not sending:
        stream._granted = window
    else:
        stream._allowed = window
    if mode == "l":
        pipe = _pending.get(token)
        if pipe is None:
            raise StreamBroken("UNAVAILABLE", "the caller of this stream is gone")
        pipe.link = LocalLink(inbox)
        stream._link = LocalLink(pipe.inbox)
        await stream._link.send("r", credit)

        async def nothing() -> None:
            return None

        return Accepted(stream, body, nothing)
    if not _INBOX.match(token):
        raise StreamBroken("INVALID_ARGUMENT", "the request names no reply inbox for its stream")
    # Not an inbox of this connection's own prefix: the caller sends here, and a secured bus lets
    # callers send only to stream inboxes, named so nobody else can guess them.
    mine = f"{subjects.STREAM_INBOXES}.{secrets.token_urlsafe(18)}"
    sub = await bus.nc.subscribe(f"{mine}.>", cb=events_into(inbox, len(mine) + 1))
    stream._link = NatsLink(bus, token)

    async def cleanup() -> None:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()

    try:
        await stream._link.send("r", credit, mine.encode())
    except BaseException:
        await cleanup()
        raise
    return Accepted(stream, body, cleanup)


def serve_streams(
    bus: Bus, handler: Handler, ops: Mapping[str, StreamOp], *, max_streams: int = 64, idle: float = DEFAULT_IDLE
) -> Handler:
    """A handler that serves ``ops`` as streams and every other op with ``handler``.

    A stream op gets the opening request's body, its end of the stream and the request context;
    what it returns is the reply. At most ``max_streams`` streams are served at once; beyond that a
    stream is refused with RESOURCE_EXHAUSTED, since each holds up to a window of pieces.
    """
    slots = asyncio.Semaphore(max_streams)

    async def serve(op: str, payload: bytes, ctx: RequestContext) -> bytes | Reply:
        fn = ops.get(op)
        if fn is None:
            return await handler(op, payload, ctx)
        if slots.locked():
            raise StreamBroken("RESOURCE_EXHAUSTED", f"this worker serves {max_streams} streams at once; try again")
        async with slots:
            accepted = await accept_stream(bus, payload, idle=idle)
            try:
                reply = await fn(accepted.body, accepted.stream, ctx)
                await accepted.finish()
                return reply
            finally:
                await accepted.close()

    return serve
