"""An asyncio AppCallback server for the input binding tests: declares bindings, records the events
l8 delivers (OnBindingEvent) and answers as told: a BindingEventResponse, or an error."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
from dapr.proto.runtime.v1 import appcallback_pb2 as ac
from dapr.proto.runtime.v1 import appcallback_pb2_grpc as ac_grpc

from tests.servers import free_port


@dataclass
class Seen:
    name: str
    data: bytes
    metadata: dict[str, str]
    failed: bool


class Refuse(Exception):
    """Raised by an answer function: the app answers the event with an error."""


# (event, how many events with the same data the app saw before) -> the answer, or raise Refuse
Answer = Callable[[Any, int], Any]


class BindingApp(ac_grpc.AppCallbackServicer):
    def __init__(self, bindings: list[str], answer: Answer | None = None) -> None:
        self.bindings = bindings
        self.answer: Answer = answer or (lambda _req, _n: ac.BindingEventResponse())
        self.seen: list[Seen] = []
        self.delay = 0.0
        self.changed = asyncio.Condition()

    async def ListTopicSubscriptions(self, request: Any, context: Any) -> Any:
        return ac.ListTopicSubscriptionsResponse()

    async def ListInputBindings(self, request: Any, context: Any) -> Any:
        return ac.ListInputBindingsResponse(bindings=self.bindings)

    async def OnBindingEvent(self, request: Any, context: Any) -> Any:
        if self.delay:
            await asyncio.sleep(self.delay)
        before = sum(1 for s in self.seen if s.data == request.data and s.name == request.name)
        try:
            reply = self.answer(request, before)
        except Refuse as exc:
            await self._record(Seen(request.name, request.data, dict(request.metadata), True))
            await context.abort(grpc.StatusCode.INTERNAL, str(exc) or "refused")
        await self._record(Seen(request.name, request.data, dict(request.metadata), False))
        return reply

    async def _record(self, seen: Seen) -> None:
        async with self.changed:
            self.seen.append(seen)
            self.changed.notify_all()

    def ok(self, name: str | None = None) -> list[Seen]:
        return [s for s in self.seen if not s.failed and (name is None or s.name == name)]

    async def wait_for(self, cond: Callable[[BindingApp], bool], what: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        async with self.changed:
            while not cond(self):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"{what}: not within {timeout}s; saw {self.summary()}")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.changed.wait(), min(left, 0.5))

    def summary(self) -> list[tuple[str, bytes, bool]]:
        return [(s.name, s.data[:32], s.failed) for s in self.seen[-20:]]


class BindingAppServer:
    def __init__(self, app: BindingApp, port: int | None = None) -> None:
        self.app = app
        self.port = port or free_port()
        self._server: grpc.aio.Server | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> BindingAppServer:
        server = grpc.aio.server()
        ac_grpc.add_AppCallbackServicer_to_server(self.app, server)
        server.add_insecure_port(self.address)
        await server.start()
        self._server = server
        return self

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            await server.stop(0)
