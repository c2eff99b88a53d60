"""The worker host: answers request subjects with handlers, a queue group per api and component.

nats-py runs a subscription's callback serially, so the callback only admits a message and starts
a task for it; a semaphore bounds the tasks in flight across all subscriptions, and while it is
full the callback waits, which leaves further messages with the server-side pending buffer.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from nats.aio.msg import Msg

from bus import subjects
from bus.codec import RequestContext, context_from_headers, error_headers
from bus.connection import Bus

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

    def __init__(self, bus: Bus, namespace: str, *, concurrency: int = 256, default_timeout: float = 5.0) -> None:
        self._bus = bus
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
        log.debug("worker host serves %s", ", ".join(f"{a}/{c}" for a, c in self.routes) or "nothing")

    async def stop(self, timeout: float = 10.0) -> None:
        """Stop taking requests, then let the ones in flight finish within ``timeout``."""
        if not self._started or self._stopped:
            self._stopped = True
            return
        self._stopped = True
        for route in self._routes:
            if route.subscription is not None:
                try:
                    await route.subscription.unsubscribe()
                except Exception as exc:  # the connection may already be gone
                    log.debug("unsubscribe failed: %s", exc)
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

    async def _serve(self, handler: Handler, msg: Msg) -> None:
        ctx = context_from_headers(msg.headers, self._default_timeout)
        remaining = ctx.deadline - time.monotonic()
        try:
            if remaining <= 0:
                raise _Expired()
            async with asyncio.timeout(remaining):
                reply = await handler(subjects.op_of(msg.subject), msg.data, ctx)
        except _Expired:
            return  # the caller has already given up; answering would only add load
        except TimeoutError:
            await self._reply_error(msg, "DEADLINE_EXCEEDED", "the handler did not finish before the deadline")
            return
        except Exception as exc:
            code = getattr(exc, "code", None)
            if isinstance(code, str):
                await self._reply_error(msg, code, str(exc))
            else:
                log.exception("handler for %s failed", msg.subject)
                await self._reply_error(msg, "INTERNAL", f"{type(exc).__name__}: {exc}")
            return
        if msg.reply:
            try:
                await self._bus.nc.publish(msg.reply, reply)
            except Exception as exc:
                log.warning("could not send the reply to %s: %s", msg.subject, exc)

    async def _reply_error(self, msg: Msg, code: str, message: str) -> None:
        if not msg.reply:
            return
        try:
            await self._bus.nc.publish(msg.reply, b"", headers=error_headers(code, message))
        except Exception as exc:
            log.warning("could not send the error reply to %s: %s", msg.subject, exc)


class _Expired(Exception):
    pass
