"""The worker host: answers request subjects with handlers, a queue group per api and component.

nats-py runs a subscription's callback serially, so the callback only admits a message and starts
a task for it; a semaphore bounds the tasks in flight across all subscriptions, and while it is
full the callback waits, which leaves further messages with the server-side pending buffer.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from nats.aio.msg import Msg

from bus import subjects
from bus.codec import RequestContext, context_from_headers, error_headers
from bus.connection import Bus
from bus.errors import RemoteError

log = logging.getLogger("l8.bus.worker")

Handler = Callable[[str, bytes, RequestContext], Awaitable[bytes]]


class CodedError(Protocol):
    """What the host needs of an error to send it back: a status code name and a message."""

    code: str


@dataclass(slots=True)
class _Route:
    api: str
    component: str
    handler: Handler
    subscription: Any = None


class WorkerHost:
    """Serves ``l8.<ns>.<api>.<component>.<op>`` for the handlers added before ``start()``."""

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
        self._routes: list[_Route] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._started = False
        self._stopped = False

    def add(self, api: str, component: str, handler: Handler) -> None:
        if self._started:
            raise RuntimeError("handlers are added before the worker host starts")
        self._routes.append(_Route(api, component, handler))

    @property
    def routes(self) -> list[tuple[str, str]]:
        return [(r.api, r.component) for r in self._routes]

    async def start(self) -> None:
        if self._started:
            return
        self._started = True
        for route in self._routes:
            route.subscription = await self._bus.subscribe(
                subjects.request_wildcard(self._ns, route.api, route.component),
                subjects.queue_group(self._ns, route.api, route.component),
                self._admitter(route.handler),
            )
            if self._local_dispatch:
                self._bus.serve_locally(
                    subjects.queue_group(self._ns, route.api, route.component),
                    functools.partial(self.call_local, route.handler),
                )
        # A round trip to the server makes the subscriptions live before start() returns, so a
        # request sent from another connection right after cannot find nobody listening.
        await self._bus.nc.flush()
        log.debug("worker host serves %s", ", ".join(f"{a}/{c}" for a, c in self.routes) or "nothing")

    async def stop(self, timeout: float = 10.0) -> None:
        """Stop taking requests, then let the ones in flight finish within ``timeout``."""
        if not self._started or self._stopped:
            self._stopped = True
            return
        self._stopped = True

        async def leave(route: _Route) -> None:
            self._bus.stop_serving_locally(subjects.queue_group(self._ns, route.api, route.component))
            if route.subscription is not None:
                try:
                    # Not a plain unsubscribe: a request the server routed here as we left would be
                    # dropped and its caller would wait out the deadline (see Bus.retire).
                    await self._bus.retire(route.subscription)
                except Exception as exc:  # the connection may already be gone
                    log.debug("leaving %s/%s failed: %s", route.api, route.component, exc)

        await asyncio.gather(*(leave(route) for route in self._routes))
        if self._tasks:
            _done, pending = await asyncio.wait(set(self._tasks), timeout=timeout)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)

    def _admitter(self, handler: Handler) -> Callable[[Msg], Awaitable[None]]:
        async def admit(msg: Msg) -> None:
            await self._sem.acquire()
            task = asyncio.create_task(self._serve(handler, msg))
            self._tasks.add(task)
            task.add_done_callback(self._finished)

        return admit

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._sem.release()

    async def _run(self, handler: Handler, subject: str, data: bytes, ctx: RequestContext) -> bytes:
        """Run a handler within the caller's deadline; failures become RemoteError, as on the wire."""
        remaining = ctx.deadline - time.monotonic()
        if remaining <= 0:
            raise _Expired()
        try:
            async with asyncio.timeout(remaining):
                return await handler(subjects.op_of(subject), data, ctx)
        except TimeoutError:
            raise RemoteError("DEADLINE_EXCEEDED", "the handler did not finish before the deadline") from None
        except Exception as exc:
            code = getattr(exc, "code", None)
            if isinstance(code, str):
                raise RemoteError(code, str(exc)) from None
            log.exception("handler for %s failed", subject)
            raise RemoteError("INTERNAL", f"{type(exc).__name__}: {exc}") from None

    async def _serve(self, handler: Handler, msg: Msg) -> None:
        ctx = context_from_headers(msg.headers, self._default_timeout)
        try:
            reply = await self._run(handler, msg.subject, msg.data, ctx)
        except _Expired:
            return  # the caller has already given up; answering would only add load
        except RemoteError as exc:
            await self._reply_error(msg, exc.code, exc.message)
            return
        if not msg.reply:
            return
        limit = self._bus.nc.max_payload
        if len(reply) > limit:
            # Publishing it would fail and leave the caller to its deadline; say why instead.
            await self._reply_error(
                msg, "RESOURCE_EXHAUSTED", f"the reply is {len(reply)} bytes; the bus carries at most {limit}"
            )
            return
        try:
            await self._bus.nc.publish(msg.reply, reply)
        except Exception as exc:
            log.warning("could not send the reply to %s: %s", msg.subject, exc)

    async def call_local(self, handler: Handler, subject: str, data: bytes, ctx: RequestContext) -> bytes:
        """Serve a request of this process without the round trip through the server.

        Same admission bound, deadline and error mapping as a request that came over the bus.
        """
        async with self._sem:
            try:
                return await self._run(handler, subject, data, ctx)
            except _Expired:
                raise RemoteError("DEADLINE_EXCEEDED", "the deadline passed before the handler started") from None

    async def _reply_error(self, msg: Msg, code: str, message: str) -> None:
        if not msg.reply:
            return
        try:
            await self._bus.nc.publish(msg.reply, b"", headers=error_headers(code, message))
        except Exception as exc:
            log.warning("could not send the error reply to %s: %s", msg.subject, exc)


class _Expired(Exception):
    pass
