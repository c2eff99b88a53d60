"""The sidecar's end of event routing: events the pub/sub workers route to this app arrive here and
go to the app (``OnTopicEvent`` / ``OnBulkTopicEvent`` through its app channel) or to one of its
open streaming subscriptions, and input bindings' events go to ``OnBindingEvent``, whose answer
``answers`` carries out (runtime/binding_events.py); the verdict goes back to the worker, which
settles with the broker or the binding.

Every sidecar of the app answers ``l8.<ns>.app.<app>.event.<pubsub>.<topic key>`` in one queue group,
so replicas share the events (binding events likewise on ``l8.<ns>.app.<app>.binding.<name>.<key>``);
a streaming subscription's events come on
``l8.<ns>.app.<app>.stream.<pubsub>.<topic key>``, answered only by the sidecars that hold a stream
for that topic. An app that cannot be reached, or a stream that closes before it answered, gives
the event back unanswered (the worker holds it and offers it again), never as a failed delivery.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

from bridges.errors import Code, InvalidArgument
from bus import Reply, RequestContext, Route, WorkerHost, subjects
from bus.worker import Handler
from handlers import bindings_input
from handlers.pubsub_delivery import Outcome
from handlers.pubsub_envelope import Event
from runtime import event_frames
from runtime.app_channel import DROP, SUCCESS, AppCallError, AppChannel, AppUnavailable, BindingAnswer, BulkEntry

log = logging.getLogger("l8.runtime.events")

# (binding, the app's answer, seconds left) -> the verdict on the event
Answers = Callable[[str, BindingAnswer, float], Awaitable[tuple[Outcome, str]]]


def _outcome_of_status(status: int) -> Outcome:
    if status == SUCCESS:
        return Outcome.SUCCESS
    if status == DROP:
        return Outcome.DROP
    return Outcome.RETRY  # RETRY and any status l8 does not know


def _one(verdict: tuple[Outcome, str]) -> tuple[list[Outcome], str]:
    return [verdict[0]], verdict[1]


def _outcome_of_error(exc: AppCallError) -> tuple[Outcome, str]:
    if isinstance(exc, AppUnavailable):
        return Outcome.UNREACHABLE, exc.message
    why = f"the app answered {exc.code.value}: {exc.message}".strip()
    if exc.code is Code.UNIMPLEMENTED:
        return Outcome.DROP, why
    return Outcome.RETRY, why


class StreamSession:
    """One streaming (pull) subscription: events out to the client, its ``processed`` answers in."""

    def __init__(self, pubsub: str, topic: str, max_in_flight: int) -> None:
        self.pubsub = pubsub
        self.topic = topic
        self.max_in_flight = max_in_flight
        self._outbox: asyncio.Queue[Event | None] = asyncio.Queue()
        self._pending: dict[str, list[asyncio.Future[int]]] = {}
        self._slots = asyncio.Semaphore(max_in_flight)
        self.closed = False

    async def deliver(self, event: Event, timeout: float) -> Outcome:
        """Hand ``event`` to the client and wait for its answer."""
        if self.closed:
            return Outcome.UNREACHABLE
        async with asyncio.timeout(timeout), self._slots:
            if self.closed:
                return Outcome.UNREACHABLE
            answered: asyncio.Future[int] = asyncio.get_running_loop().create_future()
            self._pending.setdefault(event.id, []).append(answered)
            self._outbox.put_nowait(event)
            try:
                status = await answered
            finally:
                waiting = self._pending.get(event.id)
                if waiting is not None and answered in waiting:
                    waiting.remove(answered)
                    if not waiting:
                        del self._pending[event.id]
        return Outcome.UNREACHABLE if status < 0 else _outcome_of_status(status)

    async def events(self) -> AsyncIterator[Event]:
        while True:
            event = await self._outbox.get()
            if event is None:
                return
            yield event

    def processed(self, event_id: str, status: int) -> None:
        waiting = self._pending.get(event_id)
        if not waiting:
            return  # unknown or already answered: a late or repeated answer changes nothing
        future = waiting.pop(0)
        if not waiting:
            del self._pending[event_id]
        if not future.done():
            future.set_result(status)

    def close(self) -> None:
        """End the stream: what the client has not answered goes back, unanswered."""
        if self.closed:
            return
        self.closed = True
        for waiting in self._pending.values():
            for future in waiting:
                if not future.done():
                    future.set_result(-1)
        self._pending.clear()
        self._outbox.put_nowait(None)


@dataclass(slots=True)
class _Streams:
    route: Route
    sessions: list[StreamSession] = field(default_factory=list)
    turn: int = 0

    def pick(self) -> StreamSession | None:
        open_ = [s for s in self.sessions if not s.closed]
        if not open_:
            return None
        self.turn = (self.turn + 1) % len(open_)
        return open_[self.turn]


class EventServer:
    """``start``/``stop`` are idempotent; streams come and go while it runs."""

    def __init__(
        self,
        host: WorkerHost,
        namespace: str,
        app_id: str,
        app: AppChannel | None,
        *,
        concurrency: int = 256,
        wrap: Callable[[Handler], Handler] | None = None,
        answers: Answers | None = None,
    ) -> None:
        # ``wrap`` puts the observer's span around each event's handling (runtime/observe.py).
        self._wrap: Callable[[Handler], Handler] = wrap or (lambda handler: handler)
        self._host = host
        self._ns = namespace
        self.app_id = app_id
        self._app = app
        self._concurrency = concurrency
        self._answers = answers
        self._push: Route | None = None
        self._bindings: Route | None = None
        self._streams: dict[tuple[str, str], _Streams] = {}
        self._lock = asyncio.Lock()
        self._stopped = False

    async def start(self) -> None:
        if self._push is not None or self._app is None or self._stopped:
            return
        stem = subjects.event_stem(self._ns, self.app_id, "event")
        self._push = await self._host.serve(
            Route(
                f"{stem}.*.*",
                stem,
                self._wrap(self._on_push),
                f"events of {self.app_id}",
                local=stem,
                caller_in_subject=False,
                gate=asyncio.Semaphore(self._concurrency),
            )
        )
        if self._answers is not None:
            stem = subjects.event_stem(self._ns, self.app_id, "binding")
            self._bindings = await self._host.serve(
                Route(
                    f"{stem}.*.*",
                    stem,
                    self._wrap(self._on_binding),
                    f"binding events of {self.app_id}",
                    local=stem,
                    caller_in_subject=False,
                    gate=asyncio.Semaphore(self._concurrency),
                )
            )

    async def stop(self, timeout: float = 10.0) -> None:
        self._stopped = True
        push, self._push = self._push, None
        if push is not None:
            await self._host.leave(push, timeout)
        bindings, self._bindings = self._bindings, None
        if bindings is not None:
            await self._host.leave(bindings, timeout)
        async with self._lock:
            streams, self._streams = list(self._streams.values()), {}
        for entry in streams:
            for session in entry.sessions:
                session.close()
            await self._host.leave(entry.route, timeout)

    # ---- push ----

    async def _on_push(self, op: str, payload: bytes, ctx: RequestContext) -> Reply:
        app = self._app
        assert app is not None
        frame = event_frames.read_request(payload, ctx)
        metadata: list[tuple[str, str | bytes]] = []
        timeout = max(0.001, ctx.remaining())
        if not frame.bulk:
            event = frame.events[0]
            if event.traceparent:
                metadata.append(("traceparent", event.traceparent))
            try:
                status = await app.on_event(event, frame.path, timeout=timeout, metadata=metadata)
            except AppCallError as exc:
                outcome, why = _outcome_of_error(exc)
                return Reply(*event_frames.answer([outcome], why))
            outcome = _outcome_of_status(status)
            why = "" if outcome is Outcome.SUCCESS else f"the app answered {'DROP' if status == DROP else 'RETRY'}"
            return Reply(*event_frames.answer([outcome], why))
        entries = [BulkEntry(str(i), event) for i, event in enumerate(frame.events)]
        try:
            statuses = await app.on_bulk_event(frame.pubsub, frame.topic, frame.path, entries, timeout=timeout)
        except AppCallError as exc:
            outcome, why = _outcome_of_error(exc)
            return Reply(*event_frames.answer([outcome] * len(entries), why))
        outcomes = [
            _outcome_of_status(statuses[e.entry_id]) if e.entry_id in statuses else Outcome.RETRY for e in entries
        ]
        missing = any(e.entry_id not in statuses for e in entries)
        why = "the app gave no status for some entries" if missing else "the app did not take every entry"
        return Reply(*event_frames.answer(outcomes, why))

    # ---- input bindings ----

    async def _on_binding(self, op: str, payload: bytes, ctx: RequestContext) -> Reply:
        app, answers = self._app, self._answers
        assert app is not None and answers is not None
        # One event, never bulk: the payload is the binding's frame as the worker fetched it.
        name, data, metadata = bindings_input.read(payload)
        try:
            answer = await app.on_binding_event(name, data, metadata, timeout=max(0.001, ctx.remaining()))
        except AppCallError as exc:
            return Reply(*event_frames.answer(*_one(_outcome_of_error(exc))))
        return Reply(*event_frames.answer(*_one(await answers(name, answer, max(0.001, ctx.remaining())))))

    # ---- streams ----

    async def open_stream(self, pubsub: str, topic: str, max_in_flight: int) -> StreamSession:
        session = StreamSession(pubsub, topic, max_in_flight)
        async with self._lock:
            if self._stopped:
                raise InvalidArgument("l8 is shutting down")
            entry = self._streams.get((pubsub, topic))
            if entry is None:
                subject = subjects.event_subject(self._ns, self.app_id, pubsub, topic, "stream")
                route = Route(
                    subject,
                    subject,
                    self._wrap(self._on_stream),
                    f"stream {pubsub}/{topic} of {self.app_id}",
                    local=subject,
                    caller_in_subject=False,
                )
                entry = self._streams[(pubsub, topic)] = _Streams(route)
                entry.sessions.append(session)
                await self._host.serve(route)
            else:
                entry.sessions.append(session)
        return session

    async def close_stream(self, session: StreamSession) -> None:
        session.close()
        async with self._lock:
            entry = self._streams.get((session.pubsub, session.topic))
            if entry is None or session not in entry.sessions:
                return
            entry.sessions.remove(session)
            if entry.sessions:
                return
            del self._streams[(session.pubsub, session.topic)]
        with contextlib.suppress(Exception):
            await self._host.leave(entry.route)

    async def _on_stream(self, op: str, payload: bytes, ctx: RequestContext) -> Reply:
        frame = event_frames.read_request(payload, ctx)
        entry = self._streams.get((frame.pubsub, frame.topic))
        session = entry.pick() if entry is not None else None
        if session is None or frame.bulk:
            return Reply(*event_frames.answer([Outcome.UNREACHABLE] * len(frame.events), "no stream is open"))
        try:
            outcome = await session.deliver(frame.events[0], max(0.001, ctx.remaining()))
        except TimeoutError:
            return Reply(*event_frames.answer([Outcome.RETRY], "the subscriber did not answer in time"))
        why = {Outcome.DROP: "the subscriber dropped it", Outcome.RETRY: "the subscriber asked to retry"}.get(
            outcome, "the stream ended before it answered"
        )
        return Reply(*event_frames.answer([outcome], why))
