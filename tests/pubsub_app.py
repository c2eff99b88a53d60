"""An asyncio AppCallback server for the pub/sub tests: records what l8 delivers, answers as told."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
from dapr.proto.runtime.v1 import appcallback_pb2 as ac
from dapr.proto.runtime.v1 import appcallback_pb2_grpc as ac_grpc

from tests.servers import free_port

SUCCESS = ac.TopicEventResponse.SUCCESS
RETRY = ac.TopicEventResponse.RETRY
DROP = ac.TopicEventResponse.DROP


@dataclass
class Delivery:
    topic: str
    path: str
    id: str
    data: bytes
    event: Any
    status: int
    bulk_size: int = 0
    metadata: dict[str, str] = field(default_factory=dict)


Decide = Callable[[Any, int], int]  # (event, how many deliveries this app saw so far) -> status


class RecordingApp(ac_grpc.AppCallbackServicer, ac_grpc.AppCallbackAlphaServicer):
    def __init__(self, subscriptions: list[Any] | None = None, decide: Decide | None = None) -> None:
        self.subscriptions = subscriptions or []
        self.decide: Decide = decide or (lambda _event, _n: SUCCESS)
        self.deliveries: list[Delivery] = []
        self.bulk_sizes: list[int] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.delay = 0.0
        self.changed = asyncio.Condition()

    async def ListTopicSubscriptions(self, request: Any, context: Any) -> Any:
        return ac.ListTopicSubscriptionsResponse(subscriptions=self.subscriptions)

    async def _record(self, d: Delivery) -> None:
        async with self.changed:
            self.deliveries.append(d)
            self.changed.notify_all()

    async def OnTopicEvent(self, request: Any, context: Any) -> Any:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.delay:
                await asyncio.sleep(self.delay)
            status = self.decide(request, len(self.deliveries))
            await self._record(
                Delivery(
                    request.topic,
                    request.path,
                    request.id,
                    request.data,
                    request,
                    status,
                    metadata=dict(context.invocation_metadata() or ()),
                )
            )
            return ac.TopicEventResponse(status=status)
        finally:
            self.in_flight -= 1

    async def OnBulkTopicEvent(self, request: Any, context: Any) -> Any:
        self.bulk_sizes.append(len(request.entries))
        resp = ac.TopicEventBulkResponse()
        for entry in request.entries:
            ce = entry.cloud_event
            status = self.decide(ce, len(self.deliveries))
            await self._record(
                Delivery(request.topic, request.path, ce.id, ce.data, ce, status, bulk_size=len(request.entries))
            )
            resp.statuses.add(entry_id=entry.entry_id, status=status)
        return resp

    async def wait_for(self, cond: Callable[[list[Delivery]], bool], timeout: float = 60.0) -> list[Delivery]:
        deadline = time.monotonic() + timeout
        async with self.changed:
            while not cond(self.deliveries):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"not delivered in {timeout}s; got {len(self.deliveries)}: {self.summary()}")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.changed.wait(), left)
        return list(self.deliveries)

    def summary(self) -> list[tuple[str, str, bytes, int]]:
        return [(d.topic, d.path, d.data, d.status) for d in self.deliveries[-20:]]

    def of(self, topic: str, status: int | None = SUCCESS) -> list[Delivery]:
        return [d for d in self.deliveries if d.topic == topic and (status is None or d.status == status)]


class AppServer:
    def __init__(self, app: RecordingApp, port: int | None = None) -> None:
        self.app = app
        self.port = port or free_port()
        self._server: grpc.aio.Server | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> AppServer:
        server = grpc.aio.server()
        ac_grpc.add_AppCallbackServicer_to_server(self.app, server)
        ac_grpc.add_AppCallbackAlphaServicer_to_server(self.app, server)
        server.add_insecure_port(self.address)
        await server.start()
        self._server = server
        return self

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            await server.stop(0)


def subscription(pubsub: str, topic: str, **kw: Any) -> Any:
    return ac.TopicSubscription(pubsub_name=pubsub, topic=topic, **kw)
