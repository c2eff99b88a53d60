"""The worker host: the one place where a process answers bus subjects with handlers.

Handler requests (``l8.<ns>.<api>.<component>.<op>.<caller>``, a queue group per api and
component), invocations of an app and events routed to an app are all routes of one host, so they
share one admission bound, one deadline rule, one error mapping and one way of leaving a queue
group, and local dispatch serves each of them exactly as the bus would.

nats-py runs a subscription's callback serially, so the callback only admits a message and starts
a task for it; a semaphore bounds the tasks in flight, and while it is full the callback waits,
which leaves further messages with the server-side pending buffer.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from nats.aio.msg import Msg

from bus import subjects
from bus.codec import Reply, RequestContext, context_from_headers, error_headers
from bus.connection import Bus
from bus.errors import BusTimeout, RemoteError
from bus.sync import server_has_seen

log = logging.getLogger("l8.bus.worker")

_INBOX = subjects.INBOX + "."

Handler = Callable[[str, bytes, RequestContext], Awaitable["bytes | Reply"]]


@dataclass(slots=True, eq=False)
class Route:
    """One subject (or wildcard) a handler answers.

    ``local`` is the key local dispatch finds the route by (a stem, or a whole subject); with
    ``caller_in_subject`` the last token of each subject is the caller's app id. ``gate`` bounds
    this route's requests in flight apart from the host's shared bound (an app's invocations).
    """

    subject: str
    queue: str
    handler: Handler
    name: str
    local: str | None = None
    caller_in_subject: bool = True
    gate: asyncio.Semaphore | None = None
    subscription: Any = None
    served_locally: Any = None  # the local dispatch handler this route put on the bus
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)


class WorkerHost:
    """Serves routes; ``start``/``stop`` are idempotent, routes may come and go while it runs."""

    def __init__(
        self,
        bus: Bus,
        namespace: str,
        *,
        concurrency: int = 256,
        default_timeout: float = 5.0,
        local_dispatch: bool = False,
    ) -> None:
        self._bus = bus
        self._local_dispatch = local_dispatch
        self._ns = namespace
        self._sem = asyncio.Semaphore(concurrency)
        self._default_timeout = default_timeout
        self._routes: list[Route] = []
        self._handlers: list[tuple[str, str]] = []
        self._started = False
        self._stopped = False

    @property
    def bus(self) -> Bus:
        return self._bus

    def add(self, api: str, component: str, handler: Handler) -> Route:
        """A handler of requests to one component; added before ``start()``. Its route is returned,
        so that the component can ``leave`` it again."""
        if self._started:
            raise RuntimeError("handlers are added before the worker host starts")
        group = subjects.queue_group(self._ns, api, component)
        route = Route(subjects.request_wildcard(self._ns, api, component), group, handler, f"{api}/{component}", group)
        self._routes.append(route)
        self._handlers.append((api, component))
        return route

    @property
    def routes(self) -> list[tuple[str, str]]:
        """The (api, component) pairs whose requests this host answers."""
        return list(self._handlers)

    async def start(self) -> None:
        if self._started:
            return
        self._started = True
        for route in self._routes:
            await self._subscribe(route)
        # A round trip to the server makes the subscriptions live before start() returns, so a
        # request sent from another connection right after cannot find nobody listening.
        await server_has_seen(self._bus.nc)
        log.debug("worker host serves %s", ", ".join(r.name for r in self._routes) or "nothing")

    async def serve(self, route: Route) -> Route:
        """Answer ``route`` from now on (its subscription is live when this returns)."""
        if self._stopped:
            raise RuntimeError("the worker host has stopped")
        if route not in self._routes:
            self._routes.append(route)
            if self._started:
                await self._subscribe(route)
                await server_has_seen(self._bus.nc)
        return route

    async def leave(self, route: Route, timeout: float = 10.0) -> None:
        """Stop answering ``route``; requests already routed here are answered within ``timeout``."""
        if route not in self._routes:
            return
        self._routes.remove(route)
        began = time.monotonic()
        await self._retire(route, timeout)
        await self._finish(route.tasks, max(0.1, timeout - (time.monotonic() - began)))

    async def stop(self, timeout: float = 10.0) -> None:
        """Stop taking requests, then let the ones in flight finish within ``timeout``."""
        if not self._started or self._stopped:
            self._stopped = True
            return
        self._stopped = True
        routes, self._routes = list(self._routes), []
        began = time.monotonic()
        await asyncio.gather(*(self._retire(route, timeout) for route in routes))
        tasks = set().union(*(route.tasks for route in routes)) if routes else set()
        await self._finish(tasks, max(0.1, timeout - (time.monotonic() - began)))

    async def _subscribe(self, route: Route) -> None:
        route.subscription = await self._bus.subscribe(route.subject, route.queue, self._admitter(route))
        if self._local_dispatch and route.local is not None:
            route.served_locally = functools.partial(self._local, route)
            self._bus.serve_locally(route.local, route.served_locally)

    async def _retire(self, route: Route, timeout: float) -> None:
        if route.local is not None:
            self._bus.stop_serving_locally(route.local, route.served_locally)
        subscription, route.subscription = route.subscription, None
        if subscription is None:
            return
        try:
            # Not a plain unsubscribe: a request the server routed here as we left would be
            # dropped and its caller would wait out the deadline (see Bus.retire).
            await self._bus.retire(subscription, timeout=timeout)
        except Exception as exc:  # the connection may already be gone
            log.debug("leaving %s failed: %s", route.name, exc)

    @staticmethod
    async def _finish(tasks: set[asyncio.Task[Any]], timeout: float) -> None:
        if not tasks:
            return
        _done, pending = await asyncio.wait(set(tasks), timeout=timeout)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)

    def _admitter(self, route: Route) -> Callable[[Msg], Awaitable[None]]:
        gate = route.gate or self._sem

        def finished(task: asyncio.Task[Any]) -> None:
            route.tasks.discard(task)
            gate.release()

        async def admit(msg: Msg) -> None:
            await gate.acquire()
            task = asyncio.create_task(self._serve(route, msg))
            route.tasks.add(task)
            task.add_done_callback(finished)

        return admit

    def _context(self, route: Route, subject: str, headers: dict[str, str] | None, timeout: float) -> RequestContext:
        caller = subjects.caller_of(subject) if route.caller_in_subject else ""
        return context_from_headers(headers, timeout, caller, subject)

    async def _run(self, route: Route, ctx: RequestContext, data: bytes) -> Reply:
        """Run a handler within the caller's deadline; failures become RemoteError, as on the wire."""
        remaining = ctx.deadline - time.monotonic()
        if remaining <= 0:
            raise _Expired()
        try:
            async with asyncio.timeout(remaining):
                result = await route.handler(subjects.op_of(ctx.subject), data, ctx)
        except TimeoutError:
            raise RemoteError("DEADLINE_EXCEEDED", "the handler did not finish before the deadline") from None
        except Exception as exc:
            code = getattr(exc, "code", None)
            if isinstance(code, str):
                raise RemoteError(code, str(exc), getattr(exc, "reason", "") or "") from None
            log.exception("handler for %s failed", ctx.subject)
            raise RemoteError("INTERNAL", f"{type(exc).__name__}: {exc}") from None
        reply = result if isinstance(result, Reply) else Reply(result)
        limit = self._bus.max_payload
        if len(reply.data) > limit:
            # Sending it would fail and leave the caller to its deadline; say why instead.
            raise RemoteError(
                "RESOURCE_EXHAUSTED", f"the reply is {len(reply.data)} bytes; the bus carries at most {limit}"
            )
        return reply

    async def _serve(self, route: Route, msg: Msg) -> None:
        ctx = self._context(route, msg.subject, msg.headers, self._default_timeout)
        try:
            reply = await self._run(route, ctx, msg.data)
        except _Expired:
            return  # the caller has already given up; answering would only add load
        except RemoteError as exc:
            await self._send(msg.reply, b"", error_headers(exc.code, exc.message, exc.reason), route)
            return
        await self._send(msg.reply, reply.data, reply.headers, route)

    async def _send(self, to: str, data: bytes, headers: dict[str, str] | None, route: Route) -> None:
        if not to.startswith(_INBOX):
            # A reply goes to the requester's inbox only: a request naming another subject as its
            # reply would make this process publish there under its own rights (a request as
            # another app, say), so it gets no answer.
            if to:
                log.debug("%s: no reply to %.64s, which is not an inbox", route.name, to)
            return
        try:
            await self._bus.nc.publish(to, data, headers=headers)
        except Exception as exc:
            log.warning("could not send the reply of %s: %s", route.name, exc)

    async def _local(
        self, route: Route, subject: str, data: bytes, headers: dict[str, str] | None, timeout: float
    ) -> Reply:
        """A request of this process, served without the round trip through the server, with the
        bus path's rules: the same bound (the deadline counts while waiting for a slot), deadline,
        error mapping and reply limit; and, as on the bus, a caller that gives up does not cancel
        the handler, which the host still drains on stop."""
        ctx = self._context(route, subject, headers, timeout)
        gate = route.gate or self._sem
        if gate.locked():
            try:
                async with asyncio.timeout(max(0.0, ctx.remaining())):
                    await gate.acquire()
            except TimeoutError:
                raise BusTimeout(subject, timeout) from None
        else:
            await gate.acquire()  # a free slot: taken at once, no timer needed
        task = asyncio.create_task(self._run_local(route, ctx, data))
        route.tasks.add(task)
        task.add_done_callback(functools.partial(_release, route, gate))
        return await asyncio.shield(task)

    async def _run_local(self, route: Route, ctx: RequestContext, data: bytes) -> Reply:
        try:
            return await self._run(route, ctx, data)
        except _Expired:
            raise BusTimeout(ctx.subject, 0.0) from None


class _Expired(Exception):
    pass


def _release(route: Route, gate: asyncio.Semaphore, task: asyncio.Task[Any]) -> None:
    route.tasks.discard(task)
    gate.release()
